"""Synthetic feature stores: order-only ramps and fast events for tests and demos, random caches for benchmarks.

``ramp`` stores make classes that differ *only* in temporal order: every video is a monotone ramp
along a fixed direction ``u`` plus noise, rising for ``up`` and falling for ``down``. The set of
feature values (and so their mean and std) has the same distribution for both classes, so
order-blind heads (``mean``, ``logreg``) stay at chance while sequence heads can read the direction.

``fast_event`` stores are the cached-feature twin of the ``fast_event`` video dataset
(:mod:`vidfeat.pipelines.motion`): a slowly drifting sequence with a two-step event, ``a`` then ``b`` or ``b``
then ``a``, at a time that every ``alpha``-th step never sees.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vidfeat.features import VideoRecord, write_store

RAMP_CLASSES = ["down", "up"]
EVENT_CLASSES = ["a_then_b", "b_then_a"]


def _splits(index: int, n_classes: int, n_folds: int) -> tuple[str, ...]:
    """Videos cycle through the classes; fold f tests every n_folds-th round of that cycle (a quarter with a
    single fold), so every split holds every class equally."""
    round_ = index // n_classes
    if n_folds == 1:
        return ("test" if round_ % 4 == 0 else "train",)
    return tuple("test" if round_ % n_folds == fold else "train" for fold in range(n_folds))


def synthetic_provenance(dim: int, classes: list[str], n_folds: int, dtype: str, name: str) -> dict:
    """Provenance of a synthetic store, shaped like an extracted one."""
    return {
        "kind": "frame",
        "backbone": "synthetic",
        "weights": "none",
        "feature_dim": dim,
        "dtype": dtype,
        "preprocessing": {},
        "sampling": {"mode": "all"},
        "dataset": {"name": name, "n_folds": n_folds, "classes": classes},
        "classes": classes,
        "n_folds": n_folds,
    }


def write_ramp_store(
    path: str | os.PathLike,
    *,
    videos: int = 96,
    dim: int = 16,
    min_steps: int = 12,
    max_steps: int = 24,
    noise: float = 0.3,
    n_folds: int = 1,
    seed: int = 0,
) -> Path:
    """Order-only two-class store (``up``/``down`` ramps of varying length); returns ``path``."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    records = []
    for i in range(videos):
        label = RAMP_CLASSES[i % 2]
        steps = int(rng.integers(min_steps, max_steps + 1))
        ramp = np.linspace(-1.0, 1.0, steps)
        if label == "down":
            ramp = ramp[::-1]
        feats = ramp[:, None] * u[None, :] * 2.0 + noise * rng.standard_normal((steps, dim))
        records.append(
            VideoRecord(
                key=f"{label}/v{i:04d}",
                features=feats.astype(np.float32),
                timestamps=np.arange(steps) / 10.0,
                frame_indices=np.arange(steps, dtype=np.int64),
                label=label,
                splits=_splits(i, len(RAMP_CLASSES), n_folds),
            )
        )
    write_store(path, records, synthetic_provenance(dim, RAMP_CLASSES, n_folds, "float32", "ramp"))
    return Path(path)


def write_random_store(
    path: str | os.PathLike,
    *,
    videos: int = 6766,
    steps: int = 64,
    dim: int = 2048,
    classes: int = 51,
    rois: int = 0,
    seed: int = 0,
    grid: int | None = None,
) -> Path:
    """A float16 cache of HMDB51 size (by default) with random features and 3 folds, for throughput
    benchmarks; the values carry no signal. ``rois`` > 0 adds that many random ``dim``-d regions per step, and
    ``grid`` S a random ``dim``-deep S x S spatial grid per row."""
    rng = np.random.default_rng(seed)
    names = [f"class{c:02d}" for c in range(classes)]
    records = (_random_record(rng, f"{names[i % classes]}/v{i:05d}", names[i % classes], _splits(i, classes, 3),
                              steps, dim, rois, grid) for i in range(videos))
    provenance = synthetic_provenance(dim, names, 3, "float16", "random")
    if rois:
        provenance["rois"] = {"source": "synthetic", "max_rois": rois, "feature_dim": dim}
    if grid:
        provenance["spatial"] = {"grid": grid, "cells": grid * grid, "layer": "last", "feature_dim": dim,
                                 "pooling": "random (synthetic)"}
    write_store(path, records, provenance)
    return Path(path)


def _random_record(
    rng, key: str, label: str, splits: tuple, steps: int, dim: int, rois: int, grid: int | None
) -> VideoRecord:
    regions = {}
    if rois:
        corner = rng.uniform(0, 0.5, (steps, rois, 2)).astype(np.float32)
        regions = {
            "roi_features": rng.standard_normal((steps, rois, dim), dtype=np.float32).astype(np.float16),
            "boxes": np.concatenate([corner, corner + rng.uniform(0.1, 0.5, (steps, rois, 2))], -1).astype(np.float32),
            "roi_mask": np.ones((steps, rois), dtype=bool),
        }
    return VideoRecord(
        key=key,
        features=rng.standard_normal((steps, dim), dtype=np.float32).astype(np.float16),
        timestamps=np.arange(steps) / 25.0,
        frame_indices=np.arange(steps, dtype=np.int64),
        label=label,
        splits=splits,
        spatial=rng.standard_normal((steps, grid * grid, dim), dtype=np.float32).astype(np.float16) if grid else None,
        **regions,
    )


def write_fast_event_store(
    path: str | os.PathLike, *, videos: int = 160, steps: int = 16, dim: int = 16, alpha: int = 4,
    noise: float = 0.3, strength: float = 3.0, seed: int = 0,
) -> Path:
    """Two classes told apart only by the order of two consecutive steps; returns ``path``.

    Each pair of videos shares a slow drift (a random start plus a slow ramp, plus noise) and an event time ``t``
    with neither ``t`` nor ``t + 1`` a multiple of ``alpha``; ``a_then_b`` adds the event vector ``a`` at step
    ``t`` and ``b`` at ``t + 1`` (``strength`` times a standard normal vector each), ``b_then_a`` the other way
    round. Every ``alpha``-th step is the same in both
    videos of a pair, so SlowFast's slow-only ablation is exactly at chance; ``videos`` must be even."""
    rng = np.random.default_rng(seed)
    events = strength * rng.standard_normal((2, dim))
    starts = [t for t in range(steps - 1) if t % alpha and (t + 1) % alpha]
    records = []
    for pair in range(videos // 2):
        drift = rng.standard_normal(dim) + np.linspace(0, 1, steps)[:, None] * rng.standard_normal(dim)
        slow = drift + noise * rng.standard_normal((steps, dim))
        t = int(rng.choice(starts))
        for label, (first, second) in zip(EVENT_CLASSES, (events, events[::-1])):
            feats = slow.copy()
            feats[t] += first
            feats[t + 1] += second
            records.append(VideoRecord(
                key=f"{label}/v{pair:04d}", features=feats.astype(np.float32), timestamps=np.arange(steps) / 8.0,
                frame_indices=np.arange(steps, dtype=np.int64), label=label,
                splits=_splits(2 * pair, len(EVENT_CLASSES), 1),
            ))
    write_store(path, records, synthetic_provenance(dim, EVENT_CLASSES, 1, "float32", "fast_event"))
    return Path(path)
