"""The feature store: schema, round trips, crash safety, locking, mixing refusal, shards and loaders."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from vidfeat.features import (
    ProvenanceMismatch,
    SequenceSource,
    StoreError,
    StoreLocked,
    StoreWriter,
    VideoRecord,
    load_xy,
    merge_stores,
    open_store,
    verify_store,
    write_store,
)

HMDB_KEYS = [
    "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0",
    "cartwheel/(Rad)Schlag_die_Bonusfolge_cartwheel_f_cm_np1_le_med_0",
    "fall_floor/#20_Rhythm_clay_fall_floor_f_cm_np1_fr_med_1",
    "kick_ball/AMADEUS_kick_ball_f_cm_np1_ba_bad_0",
    "wave/Hey_Baby!_Ich_bin_&_Ich_wink',_dir_zu_wave_u_cm_np1_fr_med_0",
    "talk/Ü ber alles, déjà vu_talk_h_nm_np1_fr_goo_0",
]
PROVENANCE = {
    "backbone": "efficientnet_lite0", "weights": "sha256:abc", "feature_dim": 6, "kind": "frame",
    "preprocessing": {"resize": 256, "crop": 224}, "sampling": {"mode": "fps", "fps": 5.0},
    "dataset": "hmdb51", "classes": ["a", "b"], "n_folds": 3,
}


def record(key: str, n: int, seed: int, label: str = "a", splits=("train", "test", None)) -> VideoRecord:
    rng = np.random.default_rng(seed)
    return VideoRecord(
        key=key, features=rng.normal(size=(n, 6)).astype(np.float32), timestamps=np.arange(n) / 5.0,
        frame_indices=np.arange(n) * 6, label=label, splits=tuple(splits), source=f"/data/{key}.avi",
        source_size=1000 + n, source_mtime=1.5e9, decoded_frames=n * 6, expected_frames=n * 6,
    )


def test_round_trip_keeps_awkward_keys_values_and_provenance(tmp_path):
    path = tmp_path / "s.h5"
    records = [record(k, 3 + i, i, "ab"[i % 2]) for i, k in enumerate(HMDB_KEYS)]
    write_store(path, records, PROVENANCE)
    with open_store(path) as s:
        assert s.keys() == sorted(HMDB_KEYS)
        for r in records:
            np.testing.assert_array_equal(s.features(r.key), r.features.astype(np.float16))
            assert s.features(r.key).dtype == np.float16
            np.testing.assert_array_equal(s.timestamps(r.key), r.timestamps)
            np.testing.assert_array_equal(s.frame_indices(r.key), r.frame_indices)
            assert s.label(r.key) == r.label
            assert [s.split(r.key, f) for f in (1, 2, 3)] == ["train", "test", None]
        assert s.attrs["backbone"] == "efficientnet_lite0"
        assert s.attrs["preprocessing"] == {"resize": 256, "crop": 224}
        assert s.attrs["sampling"] == {"mode": "fps", "fps": 5.0}
        assert s.attrs["schema_version"] == 1 and s.attrs["vidfeat_version"]
        assert s.failures() == []
        with pytest.raises(ValueError, match="fold must be in 1..3"):
            s.split(HMDB_KEYS[0], 4)
        with pytest.raises(KeyError, match="not in this store"):
            s.features("missing")


def test_schema_is_readable_with_plain_h5py(tmp_path):
    """The README documents this layout; a user without vidfeat must be able to follow it."""
    path = tmp_path / "s.h5"
    records = [record("x/one", 3, 1, "b"), record("y/two", 4, 2, "a")]
    write_store(path, records, PROVENANCE, failures=[("bad", "/data/bad.avi", "file is empty (0 bytes)")])
    with h5py.File(path, "r") as f:
        assert f.attrs["schema_version"] == 1
        classes = json.loads(f.attrs["classes"])
        keys = [k.decode() for k in f["videos/key"][:]]
        i = keys.index("y/two")
        start, length = f["videos/start"][i], f["videos/length"][i]
        np.testing.assert_array_equal(f["features"][start:start + length], records[1].features.astype(np.float16))
        assert f["timestamps"][start + 1] == pytest.approx(0.2)
        assert classes[f["videos/label"][i]] == "a"
        assert f["videos/split"][i].tolist() == [1, 3, 0]
        assert f["videos/source"][i].decode() == "/data/y/two.avi"
        assert f["failures/error"][0].decode() == "file is empty (0 bytes)"
        assert f["features"].chunks is None  # contiguous: one slice read per video


def test_writer_commits_parts_that_readers_see_and_close_merges(tmp_path):
    path = tmp_path / "s.h5"
    writer = StoreWriter(path, PROVENANCE)
    writer.add(record("a", 3, 1))
    writer.commit()
    writer.add_failure("broken", "/data/broken.avi", "corrupt data")
    writer.commit()
    assert not path.exists()
    with open_store(path) as s:  # an interrupted run's committed work is already visible
        assert s.keys() == ["a"] and s.failures() == [("/data/broken.avi", "corrupt data")]
    writer.close()
    assert path.exists() and not (tmp_path / "s.h5.parts").exists()
    writer = StoreWriter(path, PROVENANCE)
    assert writer.done == {"a"} and writer.stored.failures == {"broken": "corrupt data"}
    writer.add(record("broken", 2, 5))  # a retried failure succeeds: the failure entry disappears
    writer.close()
    with open_store(path) as s:
        assert s.keys() == ["a", "broken"] and s.failures() == []


def test_commits_follow_the_clock(tmp_path):
    parts = tmp_path / "s.h5.parts"
    writer = StoreWriter(tmp_path / "s.h5", PROVENANCE, commit_every=3600)
    writer.add(record("a", 3, 1))
    writer.commit_if_due()  # an hour has not passed: the video waits in memory
    assert not list(parts.glob("part-*.h5")) and writer.commits == 0
    writer.commit()  # a forced commit always writes
    writer.add(record("b", 2, 2))
    writer.commit_if_due()
    assert len(list(parts.glob("part-*.h5"))) == 1 and writer.commits == 1
    writer.close()  # closing commits what waits, then merges
    assert writer.commits == 2
    with open_store(tmp_path / "s.h5") as s:
        assert s.keys() == ["a", "b"]
    eager = StoreWriter(tmp_path / "e.h5", PROVENANCE, commit_every=0)
    eager.add(record("a", 3, 1))
    eager.commit_if_due()
    assert len(list((tmp_path / "e.h5.parts").glob("part-*.h5"))) == 1
    eager.close()
    with pytest.raises(ValueError, match="commit_every is a number of seconds >= 0"):
        StoreWriter(tmp_path / "x.h5", PROVENANCE, commit_every=-1)


def _hold_lock(path, ready, release):
    writer = StoreWriter(path, PROVENANCE)
    ready.set()
    release.wait(10)
    writer.close()


def test_second_writer_is_refused_with_the_holder(tmp_path):
    path = tmp_path / "s.h5"
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(path, ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreLocked, match=rf"being written by pid {holder.pid}.*choose another --out"):
            StoreWriter(path, PROVENANCE)
    finally:
        release.set()
        holder.join(10)
    StoreWriter(path, PROVENANCE).close()  # the lock is free again


@pytest.mark.parametrize("field,value", [
    ("backbone", "resnet50"), ("weights", "none"), ("preprocessing", {"resize": 232, "crop": 224}),
    ("sampling", {"mode": "all"}), ("dtype", "float32"), ("classes", ["a", "c"]),
])
def test_mixing_configurations_is_refused(tmp_path, field, value):
    path = tmp_path / "s.h5"
    write_store(path, [record("a", 3, 1)], PROVENANCE)
    with pytest.raises(ProvenanceMismatch, match=rf"refusing to mix them:\n  {field}:"):
        StoreWriter(path, {**PROVENANCE, field: value})
    other = tmp_path / "other.h5"
    write_store(other, [record("b", 3, 1)], {**PROVENANCE, field: value})
    with pytest.raises(ProvenanceMismatch, match=field):
        open_store([path, other])


def test_kill_during_commit_leaves_previous_parts_intact(tmp_path):
    """SIGKILL in the middle of writing parts: everything committed before survives, the torn temp is ignored."""
    path = tmp_path / "s.h5"
    script = textwrap.dedent(f"""
        import numpy as np, os, signal
        from vidfeat.features import StoreWriter, VideoRecord
        w = StoreWriter({str(path)!r}, {PROVENANCE!r})
        for i in range(1000):
            w.add(VideoRecord(key=f"v{{i:04d}}", features=np.full((50, 6), i, np.float32),
                              timestamps=np.arange(50.0), frame_indices=np.arange(50), label="a",
                              splits=("train", None, None)))
            w.commit()
            if i == 5:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open_store(path) as s:
        keys = s.keys()
        assert len(keys) >= 6 and keys == [f"v{i:04d}" for i in range(len(keys))]
        for key in keys:
            assert (s.features(key) == int(key[1:])).all()
    writer = StoreWriter(path, PROVENANCE)  # a rerun cleans torn temp files and finishes the merge
    assert writer.done == set(keys)
    writer.close()
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "s.h5.parts").exists()
    with open_store(path) as s:
        assert s.keys() == keys


