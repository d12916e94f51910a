"""The decode pool alone and in the runner: exact rows, bounded chunks, a killed worker costing one video, and
the pool's own errors (no room in shared memory, workers that cannot start)."""
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from videogen import make_text_file, make_video
from vidfeat.extract import decode_pool
from vidfeat.extract.decode_pool import (
    DecodePool, DecodePoolError, DecodeSpec, RowChunk, VideoEnd, VideoFailed, death_reason,
)
from vidfeat.extract.options import ExtractOptions
from vidfeat.extract.runner import VideoJob, extract_videos
from vidfeat.extract.video import Geometry, Sampling, VideoReader
from vidfeat.extract.windows import Windowing, frame_rows, window_rows
from vidfeat.features import open_store

GEOMETRY = Geometry(32, 24)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("pool")
    made = [
        make_video(root / "a.avi", size=(48, 36), fps=10, seconds=2),
        make_video(root / "b.mp4", size=(36, 48), fps=12, seconds=1, codec="libx264", rotate=90),
        make_text_file(root / "broken.mp4"),
        make_video(root / "c.mkv", size=(40, 30), fps=8, seconds=3, vfr=True),
    ]
    return made


def _collect(pool: DecodePool, paths: list[Path], on_chunk=None) -> tuple[dict, dict]:
    """Each video's chunks and its final message."""
    chunks: dict[int, list[RowChunk]] = {}
    ends: dict[int, VideoEnd | VideoFailed] = {}
    for message in pool.messages(paths):
        assert message.video not in ends, "no message may follow a video's end"
        if isinstance(message, RowChunk):
            chunks.setdefault(message.video, []).append(message)
            if on_chunk is not None:
                on_chunk(pool, message)
        else:
            ends[message.video] = message
    return chunks, ends


def _direct(path: Path, sampling: Sampling, windowing: Windowing | None) -> list:
    reader = VideoReader(path, sampling, GEOMETRY)
    return list(frame_rows(reader) if windowing is None else window_rows(reader, windowing))


def _assert_matches_direct(chunks: list[RowChunk], path: Path, sampling: Sampling, windowing: Windowing | None):
    rows = _direct(path, sampling, windowing)
    pixels = np.concatenate([c.pixels for c in chunks])
    np.testing.assert_array_equal(pixels, np.stack([r.pixels for r in rows]))
    np.testing.assert_array_equal(np.concatenate([c.timestamps for c in chunks]), [r.timestamp for r in rows])
    np.testing.assert_array_equal(np.concatenate([c.indices for c in chunks]), [r.index for r in rows])
    np.testing.assert_array_equal(np.concatenate([c.ranges for c in chunks]), [(r.first, r.last) for r in rows])
    np.testing.assert_array_equal(np.concatenate([c.centres for c in chunks]), [r.centre for r in rows])


@pytest.mark.parametrize("windowing", [None, Windowing(4, 3)], ids=["frames", "windows"])
def test_pool_rows_equal_a_direct_decode_and_bad_files_fail_alone(videos, windowing):
    sampling = Sampling(fps=6)
    with DecodePool(DecodeSpec(sampling, GEOMETRY, windowing, chunk_rows=3), workers=2) as pool:
        chunks, ends = _collect(pool, videos)
    assert sorted(ends) == [0, 1, 2, 3]
    assert isinstance(ends[2], VideoFailed) and "not a video" in ends[2].error and 2 not in chunks
    for video in (0, 1, 3):
        assert isinstance(ends[video], VideoEnd) and ends[video].partial == ""
        assert all(len(c) <= 3 for c in chunks[video])
        _assert_matches_direct(chunks[video], videos[video], sampling, windowing)
    assert chunks[1][0].size == (36, 48)  # display size, after the rotation


def test_a_killed_worker_costs_its_video_only(videos):
    spec = DecodeSpec(Sampling(), GEOMETRY, None, chunk_rows=2)
    killed = []

    def kill_holder_of_video_0(pool: DecodePool, chunk: RowChunk) -> None:
        if chunk.video == 0 and not killed:
            killed.append(pool.worker_pid(0))
            os.kill(killed[0], signal.SIGKILL)

    with DecodePool(spec, workers=2) as pool:
        chunks, ends = _collect(pool, videos, kill_holder_of_video_0)
        assert pool.restarts == 1
        again_chunks, again_ends = _collect(pool, videos[::-1])  # the same workers (one replaced) go on
    assert [type(again_ends[i]) for i in range(4)] == [VideoEnd, VideoFailed, VideoEnd, VideoEnd]
    _assert_matches_direct(again_chunks[3], videos[0], Sampling(), None)
    assert isinstance(ends[0], VideoFailed) and "killed by SIGKILL" in ends[0].error
    assert isinstance(ends[2], VideoFailed)
    for video in (1, 3):
        assert isinstance(ends[video], VideoEnd)
        _assert_matches_direct(chunks[video], videos[video], Sampling(), None)


