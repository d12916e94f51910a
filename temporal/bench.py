"""Training throughput of every head on a synthetic HMDB51-size cache, and how fast the cache reads (``make bench-train``).

Builds a random float16 store (6,766 videos x 64 steps x 2048 dims by default) in a temporary directory and
times reading all of its features into memory against the same features as per-video ``.npy`` files in
video_features' layout (``<video>_<type>.npy``, written by ``vidfeat features export``), both from a cold page
cache (the files' pages are dropped with ``posix_fadvise``) and warm. Then it loads fold 1's training split and
times full training epochs per head (the first epoch is a warm-up; the table shows the mean of the following
ones; ``CPU s`` is the process CPU time per epoch, which other work on a shared machine disturbs less than
the wall time). ``logreg`` is timed as one scikit-learn fit (pooling included) with a fixed C. Region heads
(``gcn``) train on a second synthetic cache with regions (``--region-steps`` steps x ``--rois`` regions of
``--dim`` dims), spatial heads (``timesformer``, ``eco``) on a third with an S x S grid per row
(``--spatial-steps`` steps x ``--grid``\ :sup:`2` cells of ``--spatial-dim`` dims, lite0-like by default). The
features carry no signal: this measures speed, not accuracy.

Each row also shows the figures measured before training got faster (:data:`BEFORE`: main at 33b63ac, on this
project's 2-core AVX512-BF16 machine while it was quiet, same caches and settings), and the speed-up in sequences/s against them.
Training runs under bfloat16 autocast where the CPU has native bf16 (``amp``); ``--no-amp`` trains in float32, the
precision of those earlier figures, to see that part of the gain live.

    python -m vidfeat.temporal.bench [--videos N] [--steps T] [--dim D] [--heads mean,lstm,...] [--skip-read]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidfeat.features import SequenceSource, open_store
from vidfeat.features.interop import export_features
from vidfeat.temporal.data import RegionSource, SequenceDataset, SpatialSource, class_indices, fold_split
from vidfeat.temporal.heads import create_head, list_heads, uses_regions, uses_spatial
from vidfeat.temporal.logreg import fit_logreg
from vidfeat.temporal.synthetic import write_random_store
from vidfeat.temporal.training import TrainConfig, autocast_dtype, count_parameters, default_device, train

BEFORE_VIDEOS = 4488  # fold 1's training split of the default cache, on which BEFORE was measured
BEFORE = {"mean": 1.23, "logreg": 7.0, "lstm": 8.1, "tcn": 10.8, "transformer": 9.3, "gcn": 10.8,
          "timesformer": 24.9, "eco": 10.9}
"""Epoch seconds (logreg: one fit) per head before the speed work (main at 33b63ac), measured earlier with this
bench's defaults on the project's 2-core AVX512-BF16 machine while it was quiet; slowfast was not measured then."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vidfeat.temporal.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=6766)
    parser.add_argument("--steps", type=int, default=64, help="cached steps per video")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=51)
    parser.add_argument("--heads", default=",".join(list_heads()), help="comma-separated head names")
    parser.add_argument("--region-steps", type=int, default=16, help="steps per video of the region cache (gcn)")
    parser.add_argument("--rois", type=int, default=4, help="regions per step of the region cache (gcn)")
    parser.add_argument("--spatial-steps", type=int, default=16, help="steps per video of the spatial cache")
    parser.add_argument("--grid", type=int, default=4, help="grid size S of the spatial cache (timesformer, eco)")
    parser.add_argument("--spatial-dim", type=int, default=1280, help="grid cell depth of the spatial cache")
    parser.add_argument("--segments", type=int, default=8, help="TSN segments K sampled per video")
    parser.add_argument("--sample-mode", default="segments", choices=("segments", "window", "all"))
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per head, the first is a warm-up")
    parser.add_argument("--skip-read", action="store_true", help="leave out the store vs .npy read comparison")
    parser.add_argument("--no-amp", action="store_true", help="train in float32 (no bfloat16 autocast on the CPU)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the caches (default: a temp dir)")
    return parser.parse_args(argv)


def _evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache, so the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_comparison(store_path: Path, tmp: Path) -> None:
    """Seconds to read every video's features into memory: our store (one bulk read) vs one .npy per video."""
    start = time.perf_counter()
    npy_dir = tmp / "npy"
    export_features(store_path, npy_dir, feature_type="resnet")
    files = sorted(npy_dir.glob("*_resnet.npy"))
    print(f"  exported as {len(files)} per-video .npy files (video_features' layout) in "
          f"{time.perf_counter() - start:.1f} s")
    store_files = [p for p in store_path.parent.glob(store_path.name + "*") if p.is_file()]
    for cache in ("cold", "warm"):
        timings = {}
        for name, read, paths in (
            ("store", lambda: _read_store(store_path), store_files),
            (".npy files", lambda: [np.load(p) for p in files], files),
        ):
            if cache == "cold":
                _evict(paths)
            start = time.perf_counter()
            read()
            timings[name] = time.perf_counter() - start
        print(f"  read all features, {cache} page cache: store {timings['store']:.2f} s, per-video .npy "
              f"{timings['.npy files']:.2f} s ({timings['.npy files'] / timings['store']:.1f}x)")


def _read_store(path: Path) -> None:
    """``load_rows`` memory-maps the features; touching a byte of every page makes sure all of them are read."""
    with open_store(path) as store:
        store.load_rows().data.reshape(-1).view(np.uint8)[::4096].max()


