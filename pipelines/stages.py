"""Stage wiring: dataset adapters -> extraction jobs -> the feature store. Callable from Python; the CLI is a shell."""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vidfeat.extract.backbones import list_backbones, weights_records
from vidfeat.extract.flow import DEFAULT_ENCODER, flow_backbone_name
from vidfeat.extract.options import ExtractOptions
from vidfeat.extract.provenance import backbone_for, reproducing_options
from vidfeat.extract.runner import ExtractSummary, VideoJob, extract_videos
from vidfeat.features import interop
from vidfeat.features.errors import UserError
from vidfeat.features.interop import ImportSummary
from vidfeat.features.store import FeatureStore, open_store
from vidfeat.pipelines import relational, sample
from vidfeat.pipelines.scaleout import ScaledSummary, ScaleOut, extract_scaled
from vidfeat.pipelines.datasets import Dataset, dataset_from_inputs, load_dataset
from vidfeat.temporal.runs import check_provenance, feature_records, load_run, predict_sequences

DEFAULT_BACKBONE = "efficientnet_lite0"
# Datasets generated on first use, and where they go when no --data-root is given.
EMBEDDED_ROOTS = {"sample": sample.DEFAULT_ROOT, **{n: b.default_root for n, b in relational.BENCHMARKS.items()}}


def jobs_from_dataset(dataset: Dataset) -> list[VideoJob]:
    return [VideoJob(item.key, Path(item.path), item.label, tuple(item.splits)) for item in dataset.items]


def extract_dataset(
    dataset: Dataset,
    out: str | os.PathLike,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    options: ExtractOptions | None = None,
) -> ExtractSummary:
    """Extract a loaded dataset into the store at ``out`` (created, or resumed when it exists)."""
    return extract_videos(
        jobs_from_dataset(dataset),
        out,
        backbone,
        options or ExtractOptions(),
        dataset={"name": dataset.name, "root": str(dataset.root)},
        classes=dataset.classes,
        n_folds=dataset.n_folds,
        weights=weights,
    )


def resolve_dataset(
    inputs: Sequence[str | os.PathLike] = (),
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    list_file: str | os.PathLike | None = None,
    seed: int = 0,
) -> Dataset:
    """Either named dataset (adapter layout) or loose INPUT files/directories; exactly one of the two."""
    if dataset and inputs:
        raise UserError("give either --dataset or INPUT paths, not both")
    if dataset:
        if data_root is None and dataset in EMBEDDED_ROOTS:
            data_root = EMBEDDED_ROOTS[dataset]
        if data_root is None and list_file is None:
            raise UserError(f"--dataset {dataset} needs --data-root DIR (see `vidfeat datasets` for the layout)")
        return load_dataset(dataset, data_root if data_root is not None else Path(list_file).parent, list_file, seed)
    if inputs:
        return dataset_from_inputs([Path(p) for p in inputs])
    raise UserError("nothing to extract: pass INPUT files/directories or --dataset NAME --data-root DIR")


def choose_backbone(backbone: str, flow: str | None, flow_encoder: str | None, backbone_given: bool) -> str:
    """What `vidfeat extract` runs: ``backbone``, or with ``--flow`` the flow backbone of that method and encoder."""
    if flow is None:
        if flow_encoder is not None:
            raise UserError("--flow-encoder applies with --flow METHOD")
        return backbone
    if backbone_given:
        raise UserError("--backbone does not apply with --flow (a flow store's rows come from --flow-encoder); "
                        "drop one of them")
    return flow_backbone_name(flow, flow_encoder or DEFAULT_ENCODER)


def extract(
    out: str | os.PathLike,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    options: ExtractOptions | None = None,
    **dataset_args,
) -> ExtractSummary:
    """Extract a dataset (see ``resolve_dataset`` for ``dataset_args``) into one store file."""
    return extract_dataset(resolve_dataset(**dataset_args), out, backbone, weights, options)


def extract_sharded(
    out: str | os.PathLike,
    scale_out: ScaleOut,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    options: ExtractOptions | None = None,
    **dataset_args,
) -> ScaledSummary:
    """Extract a dataset into the shard directory ``out``: on a Dask cluster, or as one job of an array."""
    loaded = resolve_dataset(**dataset_args)
    return extract_scaled(
        jobs_from_dataset(loaded), Path(out), backbone, weights, options or ExtractOptions(),
        {"name": loaded.name, "root": str(loaded.root)}, loaded.classes, loaded.n_folds, scale_out,
    )


