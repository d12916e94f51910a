"""Training throughput of every head on a synthetic HMDB51-size cache (``make bench-train``).

Builds a random float16 store (6,766 videos x 64 steps x 2048 dims by default) in a temporary
directory, loads fold 1's training split into memory and times full training epochs per head
(the first epoch is a warm-up; the table shows the mean of the following ones). ``logreg`` is timed
as one scikit-learn fit (pooling included) with a fixed C. The features carry no signal: this
measures speed, not accuracy.

    python -m vidfeat.temporal.bench [--videos N] [--steps T] [--dim D] [--heads mean,lstm,...]
    python -m vidfeat.temporal.bench --spatial 4 --steps 16 --dim 1280 --heads timesformer,eco   # spatial heads
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vidfeat.features import SequenceSource, open_store
from vidfeat.temporal.data import SequenceDataset, SpatialSource, class_indices, fold_split
from vidfeat.temporal.heads import create_head, list_heads, uses_regions, uses_spatial
from vidfeat.temporal.logreg import fit_logreg
from vidfeat.temporal.synthetic import write_random_store
from vidfeat.temporal.training import TrainConfig, count_parameters, default_device, train


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vidfeat.temporal.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=6766)
    parser.add_argument("--steps", type=int, default=64, help="cached steps per video")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=51)
    parser.add_argument(
        "--heads",
        default=",".join(h for h in list_heads() if not uses_regions(h) and not uses_spatial(h)),
        help="comma-separated head names (region heads need a store with RoIs, spatial heads --spatial)",
    )
    parser.add_argument("--spatial", type=int, default=None, metavar="S",
                        help="also write a random S x S grid per row (dim-deep), for the spatial heads")
    parser.add_argument("--segments", type=int, default=8, help="TSN segments K sampled per video")
    parser.add_argument("--sample-mode", default="segments", choices=("segments", "window", "all"))
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per head, the first is a warm-up")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the cache (default: a temp dir)")
    return parser.parse_args(argv)


def _bench_head(name: str, dataset: SequenceDataset, classes: int, dim: int, args, device) -> dict:
    torch.manual_seed(0)
    if name == "logreg":
        sequences = [dataset.source.get(i) for i in range(len(dataset))]
        start = time.perf_counter()
        model, _ = fit_logreg(sequences, np.asarray(dataset.labels), classes, C=1.0, max_iter=100)
        seconds = time.perf_counter() - start
        note = "one fit (100 lbfgs iterations)"
        return {"head": name, "params": count_parameters(model), "epoch_s": seconds, "note": note}
    grid = {"spatial_dim": dim, "grid": args.spatial} if uses_spatial(name) else {}
    model = create_head(name, dim, classes, **grid)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=0)
    result = train(model, dataset, None, config, device=device, progress=False)
    ends = [row["time_s"] for row in result.history]
    epoch_times = np.diff(ends) if len(ends) > 1 else np.array(ends)
    return {"head": name, "params": count_parameters(model), "epoch_s": float(epoch_times.mean()), "note": ""}


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    device = torch.device(args.device) if args.device else default_device()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.h5"
        size_gb = args.videos * args.steps * args.dim * 2 * (1 + (args.spatial or 0) ** 2) / 1e9
        print(
            f"writing a synthetic cache: {args.videos} videos x {args.steps} steps x {args.dim} dims fp16 "
            f"({size_gb:.2f} GB)"
        )
        start = time.perf_counter()
        write_random_store(path, videos=args.videos, steps=args.steps, dim=args.dim, classes=args.classes,
                           grid=args.spatial)
        print(f"  written in {time.perf_counter() - start:.1f} s")
        with open_store(path) as store:
            keys = fold_split(store, 1, val_fraction=0.0).train
            labels = class_indices(store, keys)
        start = time.perf_counter()
        source = SequenceSource.from_store(path, keys, in_memory=True)
        print(f"  fold-1 train split ({len(keys)} videos) loaded into memory in {time.perf_counter() - start:.1f} s")
        dataset = SequenceDataset(source, labels, segments=args.segments, mode=args.sample_mode, train=True)
        spatial = SpatialSource.from_store(path, keys, in_memory=True) if args.spatial else None
        spatial_dataset = SequenceDataset(source, labels, segments=args.segments, mode=args.sample_mode,
                                          train=True, spatial=spatial)
        print(
            f"device {device}, {torch.get_num_threads()} CPU threads "
            f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
            f"sampling {args.sample_mode} K={args.segments}, batch {args.batch_size}\n"
        )
        print(f"{'head':<12} {'params':>10} {'epoch s':>9} {'seq/s':>9}  note")
        for name in args.heads.split(","):
            head_data = spatial_dataset if uses_spatial(name.strip()) else dataset
            row = _bench_head(name.strip(), head_data, args.classes, args.dim, args, device)
            rate = len(dataset) / row["epoch_s"]
            line = f"{row['head']:<12} {row['params']:>10,} {row['epoch_s']:>9.2f} {rate:>9.0f}  {row['note']}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
