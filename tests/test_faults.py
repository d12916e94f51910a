"""Faults around the store: a full disk, an output folder that is missing or read-only."""
import subprocess
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import torch
import torchvision
from click.testing import CliRunner, Result

from videogen import make_video
from vidfeat.features import open_store
from vidfeat.pipelines import fuzz
from vidfeat.pipelines.cli import main

VIDEO = partial(make_video, size=(48, 36), fps=10, seconds=2)  # 20 rows of 1280 float16 = 50 KB a video


def extract(inputs, out, *extra) -> Result:
    args = ["extract", str(inputs), "--out", str(out), "--commit-every", "0", "--no-progress", *map(str, extra)]
    return CliRunner().invoke(main, args)


def test_a_full_disk_stops_with_a_clear_error_keeps_what_was_committed_and_resumes(tmp_path, mount_tmpfs):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(8):
        VIDEO(videos / f"v{i}.avi", start=i / 10)
    clean = tmp_path / "clean.h5"
    assert extract(videos, clean).exit_code == 0
    disk = mount_tmpfs("disk", "size=200k")
    out = disk / "store.h5"

    full = extract(videos, out)
    assert full.exit_code == 1
    assert "the disk is full" in full.output and "free some space and rerun the same command" in full.output
    assert "Traceback" not in full.output
    assert not list(disk.rglob("*.tmp")), "no temporary file may be left on the full disk"
    with open_store(out) as partial_store:
        committed = {key: partial_store.features(key) for key in partial_store.keys()}
    assert 0 < len(committed) < 8

    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
    resumed = extract(videos, out)
    assert resumed.exit_code == 0, resumed.output
    assert f"{8 - len(committed)} extracted now, {len(committed)} already stored" in resumed.output
    assert not (disk / "store.h5.parts").exists()
    with open_store(out) as got, open_store(clean) as want:
        assert got.keys() == want.keys()
        for key in want.keys():
            np.testing.assert_array_equal(got.features(key), want.features(key))
        for key, features in committed.items():
            np.testing.assert_array_equal(got.features(key), features)


def test_a_missing_or_read_only_output_folder_is_refused_before_decoding(tmp_path, mount_tmpfs):
    video = VIDEO(tmp_path / "v.avi")
    missing = extract(video, tmp_path / "no such folder" / "out.h5")
    assert missing.exit_code == 1 and "does not exist; create it" in missing.output
    assert not (tmp_path / "no such folder").exists()

    read_only = mount_tmpfs("ro", "ro,size=1m")
    refused = extract(video, read_only / "out.h5")
    assert refused.exit_code == 1
    assert "cannot write the store" in refused.output and "must be writable" in refused.output


def test_damaged_real_clips_are_each_stored_or_failed_with_a_reason(tmp_path):
    """Two of each damage (bit flips in header, index and payload; truncation; zeroed bytes; wrong extension;
    audio only) on MPEG-4 AVI and H.264 MP4: no crash, no hang, every input accounted for, the rerun retries
    exactly the failures. `make fuzz` runs more."""
    campaign = fuzz.corrupt_campaign(tmp_path, trials=14, seed=0)
    assert (campaign.survived, campaign.lost, campaign.crashes, campaign.hangs) == (14, 0, 0, 0), campaign.problems


def test_kill_9_during_a_commit_during_the_merge_and_at_random_loses_nothing(tmp_path):
    campaign = fuzz.kill_campaign(tmp_path, trials=3, seed=0)
    assert (campaign.survived, campaign.lost, campaign.crashes) == (3, 0, 0), campaign.problems
    assert not {"commit", "merge"} & set(campaign.missed), "the kill must land in the commit and in the merge"