def import_features(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    dataset: str | None = None,
    data_root: str | os.PathLike | None = None,
    list_file: str | os.PathLike | None = None,
    feature_type: str | None = None,
    dtype: str = "float16",
) -> ImportSummary:
    """A store from per-video feature files (video_features' layout), labelled by a labels CSV or by a dataset
    adapter (its videos matched to the files by file stem), or unlabelled."""
    if labels is not None and dataset is not None:
        raise UserError("give either --labels CSV or --dataset NAME, not both")
    if dataset is None:
        return interop.import_features(folder, out, interop.read_labels(Path(labels)) if labels else None,
                                       feature_type=feature_type, dtype=dtype)
    if data_root is None and list_file is None:
        raise UserError(f"--dataset {dataset} needs --data-root DIR (see `vidfeat datasets` for the layout)")
    loaded = load_dataset(dataset, data_root if data_root is not None else Path(list_file).parent, list_file)
    by_stem: dict[str, interop.Labelling] = {}
    for item in loaded.items:
        stem = Path(item.path).stem
        if stem in by_stem:
            raise UserError(f"videos {by_stem[stem].key!r} and {item.key!r} share the file stem {stem!r}; "
                             "video_features' files are named by stem only, so they cannot be told apart")
        by_stem[stem] = interop.Labelling(item.key, item.label, tuple(item.splits))
    return interop.import_features(folder, out, by_stem, classes=loaded.classes, feature_type=feature_type,
                                   dataset={"name": loaded.name, "root": str(loaded.root)}, dtype=dtype)


def format_summary(summary: ExtractSummary) -> str:
    lines = [
        f"store: {summary.out}",
        f"videos: {summary.total} total, {summary.extracted} extracted now, {summary.already_done} already stored, "
        f"{len(summary.failures)} failed" + (f", {summary.skipped_failed} earlier failures skipped" if summary.skipped_failed else "")
        + (f", {summary.stale} re-extracted because the source changed" if summary.stale else ""),
    ]
    if summary.rows:
        lines.append(
            f"{summary.unit}: {summary.rows} in {summary.seconds:.1f} s = {summary.rows_per_second:.1f} {summary.unit}/s "
            f"(device {summary.device}, batch {summary.batch_size}); committed in {summary.commits} part file(s)"
        )
    for key, reason in summary.partial:
        lines.append(f"partial: {key}: {reason}")
    for source, error in summary.failures:
        lines.append(f"FAILED: {source}: {error}")
    if summary.interrupted:
        lines.append("interrupted: finished videos are saved; rerun the same command to resume")
    return "\n".join(lines)


def format_scaled_summary(scaled: ScaledSummary) -> str:
    """The run's summary, then each Dask worker's throughput (busy time: model and decoding, not waiting)."""
    lines = [format_summary(scaled.summary)]
    unit = scaled.summary.unit
    for name, stats in sorted(scaled.workers.items()):
        lines.append(f"worker {name}: {stats.tasks} task(s), {stats.videos} video(s), {stats.rows} {unit} in "
                     f"{stats.seconds:.1f} s = {stats.rows_per_second:.1f} {unit}/s, {stats.failures} failed")
    return "\n".join(lines)


def describe_store(store: FeatureStore) -> str:
    """Human summary for `vidfeat features info`: provenance, counts, dims, splits, partial and failed videos."""
    attrs = store.attrs
    lengths = store.lengths()
    rows = sum(lengths.values())
    lines = [f"files: {', '.join(map(str, store.paths))}"]
    pending = [p for p in store.paths if p.parent.name.endswith(".parts")]
    if pending:
        lines.append(f"note: {len(pending)} committed part(s) of an unfinished run; rerun the extraction to merge them")
    for name in ("schema_version", "kind", "backbone", "weights", "feature_dim", "dtype", "dataset", "dataset_root",
                 "n_folds", "vidfeat_version", "created", "updated", "provenance_hash"):
        if name in attrs:
            lines.append(f"{name}: {attrs[name]}")
    for name in ("preprocessing", "sampling", "window", "rois", "spatial", "software"):
        if attrs.get(name) is not None:
            lines.append(f"{name}: {attrs[name]}")
    lines.append(format_row_cost(store.row_nbytes(), "frame" if attrs.get("kind") != "clip" else "window"))
    lines.append(f"videos: {len(store)}  rows: {rows}  rows/video: "
                 + (f"min {min(lengths.values())}, mean {rows / len(lengths):.1f}, max {max(lengths.values())}" if lengths else "-"))
    classes = store.classes
    if classes:
        counts = Counter(store.label(k) for k in store.keys())
        lines.append(f"classes: {len(classes)} ({', '.join(f'{c}={counts.get(c, 0)}' for c in classes)})")
    for fold in range(1, store.n_folds + 1):
        counts = Counter(store.split(k, fold) for k in store.keys())
        lines.append(f"fold {fold}: " + ", ".join(f"{s}={counts.get(s, 0)}" for s in ("train", "val", "test", None)))
    partial = store.partial()
    lines.append(f"partial: {len(partial)}")
    lines += [f"  {key}: {reason}" for key, reason in partial.items()]
    failures = store.failures()
    lines.append(f"failures: {len(failures)}")
    lines += [f"  {source}: {error}" for source, error in failures]
    return "\n".join(lines)


