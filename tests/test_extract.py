"""Extraction end to end through the CLI: datasets, bad inputs, kill -9 / Ctrl-C resume, locking and mixing."""
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hmdb_fixture import make_hmdb51_tree
from videogen import make_audio_only, make_text_file, make_truncated, make_video
from vidfeat.extract.decode_pool import RowChunk
from vidfeat.extract.runner import Batcher
from vidfeat.features import open_store
from vidfeat.pipelines.cli import main

# Tiny real videos keep the pretrained efficientnet_lite0 (the default backbone) fast enough for CI.
tiny = partial(make_video, size=(48, 36), fps=5, seconds=1)


def run_cli(*args: str):
    return CliRunner().invoke(main, [*map(str, args), "--no-progress"] if args[0] == "extract" else list(map(str, args)))


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("hmdb51")
    tree = make_hmdb51_tree(root, write_video=tiny, classes=("brush_hair", "cartwheel"), per_class=4)
    (tree.videos_dir / "cartwheel" / "zero bytes (#1).avi").write_bytes(b"")
    make_text_file(tree.videos_dir / "brush_hair" / "notes!.avi")
    return tree


def test_hmdb51_tree_stores_every_readable_video_and_records_corrupt_ones(hmdb, tmp_path):
    out = tmp_path / "hmdb.h5"
    result = run_cli("extract", "--dataset", "hmdb51", "--data-root", hmdb.root, "--out", out)
    assert result.exit_code == 1, result.output
    assert "2 video(s) failed" in result.output
    assert "zero bytes (#1).avi: file is empty" in result.output
    with open_store(out) as s:
        assert s.keys() == sorted(hmdb.expected)
        for key, (label, splits) in hmdb.expected.items():
            assert s.label(key) == label
            assert tuple(s.split(key, f) for f in (1, 2, 3)) == splits
            assert s.features(key).shape == (5, 1280)
        failed = dict(s.failures())
        assert set(map(os.path.basename, failed)) == {"zero bytes (#1).avi", "notes!.avi"}
        assert s.attrs["backbone"] == "efficientnet_lite0" and s.attrs["n_folds"] == 3
        assert s.attrs["classes"] == ["brush_hair", "cartwheel"]

    info = run_cli("features", "info", out)
    assert info.exit_code == 0 and "failures: 2" in info.output and "fold 1: train=" in info.output

    again = run_cli("extract", "--dataset", "hmdb51", "--data-root", hmdb.root, "--out", out, "--skip-failed")
    assert again.exit_code == 0, again.output
    assert "0 extracted now, 8 already stored, 0 failed, 2 earlier failures skipped" in again.output
    retry = run_cli("extract", "--dataset", "hmdb51", "--data-root", hmdb.root, "--out", out, "--allow-failures")
    assert retry.exit_code == 0 and "2 failed" in retry.output  # failures are retried, and fail again


def test_bad_inputs_become_failures_and_truncation_is_flagged(tmp_path):
    videos = tmp_path / "in"
    videos.mkdir()
    good = make_video(videos / "good.avi", size=(48, 36), fps=10, seconds=2)
    make_truncated(make_video(tmp_path / "long.avi", size=(48, 36), fps=10, seconds=4), videos / "cut.avi", 0.5)
    (videos / "empty.mp4").write_bytes(b"")
    make_audio_only(videos / "sound.mp4")
    make_text_file(videos / "text.mp4")
    make_truncated(good, videos / "header_only.avi", 0.02)
    out = tmp_path / "x.h5"
    result = run_cli("extract", videos, "--out", out, "--fps", "5")
    assert result.exit_code == 1
    with open_store(out) as s:
        assert s.keys() == ["cut", "good"]
        assert "cut" in s.partial() and "decoded" in s.partial()["cut"]
        record = s.record("cut")
        assert 0 < record.decoded_frames < record.expected_frames == 40
        errors = {Path(src).name: err for src, err in s.failures()}
    assert set(errors) == {"empty.mp4", "sound.mp4", "text.mp4", "header_only.avi"}
    assert "empty" in errors["empty.mp4"] and "no video stream" in errors["sound.mp4"]
    assert "partial: cut:" in result.output

    strict = tmp_path / "strict.h5"
    result = run_cli("extract", videos / "cut.avi", videos / "good.avi", "--out", strict, "--strict")
    assert result.exit_code == 1 and "--strict" in result.output
    with open_store(strict) as s:
        assert s.keys() == ["good"] and "--strict" in s.failures()[0][1]


def test_fps_sampling_records_exact_timestamps_and_source_indices(tmp_path):
    make_video(tmp_path / "v.mp4", size=(64, 48), fps=25, seconds=2)
    out = tmp_path / "fps.h5"
    assert run_cli("extract", tmp_path / "v.mp4", "--out", out, "--fps", "5").exit_code == 0
    with open_store(out) as s:
        np.testing.assert_allclose(s.timestamps("v"), np.arange(10) * 0.2, atol=1e-9)
        assert s.frame_indices("v").tolist() == list(range(0, 50, 5))
        assert s.attrs["sampling"] == {"mode": "fps", "fps": 5.0}
    out_all = tmp_path / "all.h5"
    assert run_cli("extract", tmp_path / "v.mp4", "--out", out_all, "--dtype", "float32").exit_code == 0
    with open_store(out_all) as s, open_store(out) as sampled:
        assert s.features("v").shape == (50, 1280) and s.features("v").dtype == np.float32
        # the fps store's rows are the very same frames, through the same model
        np.testing.assert_allclose(sampled.features("v"), s.features("v")[::5], atol=2e-2, rtol=1e-2)


