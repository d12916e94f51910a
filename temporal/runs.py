"""Run directories: train a head on a feature store, re-score it, load it for prediction, compare runs.

A run directory holds everything needed to reproduce and reuse a trained head::

    config.json      head + options, sampling, training options, seed, fold and split sizes, and the
                     store's path, full provenance and provenance hash
    model.pt         the head's state_dict (load with ``torch.load(..., weights_only=True)``)
    train_log.csv    one row per epoch (logreg: one row per C tried)
    curves.png       loss / accuracy curves (logreg: validation accuracy per C)
    confusion.png    test confusion matrix
    metrics.json     test top1, top5, mean_class_accuracy, per_class, confusion, params, train time

``logreg`` is fitted by scikit-learn but saved as a ``LogRegHead`` state_dict like the other heads,
so no pickle is ever loaded. Fold ``all`` writes one run per fold under ``fold<N>/`` plus
``summary.json`` with the mean and standard deviation over folds (the published protocol).
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from vidfeat.features import (
    FeatureStore, ProvenanceMismatch, SequenceSource, StorePath, fits_in_memory, open_store, select_keys,
)
from vidfeat.features.store import IDENTITY_FIELDS
from vidfeat.temporal.data import (
    Regions,
    RegionSource,
    RowArrays,
    SequenceDataset,
    SpatialSource,
    class_indices,
    fold_split,
    require_regions,
    require_spatial,
    resolve_store_path,
)
from vidfeat.temporal.heads import create_head, resolve_options, training_defaults, uses_regions, uses_spatial
from vidfeat.temporal.logreg import fit_logreg
from vidfeat.temporal.sampling import check_sampling
from vidfeat.temporal.training import (
    TrainConfig,
    count_parameters,
    default_device,
    evaluate,
    predict_proba,
    train,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONFIG, CHECKPOINT, LOG, CURVES, CONFUSION, METRICS, SUMMARY = (
    "config.json", "model.pt", "train_log.csv", "curves.png", "confusion.png", "metrics.json", "summary.json",
)
RUN_FORMAT = 1
# What a feature *means*: a head trained on one representation is meaningless on another. dtype (fp16 vs
# fp32 copies of the same features), the dataset's root and fold layout may differ; the classes are checked
# separately.
REPRESENTATION_FIELDS = tuple(f for f in IDENTITY_FIELDS if f not in ("dtype", "dataset", "classes", "n_folds"))
SUMMARY_METRICS = ("top1", "top5", "mean_class_accuracy")


class RunError(RuntimeError):
    """A run directory is missing, incomplete or would be overwritten."""


def _jsonable(value: object) -> object:
    """HDF5 attributes can come back as numpy arrays/scalars; store them as plain JSON."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _json_dump(data: dict, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(
            f"{path.parent} is not a run directory (no {path.name}); pass a directory written by train-temporal"
        ) from None


def _refuse_existing(out_dir: Path) -> None:
    """A finished run (config.json is written last) or fold summary is never overwritten."""
    if (out_dir / CONFIG).exists() or (out_dir / SUMMARY).exists():
        raise RunError(f"{out_dir} already holds a run; choose another output directory or delete it first")


def _software() -> dict:
    return {name: version(name) for name in ("vidfeat", "torch", "numpy", "scikit-learn")}


def _figure(size: tuple[float, float]) -> Figure:
    """A figure without pyplot; matplotlib is imported here because importing it costs every command ~0.6 s."""
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def _plot_curves(history: list[dict], path: Path, head: str) -> None:
    fig = _figure((9, 3.5))
    if head == "logreg":
        ax = fig.subplots()
        ax.semilogx([r["C"] for r in history], [r["val_acc"] for r in history], "o-")
        ax.set(xlabel="C (inverse regularisation)", ylabel="validation accuracy", title="logreg: C selection")
    else:
        ax_loss, ax_acc = fig.subplots(1, 2)
        epochs = [r["epoch"] for r in history]
        for ax, metric, label in ((ax_loss, "loss", "loss"), (ax_acc, "acc", "accuracy")):
            ax.plot(epochs, [r[f"train_{metric}"] for r in history], label="train")
            ax.plot(epochs, [r[f"val_{metric}"] for r in history], label="validation")
            ax.set(xlabel="epoch", ylabel=label, title=f"{head}: {label}")
            ax.legend()
    fig.savefig(path, dpi=100)