def _resnet18_weights(path, scale: float) -> str:
    """A resnet18 state_dict whose last BatchNorm scales every feature by ``scale`` and shifts it by as much
    (inf: every feature infinite)."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    if np.isfinite(scale):
        state["layer4.1.bn2.weight"] = state["layer4.1.bn2.weight"] * scale
    state["layer4.1.bn2.bias"] = state["layer4.1.bn2.bias"] + scale  # past the ReLU
    torch.save(state, path)
    return str(path)


def test_infinite_features_and_float16_overflow_are_never_stored(tmp_path):
    video = VIDEO(tmp_path / "v.avi")
    nan_weights = _resnet18_weights(tmp_path / "inf.pt", float("inf"))
    huge_weights = _resnet18_weights(tmp_path / "huge.pt", 1e6)
    for weights, reason in ((nan_weights, "NaN or infinite features"), (huge_weights, "overflow float16")):
        result = extract(video, tmp_path / f"{Path(weights).stem}.h5", "--backbone", "resnet18", "--weights", weights)
        assert result.exit_code == 1 and reason in result.output, result.output
        with open_store(tmp_path / f"{Path(weights).stem}.h5") as store:
            assert len(store) == 0 and reason in store.failures()[0][1]
    wide = extract(video, tmp_path / "wide.h5", "--backbone", "resnet18", "--weights", huge_weights, "--dtype", "float32")
    assert wide.exit_code == 0, wide.output
    with open_store(tmp_path / "wide.h5") as store:
        assert np.isfinite(store.features("v")).all() and store.features("v").max() > np.finfo(np.float16).max
        wide_features = store.features("v")
    auto = extract(video, tmp_path / "auto.h5", "--backbone", "resnet18", "--weights", huge_weights, "--dtype", "auto")
    assert auto.exit_code == 0, auto.output
    with open_store(tmp_path / "auto.h5") as store:  # auto measured the first video and chose float32
        assert store.attrs["dtype"] == "float32"
        np.testing.assert_array_equal(store.features("v"), wide_features)


def test_dtype_auto_keeps_float16_for_normal_features_and_follows_an_existing_store(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    VIDEO(folder / "v.avi")
    assert extract(folder, tmp_path / "s.h5", "--dtype", "float32").exit_code == 0
    VIDEO(folder / "w.avi")
    resumed = extract(folder, tmp_path / "s.h5", "--dtype", "auto")  # the store's own dtype, no probe
    assert resumed.exit_code == 0, resumed.output
    fresh = extract(folder / "w.avi", tmp_path / "f.h5", "--dtype", "auto")
    assert fresh.exit_code == 0, fresh.output
    with open_store(tmp_path / "s.h5") as stored, open_store(tmp_path / "f.h5") as new:
        assert stored.attrs["dtype"] == "float32" and sorted(stored.keys()) == ["v", "w"]
        assert new.attrs["dtype"] == "float16" and new.keys() == ["w"]


def test_features_verify_exit_status(tmp_path):
    video = VIDEO(tmp_path / "v.avi")
    store = tmp_path / "s.h5"
    assert extract(video, store).exit_code == 0
    ok = CliRunner().invoke(main, ["features", "verify", str(store)])
    assert ok.exit_code == 0 and ok.output.startswith("ok: 1 file(s), 1 video(s), 20 row(s) checked"), ok.output
    with h5py.File(store, "r+") as f:
        f["features"][3, 7] = np.inf
    bad = CliRunner().invoke(main, ["features", "verify", str(store)])
    assert bad.exit_code == 1 and "PROBLEM:" in bad.output and "NaN or infinite, in v" in bad.output


def test_debug_shows_the_traceback_of_an_error(tmp_path):
    args = ["extract", str(tmp_path / "nothing here"), "--out", str(tmp_path / "s.h5")]
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 1 and plain.output.startswith("Error: ") and plain.exc_info[0] is SystemExit
    debug = CliRunner().invoke(main, ["--debug", *args])
    assert debug.exit_code == 1 and not isinstance(debug.exception, SystemExit)
    assert debug.exc_info[2] is not None  # the original exception, with its traceback