def test_mixing_and_bad_options_are_refused_with_clear_errors(tmp_path):
    make_video(tmp_path / "v.mp4", size=(48, 36), fps=5, seconds=1)
    out = tmp_path / "s.h5"
    assert run_cli("extract", tmp_path / "v.mp4", "--out", out).exit_code == 0
    mixed = run_cli("extract", tmp_path / "v.mp4", "--out", out, "--fps", "2")
    assert mixed.exit_code == 1 and "refusing to mix them" in mixed.output and "sampling" in mixed.output
    for args, message in [
        (("--device", "cuda:3"), "CUDA is not available"),
        (("--weights", tmp_path / "missing.pth"), "missing.pth"),
        (("--backbone", "vgg16"), "vgg16"),
        (("--fps", "2", "--every-n", "3"), "fps"),
    ]:
        result = run_cli("extract", tmp_path / "v.mp4", "--out", tmp_path / "other.h5", *args)
        assert result.exit_code == 1 and message in result.output, result.output
    result = run_cli("extract", "--dataset", "hmdb51", "--data-root", tmp_path / "nowhere", "--out", tmp_path / "o.h5")
    assert result.exit_code == 1 and "looked in" in result.output and "serre-lab" in result.output


def _extract_process(inputs: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vidfeat.pipelines.cli", "extract", str(inputs), "--out", str(out),
           "--batch-size", "2", "--commit-every", "0", "--no-progress"]
    # A child inherits an ignored SIGINT from a background job, and Python then never raises KeyboardInterrupt:
    # restore the default so the Ctrl-C test sees what a terminal user would.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_parts(out: Path, proc: subprocess.Popen, count: int) -> None:
    parts = out.with_name(out.name + ".parts")
    deadline = time.time() + 120
    while len(list(parts.glob("part-*.h5"))) < count:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def many_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for i in range(14):
        make_video(root / f"clip {i:02d}.mp4", size=(48, 36), fps=5, seconds=1.2, pattern="counter")
    return root


