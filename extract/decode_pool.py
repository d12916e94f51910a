"""The decode pool: videos decoded in spawned worker processes, frames handed over through shared memory.

Why it is built this way:

* Processes, not threads. Decoding, colour conversion and row assembly are Python-driven per frame; in threads
  they contend for the GIL with the model loop, and a segfault or abort inside libav on one malicious file would
  take the whole run down. Here a crash costs its worker and the one video it held: that video is reported as
  failed with the signal's name, a replacement worker starts, and every other video is untouched.
* ``spawn``, not ``fork``: forking a process that already runs torch's OpenMP and CUDA threads is unsafe.
  Workers import only PyAV and numpy (tested; see ``vidfeat.pipelines.console`` for why the CLI's main module is
  light, and ``vidfeat.features`` for why that package loads its modules on first use).
* Shared memory, not pickles. Each worker owns a few fixed slots of one shared-memory block; it writes rows
  straight into a free slot and sends only a small ``ChunkReady`` (timestamps, indices) through its pipe. The
  parent copies the rows out and hands the slot back. So memory is bounded by workers x slots x slot size, however
  long the videos are, and the pipes carry no pixels.
* One video per worker at a time, assigned by the parent: the parent always knows which video a dead worker held.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing import connection, shared_memory
from pathlib import Path

import numpy as np

from vidfeat.extract.video import Geometry, Sampling, VideoError, VideoReader
from vidfeat.extract.windows import Row, Windowing, frame_rows, window_rows
from vidfeat.features.errors import UserError

SLOTS_PER_WORKER = 8  # per worker: enough to decode ahead while the model holds the cores
MAX_CHUNK_ROWS = 32  # rows per slot at most: GPU batches of 128+ are filled from several chunks
SHARED_MEMORY = Path("/dev/shm")  # where POSIX shared memory lives on Linux (containers often make it small)
# Uncropped frames (region stores) are sized for display aspect ratios up to this; wider videos get fewer rows
# per slot, and only a single row larger than a whole slot fails its video.
_MAX_ASPECT = 4


def default_workers() -> int:
    """The cores this process may use, minus one for the model loop; at least one."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


@dataclass(frozen=True)
class RowChunk:
    """Pool -> batcher: consecutive model-input rows of one video, with where each row came from."""

    video: int
    size: tuple[int, int]      # the source's display width and height (for boxes)
    pixels: np.ndarray         # [n, H, W, 3] frames or [n, T, H, W, 3] clip windows, uint8
    timestamps: np.ndarray     # [n] seconds
    indices: np.ndarray        # [n] source frame index (a window's centre frame)
    ranges: np.ndarray         # [n, 2] first and last source frame of each row
    centres: np.ndarray        # [n] position of the centre frame inside each window (0 for frames)

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pixels.shape[1:]

    def split(self, n: int) -> tuple["RowChunk", "RowChunk"]:
        """The first ``n`` rows and the rest."""
        head = {name: getattr(self, name)[:n] for name in _ROW_ARRAYS}
        tail = {name: getattr(self, name)[n:] for name in _ROW_ARRAYS}
        return replace(self, **head), replace(self, **tail)


_ROW_ARRAYS = ("pixels", "timestamps", "indices", "ranges", "centres")


@dataclass(frozen=True)
class VideoEnd:
    """Pool -> assembler: every row of the video has been sent."""

    video: int
    decoded_frames: int
    expected_frames: int       # -1 when the container does not say
    partial: str               # why decoding stopped early, or ""


@dataclass(frozen=True)
class VideoFailed:
    """Pool -> assembler: the video could not be decoded (or its worker died); rows already sent are dropped."""

    video: int
    error: str


PoolMessage = RowChunk | VideoEnd | VideoFailed


@dataclass(frozen=True)
class DecodeTask:
    """Parent -> worker: decode this video."""

    video: int
    path: str


@dataclass(frozen=True)
class SlotFree:
    """Parent -> worker: the rows in this slot have been copied out; it may be filled again."""

    slot: int


@dataclass(frozen=True)
class WorkerReady:
    """Worker -> parent, first of all: it started and attached its slots (a worker that dies before saying so
    could not start at all, which is an error of the run, not of a video)."""


@dataclass(frozen=True)
class ChunkReady:
    """Worker -> parent: ``rows`` rows of ``video`` lie in ``slot``, shaped ``row_shape`` each."""

    video: int
    slot: int
    rows: int
    row_shape: tuple[int, ...]
    size: tuple[int, int]
    timestamps: np.ndarray
    indices: np.ndarray
    ranges: np.ndarray
    centres: np.ndarray