def describe_backbones() -> str:
    """`vidfeat backbones`: every backbone with every set of pretrained weights, and whether it is on this machine."""
    lines = []
    for name in list_backbones():
        lines.append(name)
        for record in weights_records(name):
            here = "offline: yes" if record.available_offline() else f"offline: no (downloads {record.source})"
            window = f", {record.clip_len} frames at {record.frame_rate:g} fps" if record.clip_len else ""
            lines.append(f"  {record.name}{' (default)' if record.default else ''}: {record.weights_id}{window}; "
                         f"{here}; {record.terms}")
    return "\n".join(lines)


def format_row_cost(nbytes: dict[str, int], unit: str) -> str:
    """Disk cost of one row (a frame or clip window), in total and per dataset, for sizing --spatial and --fps."""
    total = sum(nbytes.values())
    parts = ", ".join(f"{name} {size / 1024:.1f}" for name, size in sorted(nbytes.items(), key=lambda kv: -kv[1]))
    return f"disk per {unit}: {total / 1024:.1f} KB ({parts} KB)"


@dataclass
class Prediction:
    video: Path
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str = ""


@dataclass
class StreamFeatures:
    """One stream's features of the videos to predict, extracted as the run's store of that stream was."""

    sequences: dict[str, np.ndarray]
    regions: dict[str, tuple] | None
    spatial: dict[str, np.ndarray] | None
    errors: dict[str, str]


def _stream_weights(weights: str | Sequence[str | None] | None, records: list[dict]) -> list[str | None]:
    """The weights file to rebuild each stream's backbone with: one value goes to every stream extracted with a
    weights file (to the only stream of a one-store run), a list gives one per stream (``-`` or None: none)."""
    if weights is None or isinstance(weights, (str, os.PathLike)):
        if len(records) == 1:
            return [weights]
        return [weights if r["provenance"]["weights"].startswith("sha256:") else None for r in records]
    if len(weights) != len(records):
        raise UserError(f"the run has {len(records)} streams; give --weights once, or once per stream in the run's "
                        f"order (`-` for a stream without a weights file), not {len(weights)} times")
    return [None if w in (None, "-") else w for w in weights]


def _extract_stream(
    config: dict, stream: int, jobs: list[VideoJob], out: Path, device: str, weights: str | None,
    detector_weights: str | None, flow_weights: str | None,
) -> StreamFeatures:
    """Extract ``jobs`` with the run's ``stream``-th store's recorded settings into ``out`` and check that the new
    features mean what that store's did."""
    provenance = feature_records(config)[stream]["provenance"]
    options = reproducing_options(provenance, device, detector_weights, flow_weights)
    backbone = backbone_for(provenance, options, weights)
    extract_videos(jobs, out, backbone, options, {"name": "predict"}, [], 0)
    with open_store(out) as store:
        check_provenance(config, store.attrs, None, "the store extracted for prediction", stream)
        sequences = {job.key: store.features(job.key) for job in jobs if job.key in store}
        return StreamFeatures(
            sequences,
            {key: store.rois(key) for key in sequences} if options.rois is not None else None,
            {key: store.spatial(key) for key in sequences} if options.spatial is not None else None,
            {key: error for key, _, error in store.failure_records()},
        )


def predict(
    run_dir: str | os.PathLike,
    videos: Sequence[str | os.PathLike],
    top_k: int = 5,
    weights: str | Sequence[str | None] | None = None,
    device: str = "auto",
    detector_weights: str | None = None,
    flow_weights: str | None = None,
) -> list[Prediction]:
    """Whole pipeline on new videos: extraction with the run's recorded backbone, preprocessing, sampling,
    regions and spatial grid (through the normal runner, so batching and failure handling are the same), once per
    stream of a multi-stream run, a check that the new features mean what the run's did, then the trained head.
    A video is classified when every stream could extract it."""
    model, config = load_run(run_dir)
    records = feature_records(config)
    jobs = [VideoJob(f"video{i:06d}", Path(v)) for i, v in enumerate(videos)]
    with tempfile.TemporaryDirectory(prefix="vidfeat-predict-") as tmp:
        streams = [
            _extract_stream(config, i, jobs, Path(tmp) / f"stream{i}.h5", device, stream_weights, detector_weights,
                            flow_weights)
            for i, stream_weights in enumerate(_stream_weights(weights, records))
        ]
    keys = [job.key for job in jobs if all(job.key in s.sequences for s in streams)]
    errors = {key: error for s in reversed(streams) for key, error in s.errors.items()}
    predictions = [Prediction(job.path, error=errors.get(job.key, "")) for job in jobs]
    if keys:
        arrays = [[s.sequences[k] for k in keys] for s in streams]
        first = streams[0]
        proba = predict_sequences(
            model, config, arrays[0] if len(arrays) == 1 else arrays,
            [first.regions[k] for k in keys] if first.regions is not None else None,
            [first.spatial[k] for k in keys] if first.spatial is not None else None,
        )
        by_key = dict(zip(keys, proba))
        classes = config["classes"]
        for job, prediction in zip(jobs, predictions):
            if job.key in by_key:
                order = np.argsort(-by_key[job.key])[:top_k]
                prediction.top = [(classes[i], float(by_key[job.key][i])) for i in order]
    return predictions
