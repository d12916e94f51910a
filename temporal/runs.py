"""Run directories: train a head on a feature store, re-score it, load it for prediction, compare runs.

A run directory holds everything needed to reproduce and reuse a trained head::

    config.json      head + options, sampling, training options, seed, fold and split sizes, and the
                     store's path, full provenance and provenance hash (a multi-stream run: one such record
                     per store, in stream order, and the fusion; see vidfeat.temporal.fusion)
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
import math
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from vidfeat.features import (
    FeatureStore, SequenceSource, StorePath, check_representation, fits_in_memory, open_store, select_keys,
)
from vidfeat.features.errors import UserError
from vidfeat.temporal.data import (
    FoldSplit,
    Regions,
    RegionSource,
    RowArrays,
    SequenceDataset,
    SpatialSource,
    class_indices,
    fold_parts,
    resolve_store_path,
    split_parts,
)
from vidfeat.temporal.fusion import Fusion, check_rates, create_model
from vidfeat.temporal.heads import (
    head_defaults, resolve_options, training_defaults, uses_regions, uses_spatial,
)
from vidfeat.temporal.logreg import fit_logreg
from vidfeat.temporal.sampling import check_sampling
from vidfeat.temporal.streams import JoinedSource, Streams, check_aligned, store_name, stream_paths
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
COMPARISON_CSV, COMPARISON_PLOT = "comparison.csv", "comparison.png"
SWEEP_FILE = "sweep.json"  # marks a sweep's directory (see vidfeat.temporal.sweep)
RUN_FORMAT = 1
SUMMARY_METRICS = ("top1", "top5", "mean_class_accuracy")


class RunError(UserError):
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


def _dataset(data: "RunData", keys: list[str], sampling: dict, train: bool, seed: int, head: str) -> SequenceDataset:
    """The sampled sequences of ``keys``, with the regions or grid ``head`` reads."""
    return SequenceDataset(
        data.source.subset(keys),
        [data.labels[k] for k in keys],
        segments=sampling["segments"],
        mode=sampling["mode"],
        train=train,
        seed=seed,
        num_clips=1 if train else sampling["eval_clips"],
        regions=data.regions.subset(keys) if uses_regions(head) else None,
        spatial=data.spatial.subset(keys) if uses_spatial(head) else None,
    )


def _extra_kinds(heads: Sequence[str]) -> list[type[RowArrays]]:
    """The per-row arrays beyond the features that any of ``heads`` reads (regions, a spatial grid, or none)."""
    return [kind for kind, wanted in ((RegionSource, uses_regions), (SpatialSource, uses_spatial))
            if any(wanted(head) for head in heads)]


def load_sources(
    path: StorePath, keys: list[str], heads: Sequence[str], in_memory: bool | None = None
) -> tuple[SequenceSource, RegionSource | None, SpatialSource | None]:
    """The rows of ``keys``, plus the regions or grid any of ``heads`` reads (required of the store). All are loaded
    or all streamed: together they must fit in memory (:func:`~vidfeat.features.fits_in_memory`), else every part
    is read from disk on demand."""
    kinds = _extra_kinds(heads)
    with open_store(path) as store:
        for kind in kinds:
            kind.require(store, next(h for h in heads if kind in _extra_kinds([h])))
        if in_memory is None:
            in_memory = fits_in_memory(store, keys, ("features", *(n for kind in kinds for n in kind.datasets)))
    extras = {kind: kind.from_store(path, keys, in_memory) for kind in kinds}
    return SequenceSource.from_store(path, keys, in_memory), extras.get(RegionSource), extras.get(SpatialSource)


@dataclass
class StoreInfo:
    """What a run records of one of its stores: where it is and how its features were made."""

    path: StorePath
    provenance: dict
    provenance_hash: str
    input_dim: int

    @classmethod
    def of(cls, path: StorePath, store: FeatureStore) -> "StoreInfo":
        return cls(path, dict(store.attrs), store.provenance_hash, store.feature_dim)

    def record(self) -> dict:
        """config.json's record of the store."""
        return {"path": resolve_store_path(self.path), "provenance": self.provenance,
                "provenance_hash": self.provenance_hash}


def _refuse_extras_on_streams(heads: Sequence[str]) -> None:
    extras = [head for head in heads if _extra_kinds([head])]
    if extras:
        raise UserError(f"head {extras[0]!r} reads regions or spatial grids, which a multi-stream run does not "
                        "join; train it on one store, or train a frame head (mean, lstm, tcn, transformer, "
                        "slowfast, logreg) on the streams")