@dataclass(frozen=True)
class DecodeSpec:
    """What every worker produces: the sampling, geometry and windowing of the model's input rows."""

    sampling: Sampling
    geometry: Geometry | None
    windowing: Windowing | None
    chunk_rows: int            # rows per chunk at most (the model's batch size)

    def row_bytes_bound(self) -> int:
        """Bytes of the largest row a slot is sized for."""
        geometry = self.geometry or Geometry(1080)
        if geometry.crop is not None:
            pixels = geometry.crop * geometry.crop
        else:
            pixels = geometry.resize * geometry.resize * _MAX_ASPECT
        frames = self.windowing.clip_len if self.windowing is not None else 1
        return pixels * 3 * frames

    def slot_bytes(self) -> int:
        return -(-self.chunk_rows * self.row_bytes_bound() // 64) * 64


@dataclass(frozen=True)
class _WorkerSetup:
    spec: DecodeSpec
    block: str                 # shared-memory block name
    slots: int
    decode_threads: int


class _Stopped(Exception):
    """The parent asked the worker to stop while it waited for a slot."""


class _Worker:
    """The worker side: decode the assigned video, fill slots, report; one video at a time."""

    def __init__(self, conn: connection.Connection, setup: _WorkerSetup, block: shared_memory.SharedMemory) -> None:
        self.conn, self.setup, self.block = conn, setup, block
        self.spec = setup.spec
        self.slot_bytes = self.spec.slot_bytes()
        self.free = list(range(setup.slots))

    def serve(self) -> None:
        self.conn.send(WorkerReady())
        while True:
            message = self.conn.recv()
            if message is None:
                return
            if isinstance(message, SlotFree):
                self.free.append(message.slot)
            else:
                self.conn.send(self.decode(message))

    def _slot(self) -> int:
        while not self.free:
            message = self.conn.recv()
            if message is None:
                raise _Stopped
            self.free.append(message.slot)
        return self.free.pop()

    def decode(self, task: DecodeTask) -> VideoEnd | VideoFailed:
        try:
            reader = VideoReader(task.path, self.spec.sampling, self.spec.geometry, self.setup.decode_threads)
            size = (reader.info.width, reader.info.height)
            rows = frame_rows(reader) if self.spec.windowing is None else window_rows(reader, self.spec.windowing)
            self._send_rows(task.video, rows, size)
            expected = reader.info.expected_frames
            return VideoEnd(task.video, reader.decoded_frames, -1 if expected is None else expected,
                            (reader.error or "partial decode") if reader.partial else "")
        except (VideoError, ValueError) as exc:
            return VideoFailed(task.video, str(exc))
        except _Stopped:
            raise
        except Exception as exc:  # a decoder bug on one file must not end the run
            return VideoFailed(task.video, f"unexpected {type(exc).__name__}: {exc}")

    def _send_rows(self, video: int, rows: Iterator[Row], size: tuple[int, int]) -> None:
        """Rows into slots: a chunk closes when full, when the next row would not fit, or when the shape changes."""
        pending: list[Row] = []
        slot = view = None
        for row in rows:
            if row.pixels.nbytes > self.slot_bytes:
                raise VideoError(f"a model input of shape {row.pixels.shape} is larger than a decode slot "
                                 f"({self.slot_bytes} bytes); lower --roi-size or re-encode the video smaller")
            if pending and (len(pending) == self.spec.chunk_rows or row.pixels.shape != pending[0].pixels.shape
                            or (len(pending) + 1) * row.pixels.nbytes > self.slot_bytes):
                self._send_chunk(video, slot, pending, size)
                pending, slot = [], None
            if slot is None:
                slot = self._slot()
                view = np.ndarray((self.slot_bytes,), np.uint8, self.block.buf, slot * self.slot_bytes)
            start = len(pending) * row.pixels.nbytes
            view[start:start + row.pixels.nbytes] = row.pixels.reshape(-1)
            pending.append(row)
        if pending:
            self._send_chunk(video, slot, pending, size)

    def _send_chunk(self, video: int, slot: int, rows: list[Row], size: tuple[int, int]) -> None:
        self.conn.send(ChunkReady(
            video, slot, len(rows), rows[0].pixels.shape, size, np.array([r.timestamp for r in rows]),
            np.array([r.index for r in rows]), np.array([(r.first, r.last) for r in rows], dtype=np.int64),
            np.array([r.centre for r in rows]),
        ))


def _worker_main(conn: connection.Connection, setup: _WorkerSetup) -> None:
    """A worker process: Ctrl-C is the parent's to handle (it stops the pool), so workers ignore SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    block = shared_memory.SharedMemory(name=setup.block)
    try:
        _Worker(conn, setup, block).serve()
    except (_Stopped, EOFError, BrokenPipeError):
        pass  # the parent stopped the pool or went away
    finally:
        block.close()


def death_reason(exitcode: int | None) -> str:
    """Why a worker process ended, for the failure record of the video it held."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how = f"was killed by {name}"
    else:
        how = f"exited with status {exitcode}"
    return (f"the decode worker {how} while decoding this video (a crash inside libav on this file, the "
            "out-of-memory killer or a kill); the other videos were not affected - rerun to retry it")


class DecodePoolError(UserError):
    """The pool itself cannot work (no room for its slots, or its workers cannot start); no video is to blame."""


def _check_shared_memory(need: int, workers: int) -> None:
    """Refuse up front when the slots cannot fit: writing past a full /dev/shm kills the worker with SIGBUS."""
    try:
        stat = os.statvfs(SHARED_MEMORY)
    except OSError:
        return  # no /dev/shm here; creating the blocks reports any problem itself
    free = stat.f_bavail * stat.f_frsize
    if need > free:
        raise DecodePoolError(
            f"the decode pool needs {need / 2**20:.0f} MiB of shared memory for {workers} worker(s), but "
            f"{SHARED_MEMORY} has {free / 2**20:.0f} MiB free; give it more (docker run --shm-size=2g, or remount "
            "the tmpfs larger), or use fewer --workers or a smaller --batch-size")


@dataclass
class _Handle:
    """The parent's view of one worker slot position: its process, pipe, shared block and assigned video."""

    index: int
    block: shared_memory.SharedMemory
    process: multiprocessing.process.BaseProcess | None = None
    conn: connection.Connection | None = None
    video: int | None = None
    ready: bool = False
    silent: float = 0.0  # seconds the parent has waited on it since its last message (see video_timeout)


class DecodePool:
    """``workers`` spawned decode processes, started once and reused: each ``messages(paths)`` call decodes one
    list of videos (video i is ``paths[i]``), so a long-lived caller (a Dask worker) pays the start-up once.

    Every video ends in exactly one VideoEnd or VideoFailed, after all of its RowChunks.
    """

    def __init__(self, spec: DecodeSpec, workers: int | None = None, video_timeout: float | None = None) -> None:
        count = default_workers() if workers is None else workers
        if count < 1:
            raise UserError(f"--workers must be >= 1, got {count}")
        if video_timeout is not None and video_timeout <= 0:
            raise UserError(f"--video-timeout is a number of seconds > 0, got {video_timeout}")
        self.spec = spec
        self.video_timeout = video_timeout
        self.todo: deque[DecodeTask] = deque()
        self.context = multiprocessing.get_context("spawn")
        self.slot_bytes = spec.slot_bytes()
        self.decode_threads = max(1, (len(os.sched_getaffinity(0)) - 1) // count)  # the model loop keeps a core
        self.handles: list[_Handle] = []
        self.restarts = 0
        _check_shared_memory(count * SLOTS_PER_WORKER * self.slot_bytes, count)
        try:
            for index in range(count):
                block = shared_memory.SharedMemory(create=True, size=SLOTS_PER_WORKER * self.slot_bytes)
                self.handles.append(_Handle(index, block))
                self._start(self.handles[-1])
        except BaseException:
            self.close()
            raise

    def _start(self, handle: _Handle) -> None:
        parent, child = self.context.Pipe()
        setup = _WorkerSetup(self.spec, handle.block.name, SLOTS_PER_WORKER, self.decode_threads)
        handle.process = self.context.Process(target=_worker_main, args=(child, setup), daemon=True,
                                              name=f"vidfeat-decode-{handle.index}")
        handle.process.start()
        child.close()  # so that the worker's death reads as end-of-file here
        handle.conn, handle.video, handle.ready = parent, None, False

    def worker_pid(self, video: int) -> int | None:
        """The process decoding ``video`` now, if any (for diagnostics and fault tests)."""
        return next((h.process.pid for h in self.handles if h.video == video), None)

    def _assign(self, handle: _Handle) -> None:
        if self.todo:
            task = self.todo.popleft()
            handle.video, handle.silent = task.video, 0.0
            try:
                handle.conn.send(task)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it died; the next read sees the end of its pipe and fails this video

    def messages(self, paths: Sequence[str | Path]) -> Iterator[PoolMessage]:
        """Decode ``paths``; the messages of all of them, until each has ended (the next call may then follow)."""
        if self.todo or any(h.video is not None for h in self.handles):
            raise RuntimeError("DecodePool.messages: the previous list of videos has not been read to its end")
        self.todo.extend(DecodeTask(i, str(p)) for i, p in enumerate(paths))
        for handle in self.handles:
            self._assign(handle)
        while True:
            busy = {h.conn: h for h in self.handles if h.video is not None}
            if not busy:
                return
            started = time.monotonic()
            ready = connection.wait(list(busy), timeout=self._time_left(busy.values()))
            waited = time.monotonic() - started
            for conn in ready:
                busy[conn].silent = 0.0
                yield from self._receive(busy[conn])
            for handle in (h for conn, h in busy.items() if conn not in ready and h.ready):  # start-up is no hang
                handle.silent += waited
                if self.video_timeout is not None and handle.silent >= self.video_timeout:
                    yield from self._stop_hung(handle)

    def _time_left(self, busy: Iterable[_Handle]) -> float | None:
        """How long to wait before the first busy worker would reach the video timeout (None: no timeout).

        Only time spent waiting on a worker counts, never time the consumer took with earlier rows: a worker whose
        slots are all full is waiting for the parent, not hung."""
        if self.video_timeout is None:
            return None
        return max(0.0, min(self.video_timeout - h.silent for h in busy))

    def _stop_hung(self, handle: _Handle) -> Iterator[PoolMessage]:
        handle.process.kill()
        yield from self._replace(handle, f"decoding produced nothing for {self.video_timeout:g} s "
                                         "(--video-timeout), so the decoder was stopped; the file may be damaged "
                                         "or on a stalled filesystem")

    def _receive(self, handle: _Handle) -> Iterator[PoolMessage]:
        try:
            message = handle.conn.recv()
        except (EOFError, ConnectionResetError):
            yield from self._replace(handle)
            return
        if isinstance(message, WorkerReady):
            handle.ready = True
            return
        if isinstance(message, ChunkReady):
            yield self._copy_out(handle, message)
            return
        handle.video = None
        self._assign(handle)
        yield message

    def _copy_out(self, handle: _Handle, ready: ChunkReady) -> RowChunk:
        shape = (ready.rows, *ready.row_shape)
        pixels = np.ndarray(shape, np.uint8, handle.block.buf, ready.slot * self.slot_bytes).copy()
        try:
            handle.conn.send(SlotFree(ready.slot))
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died after sending; the rows are intact and its death is seen on the next read
        return RowChunk(ready.video, ready.size, pixels, ready.timestamps, ready.indices, ready.ranges, ready.centres)

    def _replace(self, handle: _Handle, reason: str | None = None) -> Iterator[PoolMessage]:
        """A worker died (or was stopped for ``reason``): fail the video it held, start a replacement on the same
        slots, go on."""
        handle.process.join(timeout=5)
        video, exitcode = handle.video, handle.process.exitcode
        handle.conn.close()
        if not handle.ready:
            raise DecodePoolError(
                f"a decode worker process could not start (exit status {exitcode}; its error is printed above). "
                "When calling vidfeat from your own script, put the call under `if __name__ == '__main__':` - "
                "the workers are spawned, and spawning re-imports the main module")
        self.restarts += 1
        self._start(handle)
        self._assign(handle)
        if video is not None:
            yield VideoFailed(video, reason or death_reason(exitcode))

    def close(self) -> None:
        """Stop every worker and free the shared memory; safe to call twice."""
        for handle in self.handles:
            if handle.conn is not None and not handle.conn.closed:
                try:
                    handle.conn.send(None)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass
        for handle in self.handles:
            if handle.process is not None and handle.process.pid is not None:
                handle.process.join(timeout=2)
                if handle.process.is_alive():
                    handle.process.kill()
                    handle.process.join()
            if handle.conn is not None:
                handle.conn.close()
            handle.block.close()
            handle.block.unlink()
        self.handles = []

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