def test_shards_read_as_one_store_and_merge(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_store(a, [record("x", 3, 1)], PROVENANCE, failures=[("z", "/z.avi", "no video stream")])
    write_store(b, [record("y", 4, 2, "b")], PROVENANCE)
    with open_store([a, b]) as s:
        assert s.keys() == ["x", "y"] and s.label("y") == "b" and s.failures() == [("/z.avi", "no video stream")]
    assert merge_stores([a, b], tmp_path / "m.h5") == 2
    with open_store(tmp_path / "m.h5") as s:
        np.testing.assert_array_equal(s.features("y"), record("y", 4, 2).features.astype(np.float16))
    write_store(tmp_path / "c.h5", [record("x", 2, 3)], PROVENANCE)
    with pytest.raises(StoreError, match="'x' is in both"):
        open_store([a, tmp_path / "c.h5"])


def test_open_errors_are_clear(tmp_path):
    with pytest.raises(StoreError, match="no feature store at .*vidfeat extract"):
        open_store(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(StoreError, match="cannot open feature store"):
        open_store(tmp_path / "junk.h5")
    with pytest.raises(StoreError, match="already exists"):
        write_store(tmp_path / "junk.h5", [], PROVENANCE)
    with pytest.raises(StoreError, match="label 'zzz' is not in the store's class list"):
        write_store(tmp_path / "bad.h5", [record("k", 2, 1, label="zzz")], PROVENANCE)


def test_stale_source_is_detected(tmp_path):
    video = tmp_path / "v.avi"
    video.write_bytes(b"x" * 10)
    stat = video.stat()
    r = record("v", 3, 1)
    r.source, r.source_size, r.source_mtime = str(video), stat.st_size, stat.st_mtime
    write_store(tmp_path / "s.h5", [r], PROVENANCE)
    with StoreWriter(tmp_path / "s.h5", PROVENANCE) as writer:
        assert not writer.stored.is_stale("v", video)
        video.write_bytes(b"y" * 20)
        assert writer.stored.is_stale("v", video)


def test_loaders_pool_for_sklearn_and_give_whole_sequences_to_torch(tmp_path):
    path = tmp_path / "s.h5"
    records = [record(f"k{i}", 2 + i, i, "ab"[i % 2], ("train" if i < 3 else "test", None, None)) for i in range(5)]
    write_store(path, records, PROVENANCE)
    x, y, keys = load_xy(path, split="train", pooling="meanstd")
    assert x.shape == (3, 12) and y.tolist() == [0, 1, 0] and keys == ["k0", "k1", "k2"]
    np.testing.assert_allclose(x[1, :6], records[1].features.astype(np.float16).astype(np.float32).mean(0), rtol=1e-6)
    keys = [r.key for r in records]
    for in_memory in (True, False):
        source = SequenceSource.from_store(path, keys, in_memory=in_memory)
        assert source.in_memory == in_memory
        loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=0 if in_memory else 1)
        for r, item in zip(records, loader):
            assert item.dtype == torch.float32 and item.shape == (len(r.features), 6)  # never truncated
            assert torch.equal(item, torch.from_numpy(r.features.astype(np.float16).astype(np.float32)))


def test_region_features_round_trip_with_masks(tmp_path):
    provenance = {**PROVENANCE, "rois": {"source": "grid:2x2", "max_rois": 5, "feature_dim": 6}}
    rng = np.random.default_rng(0)
    r = record("v", 3, 1)
    r.roi_features = rng.normal(size=(3, 5, 6)).astype(np.float32)
    r.boxes = rng.uniform(size=(3, 5, 4)).astype(np.float32)
    r.roi_mask = np.array([[1, 1, 1, 0, 0]] * 3, dtype=bool)
    write_store(tmp_path / "r.h5", [r], provenance)
    with open_store(tmp_path / "r.h5") as s:
        feats, boxes, mask = s.rois("v")
        np.testing.assert_array_equal(feats, r.roi_features.astype(np.float16))
        np.testing.assert_array_equal(boxes, r.boxes)
        assert mask.tolist() == r.roi_mask.tolist()
        assert s.attrs["rois"]["source"] == "grid:2x2"
    with pytest.raises(StoreError, match="roi_features of shape None"):
        write_store(tmp_path / "missing.h5", [record("w", 3, 1)], provenance)
    write_store(tmp_path / "plain.h5", [record("w", 3, 1)], PROVENANCE)
    with open_store(tmp_path / "plain.h5") as s:
        assert s.rois("w") is None


def test_verify_passes_a_sound_store_and_names_each_kind_of_damage(tmp_path):
    def fresh(name: str):
        path = tmp_path / name
        write_store(path, [record(k, 3 + i, i) for i, k in enumerate(HMDB_KEYS)], PROVENANCE)
        return path

    sound = verify_store(fresh("sound.h5"))
    assert sound.ok and (sound.files, sound.videos, sound.rows) == (1, 6, sum(range(3, 9)))

    nan = fresh("nan.h5")
    with h5py.File(nan, "r+") as f:
        f["features"][1] = np.nan  # inside the first video in key order (3 rows)
    found = verify_store(nan)
    assert not found.ok and "1 row(s) of features are NaN or infinite, in brush_hair/April_09" in found.problems[0]

    overlap = fresh("overlap.h5")
    with h5py.File(overlap, "r+") as f:
        f["videos"]["start"][1] = 1
    assert any("two videos' rows overlap" in p for p in verify_store(overlap).problems)

    outside = fresh("outside.h5")
    with h5py.File(outside, "r+") as f:
        f["videos"]["length"][5] = 99
    assert any("outside the datasets" in p for p in verify_store(outside).problems)

    torn = fresh("torn.h5")
    parts = torn.with_name(torn.name + ".parts")
    parts.mkdir()
    (parts / "part-1.h5").write_bytes(fresh("whole.h5").read_bytes()[:3000])  # a part cut short
    (parts / "part-2.h5.tmp").write_bytes(b"unfinished")
    result = verify_store(torn)
    assert any("cannot open feature store" in p and "part-1.h5" in p for p in result.problems)
    assert any("part-2.h5.tmp: an unfinished write" in n for n in result.notes)


def test_verify_refuses_shards_that_overlap_or_differ(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_store(shards / "a.h5", [record(HMDB_KEYS[0], 3, 0)], PROVENANCE)
    write_store(shards / "b.h5", [record(HMDB_KEYS[0], 3, 0)], PROVENANCE)
    write_store(shards / "c.h5", [record(HMDB_KEYS[1], 3, 0)], {**PROVENANCE, "weights": "sha256:def"})
    problems = verify_store(shards).problems
    assert any(f"video {HMDB_KEYS[0]!r} is in both" in p for p in problems)
    assert any("weights:" in p and "refusing to mix" in p for p in problems)