def load_rows(
    paths: Sequence[StorePath], keys: list[str], heads: Sequence[str], in_memory: bool | None = None
) -> tuple[SequenceSource | JoinedSource, RegionSource | None, SpatialSource | None]:
    """The rows of ``keys``: one store's (with the regions or grid any of ``heads`` reads, :func:`load_sources`),
    or several streams' joined (:class:`JoinedSource`)."""
    if len(paths) == 1:
        return load_sources(paths[0], keys, heads, in_memory)
    _refuse_extras_on_streams(heads)
    return JoinedSource.from_stores(paths, keys, in_memory), None, None


@dataclass
class RunData:
    """What runs read from their store(s): metadata, the recorded parts of some folds, and the rows of their videos
    (plus the regions or spatial grids a head reads; several streams' rows joined, for a multi-stream run).

    ``train_run`` loads one per run; a sweep loads one for all its runs and shares its rows (:meth:`share`) with
    the processes that train them, so the cache is read once and held in memory once.
    """

    stores: list[StoreInfo]
    classes: list[str]
    labels: dict[str, int]
    parts: dict[int, dict[str, list[str]]]
    source: SequenceSource | JoinedSource
    regions: RegionSource | None = None
    spatial: SpatialSource | None = None

    @classmethod
    def load(
        cls, path: StorePath | Streams, folds: Sequence[int], *, heads: Sequence[str] = (),
        in_memory: bool | None = None,
    ) -> "RunData":
        """Read ``folds`` of the store (or of the aligned stores of ``Streams``), with the regions or grid any of
        ``heads`` reads (see :func:`load_rows`)."""
        paths = stream_paths(path)
        with ExitStack() as stack:
            stores = [stack.enter_context(open_store(p)) for p in paths]
            check_aligned(stores, [store_name(p) for p in paths])
            parts = {fold: fold_parts(stores[0], fold) for fold in folds}
            keys = sorted({key for fold in parts.values() for part in fold.values() for key in part})
            infos = [StoreInfo.of(p, store) for p, store in zip(paths, stores)]
            labels = dict(zip(keys, class_indices(stores[0], keys)))
            classes = stores[0].classes
        source, regions, spatial = load_rows(paths, keys, heads, in_memory)
        return cls(infos, classes, labels, parts, source, regions, spatial)

    @property
    def input_dims(self) -> list[int]:
        return [store.input_dim for store in self.stores]

    def split(self, fold: int, val_fraction: float, seed: int) -> FoldSplit:
        if fold not in self.parts:
            raise ValueError(f"fold {fold} was not loaded (loaded: {', '.join(map(str, self.parts))})")
        return split_parts(self.parts[fold], self.labels, val_fraction, seed)

    def share(self, directory: Path) -> "RunData":
        """The same data with its rows memory-mapped from ``.npy`` files in ``directory`` (which must outlive it)."""
        extras = {name: part.share(directory) for name, part in (("regions", self.regions), ("spatial", self.spatial))
                  if part is not None}
        return replace(self, source=self.source.share(directory), **extras)

    def head_options(self, head: str, options: dict, config: TrainConfig) -> dict:
        """``head``'s options completed with what the store records of the regions or grid it reads (a conflicting
        value is refused); mixup, which mixes frame features only, is refused for such heads."""
        recorded = {}
        for kind, loaded in ((RegionSource, self.regions), (SpatialSource, self.spatial)):
            if kind not in _extra_kinds([head]):
                continue
            if loaded is None:
                raise ValueError(f"head {head!r} needs {', '.join(kind.datasets)}, but the loaded data holds none; "
                                 f"load it with heads=[{head!r}]")
            recorded.update(kind.head_options(self.stores[0].provenance))
        for name, value in recorded.items():
            if options.get(name) not in (None, value):
                raise UserError(f"{name}={options[name]} was given, but the store records {name}={value}")
        if recorded and config.mixup > 0:
            raise UserError(f"mixup mixes frame features only, not regions or grids; train {head!r} with mixup 0")
        return {**options, **recorded}


@dataclass
class Fitted:
    """A trained head with its history (train_log.csv rows) and what config.json records of its training."""

    model: nn.Module
    history: list[dict]
    training: dict
    best_epoch: int = 0
    stopped_early: bool = False