def test_a_decoder_that_hangs_fails_its_video_after_the_video_timeout(videos, tmp_path):
    """A worker frozen mid-video (SIGSTOP: as a decoder spinning on a damaged file, or a read stalled on a dead
    network filesystem, looks from outside) is stopped after --video-timeout; its video fails, the rest go on."""
    long = make_video(tmp_path / "long.avi", size=(48, 36), fps=10, seconds=20)
    paths = [videos[0], long, videos[1]]
    frozen: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_signal_when_open, args=(long.resolve(), signal.SIGSTOP, frozen, stop))
    watcher.start()
    try:
        with DecodePool(DecodeSpec(Sampling(), GEOMETRY, None, chunk_rows=2), workers=2, video_timeout=1.5) as pool:
            chunks, ends = _collect(pool, paths)
            assert pool.restarts == 1
    finally:
        stop.set()
        watcher.join()
    assert frozen, "the watcher never saw the long video open"
    assert isinstance(ends[1], VideoFailed) and "produced nothing for 1.5 s (--video-timeout)" in ends[1].error
    for video in (0, 2):
        assert isinstance(ends[video], VideoEnd)
        _assert_matches_direct(chunks[video], paths[video], Sampling(), None)
    with pytest.raises(ValueError, match="--video-timeout is a number of seconds > 0"):
        DecodePool(DecodeSpec(Sampling(), GEOMETRY, None, 2), workers=1, video_timeout=0)


def test_death_reasons_name_the_signal_or_status():
    assert "killed by SIGSEGV" in death_reason(-signal.SIGSEGV)
    assert "killed by SIGABRT" in death_reason(-signal.SIGABRT)
    assert "exited with status 3" in death_reason(3)


def test_pool_refuses_no_workers(videos):
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        DecodePool(DecodeSpec(Sampling(), GEOMETRY, None, 2), workers=0)


def _decode_workers() -> list[int]:
    """This process's spawned decode workers (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
    return [int(pid) for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _signal_when_open(target: Path, sig: int, hit: list, stop: threading.Event) -> None:
    """Send ``sig`` to the decode worker that has ``target`` open, once it does."""
    while not stop.is_set() and not hit:
        for pid in _decode_workers():
            try:
                links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
            except OSError:
                continue
            if str(target) in links:
                os.kill(pid, sig)
                hit.append(pid)
                return
        time.sleep(0.002)


def test_extraction_survives_a_killed_decode_worker(tmp_path):
    """End to end: the worker holding the long video is killed mid-decode; that video is recorded as failed with
    the signal, and every other video is stored exactly as in a clean run."""
    short = partial(make_video, size=(48, 36), fps=5, seconds=1)
    paths = [short(tmp_path / f"v{i}.avi") for i in range(3)]
    paths.insert(1, make_video(tmp_path / "long.avi", size=(48, 36), fps=10, seconds=20))
    jobs = [VideoJob(p.stem, p, "x") for p in paths]
    options = ExtractOptions(device="cpu", batch_size=4, workers=1, progress=False)

    def extract(out: Path):
        return extract_videos(jobs, out, "efficientnet_lite0", options, {"name": "t"}, ["x"], 0)

    clean = extract(tmp_path / "clean.h5")
    assert clean.extracted == 4
    killed: list[int] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_signal_when_open, args=(paths[1].resolve(), signal.SIGKILL, killed, stop),
                               daemon=True)
    watcher.start()
    try:
        summary = extract(tmp_path / "crashed.h5")
    finally:
        stop.set()
        watcher.join()
    assert killed, "the watcher never saw the long video open"
    assert summary.extracted == 3 and [Path(p).name for p, _ in summary.failures] == ["long.avi"]
    assert "killed by SIGKILL" in summary.failures[0][1]
    with open_store(tmp_path / "clean.h5") as want, open_store(tmp_path / "crashed.h5") as got:
        assert got.keys() == ["v0", "v1", "v2"]
        for key in got.keys():
            np.testing.assert_array_equal(got.features(key), want.features(key))
            np.testing.assert_array_equal(got.timestamps(key), want.timestamps(key))
            np.testing.assert_array_equal(got.frame_indices(key), want.frame_indices(key))


def test_too_little_shared_memory_is_refused_up_front(videos, mount_tmpfs, monkeypatch):
    """A full /dev/shm would kill workers with SIGBUS mid-video; the pool says so before starting any."""
    monkeypatch.setattr(decode_pool, "SHARED_MEMORY", mount_tmpfs("shm", "size=1m"))
    spec = DecodeSpec(Sampling(), Geometry(256, 224), None, chunk_rows=8)  # 8 slots x 1.2 MB > 1 MiB
    with pytest.raises(DecodePoolError, match=r"needs \d+ MiB of shared memory .* has 1 MiB free; .*--shm-size"):
        DecodePool(spec, workers=1)


def test_a_script_without_a_main_guard_gets_the_advice(videos, tmp_path):
    """Spawned workers re-import the main module; unguarded, each would start a pool of its own and die."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from vidfeat.extract.decode_pool import DecodePool, DecodeSpec\n"
        "from vidfeat.extract.video import Geometry, Sampling\n"
        "pool = DecodePool(DecodeSpec(Sampling(), Geometry(32, 24), None, 2), workers=1)\n"
        f"list(pool.messages([{str(videos[0])!r}]))\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "DecodePoolError: a decode worker process could not start" in result.stderr
    assert "if __name__ == '__main__':" in result.stderr


def test_a_worker_imports_neither_torch_nor_h5py():
    """What a spawned worker imports (the pool's module, its readers and ``features.errors``) stays light: torch
    and h5py would cost every worker 2 s of start-up and ~480 MiB of resident memory."""
    probe = ("import sys, vidfeat.extract.decode_pool; "
             "print(sorted(m for m in ('torch', 'h5py', 'cv2') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