def _bench_head(name: str, dataset: SequenceDataset, classes: int, args, device) -> dict:
    torch.manual_seed(0)
    if name == "logreg":
        sequences = [dataset.source.get(i) for i in range(len(dataset))]
        start = time.perf_counter()
        model, _ = fit_logreg(sequences, np.asarray(dataset.labels), classes, C=1.0, max_iter=100)
        seconds = time.perf_counter() - start
        note = "one fit (100 lbfgs iterations)"
        return {"head": name, "params": count_parameters(model), "epoch_s": seconds, "cpu_s": float("nan"), "note": note}
    cache = _cache_of(name, args)
    options = {"roi_dim": cache.dim} if uses_regions(name) else {}
    if uses_spatial(name):
        options = {"spatial_dim": cache.dim, "grid": cache.grid}
    model = create_head(name, cache.dim, classes, **options)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=0, amp=not args.no_amp)
    cpu = time.process_time()
    result = train(model, dataset, None, config, device=device, progress=False)
    cpu_s = (time.process_time() - cpu) / args.epochs
    ends = [row["time_s"] for row in result.history]
    epoch_times = np.diff(ends) if len(ends) > 1 else np.array(ends)
    return {"head": name, "params": count_parameters(model), "epoch_s": float(epoch_times.mean()), "cpu_s": cpu_s,
            "note": cache.note}


def _row(row: dict, videos: int) -> str:
    """One table line: the measured figures, then those of :data:`BEFORE` (where there are any)."""
    before = BEFORE.get(row["head"])
    rate, then_rate = videos / row["epoch_s"], BEFORE_VIDEOS / before if before else 0.0
    then = (f"{before:>9.2f} {then_rate:>9.0f} {rate / then_rate:>8.1f}x" if before
            else f"{'-':>9} {'-':>9} {'-':>9}")
    return (f"{row['head']:<12} {row['params']:>10,} {row['epoch_s']:>9.2f} {rate:>9.0f} "
            f"{row['cpu_s']:>7.2f}   {then}  {row['note']}")


@dataclass(frozen=True)
class Cache:
    """One synthetic cache the heads train on: frame features only, or with regions or a spatial grid."""

    name: str
    steps: int
    dim: int
    rois: int = 0
    grid: int | None = None

    @property
    def note(self) -> str:
        if self.rois:
            return f"{self.steps}-step region cache, {self.rois} RoIs/step"
        if self.grid:
            return f"{self.steps}-step {self.grid}x{self.grid} spatial cache, {self.dim}-d cells"
        return ""


def _cache_of(head: str, args) -> Cache:
    if uses_regions(head):
        return Cache("regions", args.region_steps, args.dim, rois=args.rois)
    if uses_spatial(head):
        return Cache("spatial", args.spatial_steps, args.spatial_dim, grid=args.grid)
    return Cache("frames", args.steps, args.dim)


def _training_set(path: Path, args, cache: Cache) -> SequenceDataset:
    with open_store(path) as store:
        keys = fold_split(store, 1, val_fraction=0.0).train
        labels = class_indices(store, keys)
    start = time.perf_counter()
    source = SequenceSource.from_store(path, keys, in_memory=True)
    regions = RegionSource.from_store(path, keys, in_memory=True) if cache.rois else None
    spatial = SpatialSource.from_store(path, keys, in_memory=True) if cache.grid else None
    print(f"  fold-1 train split ({len(keys)} videos) loaded (memory-mapped) in {time.perf_counter() - start:.1f} s")
    return SequenceDataset(source, labels, segments=args.segments, mode=args.sample_mode, train=True,
                           regions=regions, spatial=spatial)


def _write_cache(path: Path, args, cache: Cache) -> None:
    per_step = cache.dim * (1 + cache.rois + (cache.grid or 0) ** 2)
    size_gb = args.videos * cache.steps * per_step * 2 / 1e9
    what = f" + {cache.rois} RoIs/step" if cache.rois else f" + {cache.grid}x{cache.grid} grid" if cache.grid else ""
    print(f"writing a synthetic cache: {args.videos} videos x {cache.steps} steps x {cache.dim} dims{what} fp16 "
          f"({size_gb:.2f} GB)")
    start = time.perf_counter()
    write_random_store(path, videos=args.videos, steps=cache.steps, dim=cache.dim, classes=args.classes,
                       rois=cache.rois, grid=cache.grid)
    print(f"  written in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    device = torch.device(args.device) if args.device else default_device()
    heads = [h.strip() for h in args.heads.split(",")]
    precision = autocast_dtype(device, not args.no_amp) or torch.float32
    print(f"device {device}, {torch.get_num_threads()} CPU threads "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
          f"sampling {args.sample_mode} K={args.segments}, batch {args.batch_size}, training in "
          f"{str(precision).removeprefix('torch.')}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        caches: dict[Cache, list[str]] = {}
        for name in heads:
            caches.setdefault(_cache_of(name, args), []).append(name)
        for cache, names in caches.items():
            path = Path(tmp) / f"{cache.name}.h5"
            _write_cache(path, args, cache)
            if cache.name == "frames" and not args.skip_read:
                _read_comparison(path, Path(tmp))
            dataset = _training_set(path, args, cache)
            print(f"\n{'':<34}{'now':<26}{'before (main 33b63ac, quiet)':<30}")
            print(f"{'head':<12} {'params':>10} {'epoch s':>9} {'seq/s':>9} {'CPU s':>7}   {'epoch s':>9} {'seq/s':>9} "
                  f"{'speed-up':>9}  note")
            for name in names:
                row = _bench_head(name, dataset, args.classes, args, device)
                print(_row(row, len(dataset)), flush=True)
            path.unlink()
            print()

if __name__ == "__main__":
    main()