def _fit(
    head: str, options: dict, config: TrainConfig, sets: list[SequenceDataset | None], data: RunData,
    fusion: Fusion | None, device, progress,
) -> Fitted:
    """Train (or fit, for logreg) the head, or the heads ``fusion`` combines, on ``sets`` = [train, val or None]."""
    train_set, val_set = sets
    if head == "logreg":
        model, report = fit_logreg(
            [train_set.source.get(i) for i in range(len(train_set))],
            np.asarray(train_set.labels),
            len(data.classes),
            val_sequences=[val_set.source.get(i) for i in range(len(val_set))] if val_set else None,
            val_labels=np.asarray(val_set.labels) if val_set else None,
            C=options["C"],
            max_iter=options["max_iter"],
            seed=config.seed,
        )
        history = [{"C": float(c), "val_acc": acc} for c, acc in report["val_accuracy_by_C"].items()] or [
            {"C": report["C"], "val_acc": float("nan")}
        ]
        return Fitted(model, history, {"seed": config.seed, "fit": report})
    model = create_model(head, data.input_dims, len(data.classes), options, fusion)
    result = train(model, train_set, val_set, config, device=device, progress=progress)
    return Fitted(model, result.history, asdict(config), result.best_epoch, result.stopped_early)


def _write_run(out_dir: Path, model: nn.Module, history: list[dict], metrics: dict, run_config: dict) -> None:
    """Everything but config.json first, config.json last: a directory with it holds a finished run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out_dir / CHECKPOINT)
    _write_log(history, out_dir / LOG)
    _plot_curves(history, out_dir / CURVES, run_config["head"])
    title = f"{run_config['head']}, fold {run_config['fold']}: top-1 {metrics['top1']:.3f}"
    _plot_confusion(metrics["confusion"], run_config["classes"], out_dir / CONFUSION, title)
    _json_dump(metrics, out_dir / METRICS)
    _json_dump(run_config, out_dir / CONFIG)


def run_finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a finished run: its metrics and its config (written last) are both there."""
    return (Path(run_dir) / METRICS).exists() and (Path(run_dir) / CONFIG).exists()


def _split_record(split: FoldSplit) -> dict:
    return {"val_source": split.val_source,
            "split_sizes": {"train": len(split.train), "val": len(split.val), "test": len(split.test)}}


def _streams_record(data: RunData, fusion: Fusion | None) -> dict:
    """What config.json records of the store(s): one store's record as before; for several streams a list of them
    (in stream order), the fusion, and the joined step vector's size as the input dimension."""
    if fusion is None:
        return {"features": data.stores[0].record(), "input_dim": data.input_dims[0]}
    return {"features": [store.record() for store in data.stores], "input_dim": sum(data.input_dims),
            "fusion": fusion.with_dims(data.input_dims).record()}


def feature_records(config: dict) -> list[dict]:
    """A run's store records (path, provenance, provenance hash), one per stream, in stream order."""
    records = config["features"]
    return records if isinstance(records, list) else [records]


def _load_fused(
    features_path: StorePath | Streams, head: str, fold: int, fusion: str | None, fusion_weights: object,
    data: RunData | None, in_memory: bool | None,
) -> tuple[RunData, Fusion | None]:
    """The run's data (``data`` when a sweep loaded it already) and fusion, the fusion checked before any store is
    read."""
    streams = len(data.stores) if data is not None else len(stream_paths(features_path))
    plan = Fusion.plan(fusion, fusion_weights, head, streams)
    if plan is not None:
        _refuse_extras_on_streams([head])
    data = data or RunData.load(features_path, [fold], heads=[head], in_memory=in_memory)
    if plan is not None and plan.mode == "slowfast":
        check_rates([s.lengths for s in data.source.sources], [store_name(s.path) for s in data.stores])
    return data, plan