@pytest.fixture(scope="module")
def clean_store(many_videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "clean.h5"
    assert run_cli("extract", many_videos, "--out", out).exit_code == 0
    return out


def assert_same_store(a: Path, b: Path) -> None:
    with open_store(a) as x, open_store(b) as y:
        assert x.keys() == y.keys()
        for key in x.keys():
            np.testing.assert_allclose(x.features(key).astype(np.float32), y.features(key).astype(np.float32),
                                       atol=1e-2, rtol=1e-2)
            np.testing.assert_array_equal(x.timestamps(key), y.timestamps(key))
            np.testing.assert_array_equal(x.frame_indices(key), y.frame_indices(key))


def test_commits_on_a_clock_write_few_part_files_and_the_same_store(many_videos, clean_store, tmp_path):
    """Committing at most every hour writes one part file, on close; committing after every batch writes one per
    batch that finishes a video. The features are the same either way."""
    counts = {}
    for every in ("0", "3600"):
        out = tmp_path / f"every{every}.h5"
        result = run_cli("extract", many_videos, "--out", out, "--batch-size", "2", "--commit-every", every)
        assert result.exit_code == 0, result.output
        counts[every] = int(result.output.split("committed in ")[1].split()[0])
        assert_same_store(out, clean_store)
    assert counts["3600"] == 1 and counts["0"] >= 7, counts


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_extraction_resumes_to_the_clean_result(many_videos, clean_store, tmp_path, sig):
    out = tmp_path / "killed.h5"
    proc = _extract_process(many_videos, out)
    _wait_for_parts(out, proc, 2)
    proc.send_signal(sig)
    output = proc.communicate(timeout=60)[0]
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "rerun the same command to resume" in output
    else:
        assert proc.returncode == -signal.SIGKILL
    with open_store(out) as s:  # what finished before the signal is readable right away
        saved = len(s)
    assert 2 <= saved < 14
    resumed = run_cli("extract", many_videos, "--out", out)
    assert resumed.exit_code == 0
    assert f"{14 - saved} extracted now, {saved} already stored" in resumed.output
    assert not out.with_name(out.name + ".parts").exists()
    assert_same_store(out, clean_store)


def test_second_writer_on_the_same_store_is_refused(many_videos, tmp_path):
    out = tmp_path / "busy.h5"
    proc = _extract_process(many_videos, out)
    try:
        _wait_for_parts(out, proc, 1)
        result = run_cli("extract", many_videos, "--out", out)
        assert result.exit_code == 1
        assert f"is being written by pid {proc.pid}" in result.output
    finally:
        proc.kill()
        proc.wait()


def test_three_fold_protocol_on_an_hmdb51_shaped_tree(hmdb, tmp_path):
    store = tmp_path / "hmdb.h5"
    run_cli("extract", "--dataset", "hmdb51", "--data-root", hmdb.root, "--out", store, "--allow-failures")
    result = run_cli("train-temporal", "--head", "mean", "--features", store, "--fold", "all", "--epochs", "3",
                     "--segments", "2", "--out", tmp_path / "run", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [row["fold"] for row in summary["folds"]] == [1, 2, 3]
    for fold in (1, 2, 3):
        assert (tmp_path / "run" / f"fold{fold}" / "metrics.json").exists()
    assert set(summary["mean"]) >= {"top1", "top5", "mean_class_accuracy"} and "top1" in summary["std"]
    table = run_cli("compare", tmp_path / "run")
    assert table.exit_code == 0 and "±" in table.output


def _chunk(video: int, rows: int, side: int = 4, first: int = 0) -> RowChunk:
    index = np.arange(first, first + rows)
    return RowChunk(video, (side, side), np.full((rows, side, side, 3), video, np.uint8), index / 10.0, index,
                    np.stack([index, index], 1), np.zeros(rows, np.int64))


def test_batcher_fills_batches_across_videos_and_breaks_where_the_shape_changes():
    batcher = Batcher()
    for chunk in (_chunk(0, 3), _chunk(1, 4), _chunk(2, 2, side=6), _chunk(3, 1)):
        batcher.add(chunk)
    assert batcher.rows == 10
    first = batcher.take(5)  # video 0 whole, then the first 2 rows of video 1
    assert [(c.video, len(c)) for c in first] == [(0, 3), (1, 2)] and batcher.rows == 5
    assert first[1].indices.tolist() == [0, 1] and first[1].ranges.tolist() == [[0, 0], [1, 1]]
    rest = batcher.take(5)  # video 1's other 2 rows; video 2's larger frames cannot join them
    assert [(c.video, len(c)) for c in rest] == [(1, 2)] and rest[0].timestamps.tolist() == [0.2, 0.3]
    batcher.drop(2)  # video 2 failed: its waiting rows go, the others stay in order
    assert batcher.rows == 1 and [(c.video, len(c)) for c in batcher.take(8)] == [(3, 1)] and batcher.rows == 0


def test_a_batch_returning_after_its_video_failed_is_dropped(tmp_path):
    """On CUDA a batch comes back one submit late; a video that failed meanwhile (its worker died) stays failed,
    and the other video in that batch is stored whole."""
    from vidfeat.extract.decode_pool import VideoEnd, VideoFailed
    from vidfeat.extract.device import BatchOutput
    from vidfeat.extract.options import ExtractOptions
    from vidfeat.extract.runner import Assembler, ExtractSummary, VideoJob
    from vidfeat.features.store import StoreWriter

    videos = [tmp_path / "a.avi", tmp_path / "b.avi"]
    for video in videos:
        video.write_bytes(b"x")
    out = tmp_path / "s.h5"
    summary = ExtractSummary(out=out)
    provenance = {"backbone": "t", "weights": "none", "feature_dim": 2, "preprocessing": {}, "sampling": {},
                  "classes": ["x"]}
    with StoreWriter(out, provenance) as writer:
        assembler = Assembler([VideoJob(v.stem, v, "x") for v in videos], writer, summary,
                               ExtractOptions(progress=False), windows=False)
        in_flight = [_chunk(0, 2), _chunk(1, 3)]
        for chunk in in_flight:
            assembler.queued(chunk)
        assembler.end(VideoEnd(1, 3, 3, ""))
        assembler.failed(VideoFailed(0, "the decode worker was killed by SIGKILL"))
        assembler.add(BatchOutput(in_flight, np.arange(10, dtype=np.float32).reshape(5, 2)))
        assembler.close()
    assert summary.failures == [(str(videos[0]), "the decode worker was killed by SIGKILL")]
    assert summary.extracted == 1 and summary.rows == 3
    with open_store(out) as store:
        assert store.keys() == ["b"]
        np.testing.assert_array_equal(store.features("b"), [[4, 5], [6, 7], [8, 9]])


def test_frozen_cpu_graph_matches_eager_features(many_videos, tmp_path):
    """The default CPU path runs a frozen graph; --eager runs the module itself. Same rows, near-same features."""
    out = tmp_path / "eager.h5"
    assert run_cli("extract", many_videos, "--out", out, "--eager", "--dtype", "float32").exit_code == 0
    frozen = tmp_path / "frozen.h5"
    assert run_cli("extract", many_videos, "--out", frozen, "--dtype", "float32").exit_code == 0
    with open_store(out) as eager, open_store(frozen) as graph:
        assert eager.keys() == graph.keys()
        for key in eager.keys():
            np.testing.assert_allclose(graph.features(key), eager.features(key), atol=1e-4, rtol=1e-4)
            np.testing.assert_array_equal(graph.timestamps(key), eager.timestamps(key))
            np.testing.assert_array_equal(graph.frame_indices(key), eager.frame_indices(key))