def _plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    n = len(classes)
    size = min(4 + 0.25 * n, 20)
    fig = _figure((size, size))
    ax = fig.subplots()
    matrix = np.asarray(confusion, dtype=float)
    fraction = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    fontsize = max(4, 10 - n // 8)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), classes, fontsize=fontsize)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    colour = "white" if fraction[i, j] > 0.5 else "black"
                    ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=fontsize, color=colour)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class")
    fig.savefig(path, dpi=100)


def _write_log(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _dataset(
    source: SequenceSource,
    labels: dict[str, int],
    keys: list[str],
    sampling: dict,
    train: bool,
    seed: int,
    regions: RegionSource | None = None,
    spatial: SpatialSource | None = None,
) -> SequenceDataset:
    return SequenceDataset(
        source.subset(keys),
        [labels[k] for k in keys],
        segments=sampling["segments"],
        mode=sampling["mode"],
        train=train,
        seed=seed,
        num_clips=1 if train else sampling["eval_clips"],
        regions=regions.subset(keys) if regions is not None else None,
        spatial=spatial.subset(keys) if spatial is not None else None,
    )


def _region_options(store: FeatureStore, head: str, options: dict, config: TrainConfig) -> dict:
    """A region head's options completed with the store's RoI feature size; refuses stores without RoIs."""
    rois = require_regions(store, head)
    roi_dim = int(rois["feature_dim"])
    if options.get("roi_dim") not in (None, roi_dim):
        raise ValueError(f"roi_dim={options['roi_dim']} was given, but the store's region features are {roi_dim}-d")
    if config.mixup > 0:
        raise ValueError(f"mixup mixes frame features only, not regions; train {head!r} with mixup 0")
    return {**options, "roi_dim": roi_dim}


def _spatial_options(store: FeatureStore, head: str, options: dict, config: TrainConfig) -> dict:
    """A spatial head's options completed with the store's grid size and depth; refuses stores without a grid."""
    spatial = require_spatial(store, head)
    recorded = {"spatial_dim": int(spatial["feature_dim"]), "grid": int(spatial["grid"])}
    for name, value in recorded.items():
        if options.get(name) not in (None, value):
            raise ValueError(f"{name}={options[name]} was given, but the store's spatial grid has {name}={value}")
    if config.mixup > 0:
        raise ValueError(f"mixup mixes frame features only, not spatial grids; train {head!r} with mixup 0")
    return {**options, **recorded}


def _extra_sources(
    path: StorePath, head: str, keys: list[str], in_memory: bool | None
) -> tuple[SequenceSource, RegionSource | None, SpatialSource | None]:
    """The sequences plus the regions or grid the head reads, all loaded or all streamed: together they must fit
    in memory (:func:`~vidfeat.features.fits_in_memory`), else every part is read from disk on demand."""
    extras: list[type[RowArrays]] = [kind for kind, wanted in ((RegionSource, uses_regions(head)),
                                                               (SpatialSource, uses_spatial(head))) if wanted]
    if in_memory is None:
        with open_store(path) as store:
            datasets = ("features", *(name for kind in extras for name in kind.datasets))
            in_memory = fits_in_memory(store, keys, datasets)
    source = SequenceSource.from_store(path, keys, in_memory)
    loaded = {kind: kind.from_store(path, keys, in_memory, head) for kind in extras}
    return source, loaded.get(RegionSource), loaded.get(SpatialSource)


def train_run(
    features_path: StorePath,
    head: str,
    out_dir: str | Path,
    *,
    fold: int = 1,
    segments: int = 8,
    sample_mode: str = "segments",
    eval_clips: int = 1,
    epochs: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    train_options: dict | None = None,
    in_memory: bool | None = None,
    device: str | None = None,
    progress: bool = True,
    **head_options,
) -> dict:
    """Train ``head`` on fold ``fold`` of the store, score it on the test split and write a run directory.

    ``train_options`` overrides :class:`TrainConfig` fields (lr, batch_size, mixup, ...), on top of the head's
    own recipe (:func:`~vidfeat.temporal.heads.training_defaults`, e.g. gcn's higher lr); ``epochs`` and
    ``seed`` are shortcuts for the common ones. ``logreg`` always pools every step of a video (sampling
    mode ``all``). Returns the comparison row (see :func:`compare_runs`).
    """
    out_dir = Path(out_dir)
    config = TrainConfig.from_options({**training_defaults(head), **(train_options or {})})
    config.seed = seed
    if epochs is not None:
        config.epochs = epochs
    options = resolve_options(head, head_options)
    sampling = {"mode": "all" if head == "logreg" else sample_mode, "segments": segments, "eval_clips": eval_clips}
    check_sampling(sampling["mode"], segments, eval_clips)
    device = torch.device(device) if device else default_device()
    _refuse_existing(out_dir)

    with open_store(features_path) as store:
        split = fold_split(store, fold, val_fraction, seed)
        classes, input_dim, provenance = store.classes, store.feature_dim, dict(store.attrs)
        provenance_hash = store.provenance_hash
        keys = split.train + split.val + split.test
        labels = dict(zip(keys, class_indices(store, keys)))
        if uses_regions(head):
            options = _region_options(store, head, options, config)
        if uses_spatial(head):
            options = _spatial_options(store, head, options, config)
    source, regions, spatial = _extra_sources(features_path, head, keys, in_memory)
    train_set = _dataset(source, labels, split.train, sampling, True, seed, regions, spatial)
    val_set = _dataset(source, labels, split.val, sampling, False, seed, regions, spatial) if split.val else None
    test_set = _dataset(source, labels, split.test, sampling, False, seed, regions, spatial)

    torch.manual_seed(seed)
    started = time.perf_counter()
    if head == "logreg":
        model, report = fit_logreg(
            [train_set.source.get(i) for i in range(len(train_set))],
            np.asarray(train_set.labels),
            len(classes),
            val_sequences=[val_set.source.get(i) for i in range(len(val_set))] if val_set else None,
            val_labels=np.asarray(val_set.labels) if val_set else None,
            C=options["C"],
            max_iter=options["max_iter"],
            seed=seed,
        )
        history = [{"C": float(c), "val_acc": acc} for c, acc in report["val_accuracy_by_C"].items()] or [
            {"C": report["C"], "val_acc": float("nan")}
        ]
        training = {"seed": seed, "fit": report}
        best_epoch, stopped_early = 0, False
    else:
        model = create_head(head, input_dim, len(classes), **options)
        result = train(model, train_set, val_set, config, device=device, progress=progress)
        history, best_epoch, stopped_early = result.history, result.best_epoch, result.stopped_early
        training = asdict(config)
    train_time = time.perf_counter() - started
    metrics = evaluate(model, test_set, classes, device=device)

    run_config = {
        "format": RUN_FORMAT,
        "head": head,
        "head_options": options,
        "input_dim": input_dim,
        "num_classes": len(classes),
        "classes": classes,
        "fold": fold,
        "sampling": sampling,
        "training": training,
        "seed": seed,
        "val_fraction": val_fraction,
        "val_source": split.val_source,
        "split_sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)},
        "features": {
            "path": resolve_store_path(features_path),
            "provenance": provenance,
            "provenance_hash": provenance_hash,
        },
        "software": _software(),
        "device": str(device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": CHECKPOINT,
    }
    params = count_parameters(model)
    metrics.update(
        split="test",
        fold=fold,
        head=head,
        params=params,
        train_time_s=train_time,
        best_epoch=best_epoch,
        stopped_early=stopped_early,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / CHECKPOINT)
    _write_log(history, out_dir / LOG)
    _plot_curves(history, out_dir / CURVES, head)
    title = f"{head}, fold {fold}: top-1 {metrics['top1']:.3f}"
    _plot_confusion(metrics["confusion"], classes, out_dir / CONFUSION, title)
    _json_dump(metrics, out_dir / METRICS)
    _json_dump(run_config, out_dir / CONFIG)
    return _row(out_dir, run_config, metrics)


def train_folds(
    features_path: StorePath,
    head: str,
    out_dir: str | Path,
    *,
    folds: Sequence[int] | None = None,
    **kwargs,
) -> dict:
    """Run :func:`train_run` on every fold (or ``folds``) into ``out_dir/fold<N>`` and write ``summary.json``
    with per-fold rows and mean ± std (sample std over folds) of top1, top5 and mean class accuracy."""
    out_dir = Path(out_dir)
    if folds is None:
        with open_store(features_path) as store:
            folds = list(range(1, store.n_folds + 1))
        if not folds:
            raise ValueError("this store has no folds (n_folds=0); fold 'all' needs a dataset with official splits")
    _refuse_existing(out_dir)
    rows = [train_run(features_path, head, out_dir / f"fold{fold}", fold=fold, **kwargs) for fold in folds]
    summary = {
        "head": head,
        "folds": rows,
        "mean": {m: float(np.mean([r[m] for r in rows])) for m in SUMMARY_METRICS},
        "std": {m: float(np.std([r[m] for r in rows], ddof=1)) if len(rows) > 1 else 0.0 for m in SUMMARY_METRICS},
        "params": rows[0]["params"],
        "train_time_s": float(sum(r["train_time_s"] for r in rows)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    _json_dump(summary, out_dir / SUMMARY)
    return summary


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained head (eval mode) and the run's config, e.g. for ``predict``."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / CONFIG)
    if config.get("format") != RUN_FORMAT:
        raise RunError(f"{run_dir} has run format {config.get('format')}; this vidfeat reads format {RUN_FORMAT}")
    model = create_head(config["head"], config["input_dim"], config["num_classes"], **config["head_options"])
    checkpoint = run_dir / config["checkpoint"]
    if not checkpoint.exists():
        raise RunError(f"{checkpoint} is missing; the run directory is incomplete, train it again")
    model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    return model.to(device).eval(), config


def check_provenance(config: dict, provenance: dict, classes: list[str] | None, store_label: str) -> None:
    """Refuse features that mean something else than what the run was trained on, naming each differing field.
    ``classes``: the store's class list, or None for a store of unlabelled videos (predict's)."""
    trained = config["features"]["provenance"]
    diffs = [
        f"  {name}: run {json.dumps(trained.get(name))} vs store {json.dumps(provenance.get(name))}"
        for name in REPRESENTATION_FIELDS
        if trained.get(name) != provenance.get(name)
    ]
    if classes is not None and classes != config["classes"]:
        diffs.append(
            f"  classes: run has {len(config['classes'])} ({config['classes'][:5]}...) "
            f"vs store {len(classes)} ({classes[:5]}...)"
        )
    if diffs:
        raise ProvenanceMismatch(
            f"{store_label} does not hold the features this run was trained on:\n" + "\n".join(diffs)
            + f"\nEvaluate with the run's store ({config['features']['path']}) or extract one with the same "
            "backbone, weights, preprocessing and sampling."
        )


def evaluate_run(
    run_dir: str | Path, features_path: StorePath | None = None, *, device: str | None = None
) -> dict:
    """Re-score a run on the test split of its fold, from the recorded store or ``features_path``.

    Raises ``ProvenanceMismatch`` when that store was made with another backbone, weights, feature
    dimension, preprocessing or sampling, or has other classes.
    """
    device = torch.device(device) if device else default_device()
    model, config = load_run(run_dir, device)
    path = features_path if features_path is not None else config["features"]["path"]
    with open_store(path) as store:
        check_provenance(config, dict(store.attrs), store.classes, f"store {path}")
        test_keys = select_keys(store, "test", config["fold"])
        if not test_keys:
            raise ValueError(f"store {path} has no labelled test videos in fold {config['fold']}; nothing to score")
        labels = class_indices(store, test_keys)
    sampling = config["sampling"]
    source, regions, spatial = _extra_sources(path, config["head"], test_keys, None)
    test_set = SequenceDataset(
        source, labels, segments=sampling["segments"], mode=sampling["mode"], train=False,
        num_clips=sampling["eval_clips"], regions=regions, spatial=spatial,
    )
    metrics = evaluate(model, test_set, config["classes"], device=device)
    metrics.update(split="test", fold=config["fold"], head=config["head"], features=resolve_store_path(path))
    return metrics


def predict_sequences(
    model: nn.Module, config: dict, sequences: Sequence[np.ndarray], regions: Sequence[Regions] | None = None,
    spatial: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """``[N, C]`` class probabilities for ``[T, D]`` feature arrays, sampled the way the run evaluates.

    A region head (``gcn``) also needs each video's ``(roi_features, boxes, roi_mask)`` as ``store.rois`` gives them,
    a spatial head (``timesformer``, ``eco``) each video's grid as ``store.spatial`` gives it.
    """
    dims = {int(s.shape[1]) for s in sequences}
    if dims != {config["input_dim"]}:
        raise ValueError(
            f"the run expects {config['input_dim']}-d features, got {sorted(dims)}; extract with the run's backbone"
        )
    if uses_regions(config["head"]) and (regions is None or len(regions) != len(sequences)):
        raise ValueError(
            f"the {config['head']!r} run needs the region features of every video; extract them with the run's "
            f"RoI settings ({json.dumps(config['features']['provenance'].get('rois'))})"
        )
    if uses_spatial(config["head"]) and (spatial is None or len(spatial) != len(sequences)):
        raise ValueError(
            f"the {config['head']!r} run needs the spatial grid of every video; extract it with the run's grid "
            f"settings ({json.dumps(config['features']['provenance'].get('spatial'))})"
        )
    source = SequenceSource.from_arrays(sequences)
    sampling = config["sampling"]
    dataset = SequenceDataset(
        source,
        [0] * len(sequences),
        segments=sampling["segments"],
        mode=sampling["mode"],
        train=False,
        num_clips=sampling["eval_clips"],
        regions=RegionSource(source.keys, arrays=regions) if uses_regions(config["head"]) else None,
        spatial=SpatialSource(source.keys, arrays=spatial) if uses_spatial(config["head"]) else None,
    )
    return predict_proba(model, dataset, device=next(model.parameters()).device)


def _row(run_dir: Path, config: dict, metrics: dict) -> dict:
    return {
        "run_dir": str(run_dir),
        "head": config["head"],
        "fold": config["fold"],
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "mean_class_accuracy": metrics["mean_class_accuracy"],
        "params": metrics["params"],
        "train_time_s": metrics["train_time_s"],
    }


def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    """One row per run (head, fold, top1, top5, mean class accuracy, params, train time); a fold-``all``
    directory gives the fold mean plus ``*_std`` columns."""
    rows = []
    for run_dir in map(Path, run_dirs):
        if (run_dir / SUMMARY).exists():
            summary = _read_json(run_dir / SUMMARY)
            row = {"run_dir": str(run_dir), "head": summary["head"], "fold": "all", **summary["mean"]}
            row.update({f"{m}_std": summary["std"][m] for m in SUMMARY_METRICS})
            row.update(params=summary["params"], train_time_s=summary["train_time_s"])
        else:
            row = _row(run_dir, _read_json(run_dir / CONFIG), _read_json(run_dir / METRICS))
        rows.append(row)
    return rows


def format_comparison(rows: list[dict]) -> str:
    """Plain-text table of :func:`compare_runs` rows (accuracies in %, ± std for fold-all runs)."""

    def pct(row: dict, metric: str) -> str:
        value = f"{100 * row[metric]:.1f}"
        return value + (f" ± {100 * row[metric + '_std']:.1f}" if f"{metric}_std" in row else "")

    header = ["run", "head", "fold", "top1", "top5", "mean-class", "params", "train s"]
    table = [
        [
            Path(r["run_dir"]).name,
            r["head"],
            str(r["fold"]),
            pct(r, "top1"),
            pct(r, "top5"),
            pct(r, "mean_class_accuracy"),
            f"{r['params']:,}",
            f"{r['train_time_s']:.1f}",
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [header, *table])