def train_run(
    features_path: StorePath | Streams,
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
    data: RunData | None = None,
    fusion: str | None = None,
    fusion_weights: str | Sequence[float] | None = None,
    **head_options,
) -> dict:
    """Train ``head`` on fold ``fold`` of the store, score it on the test split, write a run directory and return
    its comparison row (:func:`compare_runs`). ``Streams([rgb, flow])``: aligned stores combined by ``fusion``
    (late, the default; concat; slowfast) with late's ``fusion_weights`` (TSN's 1:1.5 for two; see
    :mod:`vidfeat.temporal.fusion`). ``train_options`` override :class:`TrainConfig` fields on top of the head's
    recipe (:func:`~vidfeat.temporal.heads.training_defaults`); ``epochs`` and ``seed`` are shortcuts. ``logreg``
    pools every step. ``data``: the store already loaded (a sweep's, shared by its runs)."""
    out_dir = Path(out_dir)
    shortcuts = {"seed": seed, **({"epochs": epochs} if epochs is not None else {})}
    config = TrainConfig.from_options({**training_defaults(head), **(train_options or {}), **shortcuts})
    options = resolve_options(head, head_options)
    sampling = {"mode": "all" if head == "logreg" else sample_mode, "segments": segments, "eval_clips": eval_clips}
    check_sampling(sampling["mode"], segments, eval_clips)
    device = torch.device(device) if device else default_device()
    _refuse_existing(out_dir)
    data, plan = _load_fused(features_path, head, fold, fusion, fusion_weights, data, in_memory)
    options = data.head_options(head, options, config)
    split = data.split(fold, val_fraction, seed)
    sets = [
        _dataset(data, keys, sampling, train, seed, head) if keys else None
        for keys, train in ((split.train, True), (split.val, False), (split.test, False))
    ]
    torch.manual_seed(seed)
    started = time.perf_counter()
    fitted = _fit(head, options, config, sets[:2], data, plan, device, progress)
    train_time = time.perf_counter() - started
    metrics = evaluate(fitted.model, sets[2], data.classes, device=device)
    run_config = {
        "format": RUN_FORMAT, "head": head, "head_options": options, **_streams_record(data, plan),
        "num_classes": len(data.classes), "classes": data.classes, "fold": fold, "sampling": sampling,
        "training": fitted.training, "seed": seed, "val_fraction": val_fraction, **_split_record(split),
        "software": _software(), "device": str(device),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "checkpoint": CHECKPOINT,
    }
    metrics.update(
        split="test", fold=fold, head=head, params=count_parameters(fitted.model), train_time_s=train_time,
        best_epoch=fitted.best_epoch, stopped_early=fitted.stopped_early,
    )
    _write_run(out_dir, fitted.model, fitted.history, metrics, run_config)
    return _row(out_dir, run_config, metrics)


def train_folds(
    features_path: StorePath | Streams,
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
        with open_store(stream_paths(features_path)[0]) as store:
            folds = list(range(1, store.n_folds + 1))
        if not folds:
            raise UserError("this store has no folds (n_folds=0); fold 'all' needs a dataset with official splits")
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


def stream_dims(config: dict) -> list[int]:
    """The feature dimension of each of a run's streams."""
    fusion = Fusion.from_config(config)
    return list(fusion.input_dims) if fusion is not None else [config["input_dim"]]


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained head (eval mode) and the run's config, e.g. for ``predict``."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / CONFIG)
    if config.get("format") != RUN_FORMAT:
        raise RunError(f"{run_dir} has run format {config.get('format')}; this vidfeat reads format {RUN_FORMAT}")
    model = create_model(config["head"], stream_dims(config), config["num_classes"], config["head_options"],
                         Fusion.from_config(config))
    checkpoint = run_dir / config["checkpoint"]
    if not checkpoint.exists():
        raise RunError(f"{checkpoint} is missing; the run directory is incomplete, train it again")
    model.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    return model.to(device).eval(), config


def check_provenance(
    config: dict, provenance: dict, classes: list[str] | None, store_label: str, stream: int = 0
) -> None:
    """Refuse features that mean something else than what the run's ``stream``-th store held, naming each differing
    field. ``classes``: the store's class list, or None for a store of unlabelled videos (predict's)."""
    record = feature_records(config)[stream]
    check_representation(
        record["provenance"], provenance, store_label,
        f"Evaluate with the run's store ({record['path']}) or extract one with the same backbone, "
        "weights, preprocessing and sampling.",
        config["classes"], classes,
    )


def _scoring_paths(config: dict, features_path: StorePath | Streams | None) -> list[StorePath]:
    """The stores to score a run on: its own, or the ones given, one per stream."""
    recorded = [record["path"] for record in feature_records(config)]
    if features_path is None:
        return recorded
    paths = stream_paths(features_path)
    if len(paths) != len(recorded):
        raise UserError(f"the run was trained on {len(recorded)} store(s) ({', '.join(map(store_name, recorded))}); "
                        f"give one --features per stream, in that order, not {len(paths)}")
    return paths


def evaluate_run(
    run_dir: str | Path, features_path: StorePath | Streams | None = None, *, device: str | None = None
) -> dict:
    """Re-score a run on the test split of its fold, from the recorded store(s) or ``features_path`` (for a
    multi-stream run, ``Streams`` of one store per stream, in the run's order).

    Raises ``ProvenanceMismatch`` when a store was made with another backbone, weights, feature
    dimension, preprocessing or sampling than the run's store of that stream, or has other classes.
    """
    device = torch.device(device) if device else default_device()
    model, config = load_run(run_dir, device)
    paths = _scoring_paths(config, features_path)
    with ExitStack() as stack:
        stores = [stack.enter_context(open_store(p)) for p in paths]
        for stream, (path, store) in enumerate(zip(paths, stores)):
            check_provenance(config, dict(store.attrs), store.classes, f"store {store_name(path)}", stream)
        check_aligned(stores, [store_name(p) for p in paths])
        test_keys = select_keys(stores[0], "test", config["fold"])
        if not test_keys:
            raise UserError(f"store {store_name(paths[0])} has no labelled test videos in fold {config['fold']}; "
                            "nothing to score")
        labels = class_indices(stores[0], test_keys)
    sampling = config["sampling"]
    source, regions, spatial = load_rows(paths, test_keys, [config["head"]])
    test_set = SequenceDataset(
        source, labels, segments=sampling["segments"], mode=sampling["mode"], train=False,
        num_clips=sampling["eval_clips"], regions=regions, spatial=spatial,
    )
    metrics = evaluate(model, test_set, config["classes"], device=device)
    resolved = [resolve_store_path(p) for p in paths]
    metrics.update(split="test", fold=config["fold"], head=config["head"],
                   features=resolved[0] if len(resolved) == 1 else resolved)
    return metrics


def _check_prediction_inputs(config: dict, streams: Sequence[Sequence[np.ndarray]], regions, spatial) -> None:
    """Each stream's arrays have the run's feature dimension for it, and a region or spatial head has its extras."""
    provenance = feature_records(config)[0]["provenance"]
    for arrays, dim in zip(streams, stream_dims(config)):
        dims = {int(s.shape[1]) for s in arrays}
        if dims != {dim}:
            raise UserError(f"the run expects {dim}-d features, got {sorted(dims)}; extract with the run's backbone")
    count = len(streams[0])
    if uses_regions(config["head"]) and (regions is None or len(regions) != count):
        raise UserError(
            f"the {config['head']!r} run needs the region features of every video; extract them with the run's "
            f"RoI settings ({json.dumps(provenance.get('rois'))})"
        )
    if uses_spatial(config["head"]) and (spatial is None or len(spatial) != count):
        raise UserError(
            f"the {config['head']!r} run needs the spatial grid of every video; extract it with the run's grid "
            f"settings ({json.dumps(provenance.get('spatial'))})"
        )


def predict_sequences(
    model: nn.Module, config: dict, sequences: Sequence[np.ndarray] | Sequence[Sequence[np.ndarray]],
    regions: Sequence[Regions] | None = None, spatial: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """``[N, C]`` class probabilities for ``[T, D]`` feature arrays, sampled the way the run evaluates. For a
    multi-stream run ``sequences`` holds one such list per stream, in the run's stream order (video ``i`` of each).

    A region head (``gcn``) also needs each video's ``(roi_features, boxes, roi_mask)`` as ``store.rois`` gives them,
    a spatial head (``timesformer``, ``eco``) each video's grid as ``store.spatial`` gives it.
    """
    streams = [sequences] if Fusion.from_config(config) is None else list(sequences)
    if len(streams) != len(stream_dims(config)):
        raise UserError(f"the run has {len(stream_dims(config))} streams; give one list of arrays per stream, "
                        f"not {len(streams)}")
    _check_prediction_inputs(config, streams, regions, spatial)
    source = SequenceSource.from_arrays(streams[0]) if len(streams) == 1 else JoinedSource.from_arrays(streams)
    sampling = config["sampling"]
    dataset = SequenceDataset(
        source,
        [0] * len(source),
        segments=sampling["segments"],
        mode=sampling["mode"],
        train=False,
        num_clips=sampling["eval_clips"],
        regions=RegionSource.from_arrays(regions, source.keys) if uses_regions(config["head"]) else None,
        spatial=SpatialSource.from_arrays([(grid,) for grid in spatial], source.keys)
        if uses_spatial(config["head"]) else None,
    )
    return predict_proba(model, dataset, device=next(model.parameters()).device)


def configuration_label(config: dict) -> str:
    """What sets a run's configuration apart, e.g. ``lstm hidden=64 lr=0.003``: the head plus the head and training
    options that differ from their defaults (seed and fold left out, so repeats of a configuration share it)."""
    head = config["head"]
    changed = {k: v for k, v in config["head_options"].items() if head_defaults(head).get(k, v) != v}
    fusion = Fusion.from_config(config)
    if fusion is not None:
        changed["fusion"] = fusion.mode
        planned = Fusion.plan(fusion.mode, None, head, len(fusion.input_dims))
        if fusion.weights != planned.weights:
            changed["fusion_weights"] = ",".join(f"{w:g}" for w in fusion.weights)
    if head != "logreg":
        defaults = asdict(TrainConfig.from_options(training_defaults(head)))
        changed.update({k: v for k, v in config["training"].items() if k != "seed" and defaults.get(k) != v})
    return " ".join([head, *(f"{k}={v}" for k, v in changed.items())])


def features_label(config: dict) -> str:
    """The stores a run trained on, by what they hold: backbone and sampling per stream, e.g.
    ``efficientnet_lite0+flow/farneback/hof_mbh`` or ``resnet50@4fps``."""
    def stream(provenance: dict) -> str:
        sampling = provenance.get("sampling") or {}
        rates = {"fps": f"@{sampling.get('fps')}fps", "every_n": f"@every{sampling.get('n')}"}
        rate = rates.get(sampling.get("mode"), "")
        return f"{provenance.get('backbone')}{rate}"

    return "+".join(stream(record["provenance"]) for record in feature_records(config))


def _row(run_dir: Path, config: dict, metrics: dict) -> dict:
    return {
        "run_dir": str(run_dir),
        "head": config["head"],
        "configuration": configuration_label(config),
        "features": features_label(config),
        "fold": config["fold"],
        "seed": config["seed"],
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "mean_class_accuracy": metrics["mean_class_accuracy"],
        "params": metrics["params"],
        "train_time_s": metrics["train_time_s"],
    }


def _expand(run_dirs: Sequence[str | Path]) -> list[Path]:
    """Run directories, a sweep's directory standing for all its finished runs."""
    out = []
    for run_dir in map(Path, run_dirs):
        if (run_dir / SWEEP_FILE).exists():
            out += sorted(p.parent for p in run_dir.glob(f"*/*/{METRICS}") if run_finished(p.parent))
        else:
            out.append(run_dir)
    return out


def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict]:
    """One row per run (head, configuration, fold, seed, top1, top5, mean class accuracy, params, train time); a
    fold-``all`` directory gives the fold mean plus ``*_std`` columns, a sweep's directory all its finished runs."""
    rows = []
    for run_dir in _expand(run_dirs):
        if (run_dir / SUMMARY).exists():
            summary = _read_json(run_dir / SUMMARY)
            row = {"run_dir": str(run_dir), "head": summary["head"], "configuration": f"{summary['head']} (folds)",
                   "fold": "all", "seed": summary["folds"][0].get("seed"), **summary["mean"]}
            row.update({f"{m}_std": summary["std"][m] for m in SUMMARY_METRICS})
            row.update(params=summary["params"], train_time_s=summary["train_time_s"])
        else:
            row = _row(run_dir, _read_json(run_dir / CONFIG), _read_json(run_dir / METRICS))
        rows.append(row)
    return rows


def rank_configurations(rows: list[dict]) -> list[dict]:
    """Configurations ranked by mean top-1 over their runs (seeds and folds), best first, with the sample standard
    deviation of each metric over the runs (0 for a single run). Runs on different stores (an RGB and a flow
    store, two backbones) are different configurations, named ``<configuration> on <stores>``."""
    several_stores = len({row.get("features") for row in rows}) > 1
    groups: dict[str, list[dict]] = {}
    for row in rows:
        name = row["configuration"] + (f" on {row.get('features')}" if several_stores else "")
        groups.setdefault(name, []).append(row)
    ranking = []
    for name, members in groups.items():
        entry = {"configuration": name, "head": members[0]["head"], "runs": len(members)}
        for metric in (*SUMMARY_METRICS, "train_time_s"):
            values = [r[metric] for r in members]
            entry[metric] = float(np.mean(values))
            entry[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        entry["params"] = members[0]["params"]
        entry["run_dirs"] = [r["run_dir"] for r in members]
        ranking.append(entry)
    ranking.sort(key=lambda e: (-e["top1"], e["top1_std"], e["configuration"]))
    return [{"rank": i + 1, **entry} for i, entry in enumerate(ranking)]


def format_ranking(ranking: list[dict]) -> str:
    """Plain-text table of :func:`rank_configurations` (accuracies in %, mean ± std over the runs)."""
    header = ["rank", "configuration", "runs", "top1", "top5", "mean-class", "params", "train s"]
    table = [
        [str(e["rank"]), e["configuration"], str(e["runs"])]
        + [f"{100 * e[m]:.1f} ± {100 * e[m + '_std']:.1f}" for m in SUMMARY_METRICS]
        + [f"{e['params']:,}", f"{e['train_time_s']:.1f}"]
        for e in ranking
    ]
    return _table(header, table)


def _plot_comparison(ranking: list[dict], path: Path) -> None:
    """Top: mean top-1 ± std per configuration. Below: validation accuracy per epoch of every run, one panel per
    head, one colour per configuration."""
    heads = sorted({e["head"] for e in ranking if e["head"] != "logreg"})
    fig = _figure((max(8, 0.6 * len(ranking) + 3), 4 + 3 * math.ceil(len(heads) / 3)))
    grid = fig.add_gridspec(1 + math.ceil(len(heads) / 3), min(3, max(1, len(heads))))
    bars = fig.add_subplot(grid[0, :])
    names = [e["configuration"] for e in ranking]
    bars.bar(range(len(ranking)), [100 * e["top1"] for e in ranking], yerr=[100 * e["top1_std"] for e in ranking],
             capsize=4, color=[f"C{i % 10}" for i in range(len(ranking))])
    bars.set_xticks(range(len(ranking)), names, rotation=30, ha="right", fontsize=8)
    bars.set(ylabel="test top-1 (%)", title="configurations: mean ± std over seeds and folds")
    for n, head in enumerate(heads):
        ax = fig.add_subplot(grid[1 + n // 3, n % 3])
        for i, entry in enumerate(ranking):
            if entry["head"] != head:
                continue
            for k, run_dir in enumerate(entry["run_dirs"]):
                log = Path(run_dir) / LOG
                if log.exists():
                    with log.open() as f:
                        rows = list(csv.DictReader(f))
                    ax.plot([int(r["epoch"]) for r in rows], [float(r["val_acc"]) for r in rows], color=f"C{i % 10}",
                            alpha=0.7, label=entry["configuration"] if k == 0 else None)
        ax.set(xlabel="epoch", ylabel="validation accuracy", title=head)
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=100)


def write_comparison(ranking: list[dict], out_dir: str | Path) -> tuple[Path, Path]:
    """``comparison.csv`` (one row per configuration) and ``comparison.png`` in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, plot = out_dir / COMPARISON_CSV, out_dir / COMPARISON_PLOT
    _write_log([{k: v for k, v in e.items() if k != "run_dirs"} for e in ranking], table)
    _plot_comparison(ranking, plot)
    return table, plot


def format_comparison(rows: list[dict]) -> str:
    """Plain-text table of :func:`compare_runs` rows (accuracies in %, ± std for fold-all runs)."""

    def pct(row: dict, metric: str) -> str:
        value = f"{100 * row[metric]:.1f}"
        return value + (f" ± {100 * row[metric + '_std']:.1f}" if f"{metric}_std" in row else "")

    header = ["run", "head", "fold", "seed", "top1", "top5", "mean-class", "params", "train s"]
    table = [
        [
            Path(r["run_dir"]).name,
            r["head"],
            str(r["fold"]),
            str(r["seed"]),
            pct(r, "top1"),
            pct(r, "top5"),
            pct(r, "mean_class_accuracy"),
            f"{r['params']:,}",
            f"{r['train_time_s']:.1f}",
        ]
        for r in rows
    ]
    return _table(header, table)


def _table(header: list[str], table: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in [header, *table])
