"""The batched extraction runner: decode in worker processes, batch frames across videos, commit per video.

The parts, each a small class passing typed messages: ``DecodePool`` (spawned processes; RowChunk, VideoEnd and
VideoFailed messages) -> ``Batcher`` (rows of all videos, cut into batches) -> ``DeviceStage`` (BatchOutputs; on
CUDA one batch behind, so upload, compute and storing overlap) -> ``Assembler`` (each video's rows back
together, stored and committed on the writer's clock). ``_Extraction`` routes the messages between them.

Short clips (HMDB51 averages ~3 s) would starve the model if batches stopped at video boundaries, so decoded
frames of all videos flow into one batcher and every batch is full until the very end. A video is written to
the store as soon as its last frame has been through the model; failures are recorded and the run goes on.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vidfeat.extract.backbones import Backbone, create_backbone
from vidfeat.extract.decode_pool import (
    MAX_CHUNK_ROWS, DecodePool, DecodeSpec, PoolMessage, RowChunk, VideoEnd, VideoFailed, default_workers,
)
from vidfeat.extract.device import (
    BatchOutput, DeviceStage, Model, ModelSettings, autocast_dtype, default_batch_size, resolve_device,
)
from vidfeat.extract.options import ExtractOptions, grid_for, input_geometry, sampling_for, windowing_for
from vidfeat.extract.provenance import build_provenance
from vidfeat.extract.rois import BoxSource, parse_roi_source
from vidfeat.extract.spatial import SpatialGrid
from vidfeat.extract.video import Geometry
from vidfeat.extract.windows import Windowing
from vidfeat.features.errors import UserError
from vidfeat.features.store import StoredVideos, StoreError, StoreWriter, VideoRecord, open_store

@dataclass(frozen=True)
class VideoJob:
    """One video to extract; keys and labels come from a dataset adapter."""

    key: str
    path: Path
    label: str | None = None
    splits: tuple[str | None, ...] = ()


@dataclass
class ExtractSummary:
    out: Path
    total: int = 0
    already_done: int = 0
    extracted: int = 0
    rows: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    partial: list[tuple[str, str]] = field(default_factory=list)
    skipped_failed: int = 0
    stale: int = 0
    commits: int = 0  # part files written (see --commit-every)
    interrupted: bool = False
    device: str = ""
    batch_size: int = 0
    unit: str = "frames"  # what a row is: a frame, or a clip window

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Video:
    job: VideoJob
    timestamps: list[np.ndarray] = field(default_factory=list)
    indices: list[np.ndarray] = field(default_factory=list)
    ranges: list[np.ndarray] = field(default_factory=list)
    regions: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    spatial: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    queued: int = 0
    done: int = 0
    failed: bool = False
    decoded_frames: int = 0
    expected_frames: int = -1
    partial: str = ""
    bad_features: str = ""  # why its features must not be stored (NaN/Inf, float16 overflow), if they must not


FLOAT16_MAX = float(np.finfo(np.float16).max)


def feature_problem(features: np.ndarray, dtype: str) -> str:
    """Why these model outputs cannot be stored as ``dtype`` ("" when they can): never store NaN or inf."""
    finite = np.isfinite(features)
    if not finite.all():
        rows = int((~finite.reshape(len(features), -1)).any(axis=1).sum())
        return (f"the model gave NaN or infinite features for {rows} row(s) (a broken checkpoint, or fp16 overflow "
                "under --precision fp16: try --precision fp32 or bf16); not stored")
    if dtype == "float16" and features.size and float(np.abs(features).max()) > FLOAT16_MAX:
        return (f"features up to {float(np.abs(features).max()):.3g} overflow float16 (largest {FLOAT16_MAX:g}) and "
                "would be stored as inf; extract into a --dtype float32 store")
    return ""


@dataclass(frozen=True)
class RowPlan:
    """What the model sees per row: input geometry, clip windows (or single frames), region boxes (or none), and
    the spatial grid it stores (or none)."""

    geometry: Geometry
    windowing: Windowing | None
    boxes: BoxSource | None
    grid: SpatialGrid | None = None


def _concat_regions(regions: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    if not regions:
        return {}
    features, boxes, mask = zip(*regions)
    return {"roi_features": np.concatenate(features), "boxes": np.concatenate(boxes), "roi_mask": np.concatenate(mask)}


@dataclass(frozen=True)
class ExtractionSetup:
    """Everything a run needs besides its videos and its store. Built where the model runs: in this process, or
    once on each Dask worker from the same arguments (so every shard records the same provenance)."""

    backbone: Backbone
    plan: RowPlan
    device: torch.device
    batch_size: int
    options: ExtractOptions
    provenance: dict


def prepare_extraction(
    keys: set[str],
    backbone: Backbone | str,
    options: ExtractOptions,
    dataset: dict,
    classes: list[str],
    n_folds: int,
    weights: str | None = None,
) -> ExtractionSetup:
    """Check the options against the backbone, load it (and any detector), and describe the features it makes."""
    if isinstance(backbone, str):
        backbone = create_backbone(backbone, weights, options.flow_weights)
    device = resolve_device(options.device)
    autocast_dtype(options.precision, device)
    check_flow_options(backbone, options)
    windowing = windowing_for(backbone, options)
    frames_per_row = windowing.clip_len if windowing is not None else 1
    batch_size = options.batch_size or default_batch_size(device, backbone.kind, frames_per_row)
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    options = replace(options, sampling=sampling_for(backbone, options))
    geometry = input_geometry(backbone, options)
    boxes = None
    if options.rois is not None:
        if windowing is not None and backbone.extractor.fixed_size is not None:
            frames, height, width = backbone.extractor.fixed_size
            raise UserError(
                f"--rois needs the whole, uncropped frame, but {backbone.name} only takes clips of exactly {frames} "
                f"frames of {height}x{width}; extract regions with i3d, r3d_18, mc3_18, r2plus1d_18, s3d or swin3d_t"
            )
        boxes = parse_roi_source(
            options.rois, options.max_rois, keys, score_threshold=options.roi_score_threshold,
            classes=list(options.roi_classes) or None, detector_weights=options.detector_weights, device=device,
        )
    grid = grid_for(backbone, options)
    provenance = build_provenance(backbone, options, windowing, boxes, geometry, dataset, classes, n_folds, grid)
    return ExtractionSetup(backbone, RowPlan(geometry, windowing, boxes, grid), device, batch_size, options,
                           provenance)


def check_flow_options(backbone: Backbone, options: ExtractOptions) -> None:
    """A flow store holds one motion descriptor per row: no regions, grids, or compiled OpenCV code."""
    if backbone.describe_flow() is None:
        return
    if options.rois is not None or options.spatial is not None:
        raise UserError("--rois and --spatial do not apply to flow stores (--flow); extract them into the RGB store")
    if options.compile and backbone.describe_flow()["weights"] is None:
        raise UserError(f"--compile does not apply to {backbone.describe_flow()['method']} (OpenCV runs on the host); "
                        "drop --compile, or use --flow raft_small / raft_large")


def new_summary(out: str | os.PathLike, total: int, setup: ExtractionSetup) -> ExtractSummary:
    return ExtractSummary(out=Path(out), total=total, device=str(setup.device), batch_size=setup.batch_size,
                          unit="frames" if setup.plan.windowing is None else "windows")


def videos_to_extract(
    jobs: list[VideoJob], stored: StoredVideos, skip_failed: bool, summary: ExtractSummary
) -> list[VideoJob]:
    """The jobs a (re)run must do: not stored yet, or stored from a source that changed since; earlier failures
    are retried unless ``skip_failed``. Counts the others in ``summary``."""
    todo = []
    for job in jobs:
        if job.key in stored.done and not stored.is_stale(job.key, job.path):
            summary.already_done += 1
        elif skip_failed and job.key in stored.failures:
            summary.skipped_failed += 1
        else:
            summary.stale += job.key in stored.done
            todo.append(job)
    return todo


def extract_videos(
    jobs: list[VideoJob],
    out: str | os.PathLike,
    backbone: Backbone | str,
    options: ExtractOptions,
    dataset: dict,
    classes: list[str],
    n_folds: int,
    weights: str | None = None,
) -> ExtractSummary:
    """Extract every job not already in the store at ``out``; returns what happened, never raises per video."""
    setup = prepare_extraction({job.key for job in jobs}, backbone, options, dataset, classes, n_folds, weights)
    return extract_prepared(setup, jobs, out)


def extract_prepared(
    setup: ExtractionSetup, jobs: list[VideoJob], out: str | os.PathLike, summary: ExtractSummary | None = None
) -> ExtractSummary:
    """``extract_videos`` with the backbone already prepared; ``summary`` may carry counts made by the caller."""
    setup = resolve_dtype(setup, jobs, out)
    options = setup.options
    summary = summary or new_summary(out, len(jobs), setup)
    with StoreWriter(out, setup.provenance, options.commit_every) as writer:
        todo = videos_to_extract(jobs, writer.stored, options.skip_failed, summary)
        if todo:
            with Extractor(setup, min(options.workers or default_workers(), len(todo))) as extractor:
                extractor.run(todo, writer, summary)
    summary.commits = writer.commits  # closing committed the last finished videos
    return summary


AUTO_DTYPE_HEADROOM = 16.0
"""``--dtype auto`` stores float32 when a value of the probed video is above float16's largest / this."""


def resolve_dtype(setup: ExtractionSetup, jobs: list[VideoJob], out: str | os.PathLike) -> ExtractionSetup:
    """``--dtype auto``: the dtype of the store already at ``out``; for a new store, float16 unless the first
    video's features (and regions or grid) come within 1/16 of float16's range, as a checkpoint with unnormalised
    outputs does, then float32. That video is extracted into a temporary float32 store to measure it, so it is
    decoded and run twice; when it fails, float16 (the videos that overflow it fail with the reason)."""
    if setup.options.dtype != "auto":
        return setup
    dtype = _stored_dtype(out) or _probed_dtype(setup, jobs[:1])
    return replace(setup, options=replace(setup.options, dtype=dtype), provenance={**setup.provenance, "dtype": dtype})


def _stored_dtype(out: str | os.PathLike) -> str | None:
    try:
        with open_store(out) as store:
            return str(store.attrs["dtype"])
    except StoreError:
        return None  # no store yet (a damaged one is reported by the writer)


def _probed_dtype(setup: ExtractionSetup, first: list[VideoJob]) -> str:
    probe = replace(setup, options=replace(setup.options, dtype="float32", progress=False, commit_every=0.0),
                    provenance={**setup.provenance, "dtype": "float32"})
    with tempfile.TemporaryDirectory(prefix="vidfeat-dtype-") as tmp:
        extract_prepared(probe, first, Path(tmp) / "probe.h5")
        with open_store(Path(tmp) / "probe.h5") as store:
            if not store.keys():
                return "float16"
            key = store.keys()[0]
            regions, grid = store.rois(key), store.spatial(key)
            values = [store.features(key), *([regions[0]] if regions else []), *([grid] if grid is not None else [])]
    largest = max(float(np.abs(v).max()) for v in values if v.size)
    return "float32" if largest > FLOAT16_MAX / AUTO_DTYPE_HEADROOM else "float16"


class Batcher:
    """Decoded rows waiting for the model, in arrival order: batches are filled across video boundaries, so short
    clips never leave the model half idle."""

    def __init__(self) -> None:
        self._chunks: list[RowChunk] = []
        self.rows = 0

    def add(self, chunk: RowChunk) -> None:
        self._chunks.append(chunk)
        self.rows += len(chunk)

    def drop(self, video: int) -> None:
        """Forget the waiting rows of a video that failed."""
        self._chunks = [c for c in self._chunks if c.video != video]
        self.rows = sum(len(c) for c in self._chunks)

    def take(self, limit: int) -> list[RowChunk]:
        """Up to ``limit`` rows from the front, as chunks; stops early where the input shape changes (uncropped
        frames of differently sized videos cannot share a batch)."""
        taken: list[RowChunk] = []
        count, shape = 0, self._chunks[0].shape
        while count < limit and self._chunks and self._chunks[0].shape == shape:
            head = self._chunks.pop(0)
            if len(head) > limit - count:
                head, rest = head.split(limit - count)
                self._chunks.insert(0, rest)
            taken.append(head)
            count += len(head)
        self.rows -= count
        return taken


class Assembler:
    """Collects each video's rows as the model returns them and stores a video once its last row is back."""

    def __init__(
        self, jobs: list[VideoJob], writer: StoreWriter, summary: ExtractSummary, options: ExtractOptions,
        windows: bool,
    ) -> None:
        self.videos = {i: _Video(job) for i, job in enumerate(jobs)}
        self.ended: set[int] = set()
        self.writer, self.summary, self.options, self.windows = writer, summary, options, windows
        self.bar = tqdm(total=len(jobs), unit="video", disable=not options.progress, dynamic_ncols=True)
        self.start = time.perf_counter()

    def keys(self, chunks: list[RowChunk]) -> list[str]:
        return [self.videos[c.video].job.key for c in chunks]

    def queued(self, chunk: RowChunk) -> None:
        self.videos[chunk.video].queued += len(chunk)

    def add(self, output: BatchOutput) -> None:
        starts = np.cumsum([0] + [len(c) for c in output.chunks])
        for i, chunk in enumerate(output.chunks):
            video = self.videos.get(chunk.video)
            if video is None:  # it failed while this batch was on the device (CUDA returns batches one late)
                continue
            rows = slice(starts[i], starts[i + 1])
            self._keep(video, chunk, output, i, rows)
            video.done += len(chunk)
            self.summary.rows += len(chunk)
        rate = self.summary.rows / (time.perf_counter() - self.start)
        self.bar.set_postfix_str(f"{rate:.1f} {self.summary.unit}/s", refresh=False)
        self.finish_ready()

    def _keep(self, video: _Video, chunk: RowChunk, output: BatchOutput, i: int, rows: slice) -> None:
        """Chunk ``i``'s rows of ``output``, in the stored dtype, unless they (or earlier ones) cannot be stored."""
        dtype = self.options.dtype
        extras = [extra[rows] for extra in (output.regions, output.spatial) if extra is not None]
        video.bad_features = video.bad_features or next(
            filter(None, (feature_problem(values, dtype) for values in (output.features[rows], *extras))), "")
        if video.bad_features:
            return  # the video fails when its last row is back
        video.features.append(output.features[rows].astype(dtype))
        video.timestamps.append(chunk.timestamps)
        video.indices.append(chunk.indices)
        video.ranges.append(chunk.ranges)
        if output.regions is not None:
            video.regions.append((output.regions[rows].astype(dtype), output.boxes[i], output.masks[i]))
        if output.spatial is not None:
            video.spatial.append(output.spatial[rows].astype(dtype))

    def end(self, message: VideoEnd) -> None:
        video = self.videos[message.video]
        video.decoded_frames, video.expected_frames = message.decoded_frames, message.expected_frames
        video.partial = message.partial
        self.ended.add(message.video)
        self.finish_ready()

    def failed(self, message: VideoFailed) -> None:
        video = self.videos[message.video]
        self._fail(video, message.error)
        video.queued = video.done  # its rows still waiting were dropped
        self.ended.add(message.video)
        self.finish_ready()

    def _fail(self, video: _Video, error: str) -> None:
        video.failed = True
        self.writer.add_failure(video.job.key, str(video.job.path), error)
        self.summary.failures.append((str(video.job.path), error))
        self.bar.update(1)

    def finish_ready(self) -> None:
        """Store every video whose last row has been through the model; commit them when the clock says so."""
        for vid in [v for v in self.ended if self.videos[v].done == self.videos[v].queued]:
            self.ended.discard(vid)
            video = self.videos.pop(vid)
            if video.failed:
                continue
            refusal = self._refusal(video)
            if refusal:
                self._fail(video, refusal)
                continue
            try:
                stat = video.job.path.stat()
            except OSError as exc:
                self._fail(video, f"the source disappeared during extraction: {exc.strerror or exc}")
                continue
            self.writer.add(self._record(video, stat))
            self.summary.extracted += 1
            if video.partial:
                self.summary.partial.append((video.job.key, video.partial))
            self.bar.update(1)
        self.writer.commit_if_due()

    def _refusal(self, video: _Video) -> str:
        """Why a fully decoded video must not be stored ("" when it may)."""
        if video.bad_features:
            return video.bad_features
        if video.partial and self.options.strict:
            return f"{video.partial} (--strict turns partial decodes into failures)"
        return ""

    def _record(self, video: _Video, stat: os.stat_result) -> VideoRecord:
        return VideoRecord(
            key=video.job.key,
            features=np.concatenate(video.features),
            timestamps=np.concatenate(video.timestamps),
            frame_indices=np.concatenate(video.indices),
            frame_ranges=np.concatenate(video.ranges) if self.windows else None,
            **_concat_regions(video.regions),
            spatial=np.concatenate(video.spatial) if video.spatial else None,
            label=video.job.label,
            splits=video.job.splits,
            source=str(video.job.path),
            source_size=stat.st_size,
            source_mtime=stat.st_mtime,
            decoded_frames=video.decoded_frames,
            expected_frames=video.expected_frames,
            partial=video.partial,
        )

    def close(self) -> None:
        self.bar.close()
        self.summary.seconds = time.perf_counter() - self.start


def model_settings(
    backbone: Backbone, plan: RowPlan, device: torch.device, batch_size: int, options: ExtractOptions
) -> ModelSettings:
    """Frozen graphs (the architecture's fastest kind) are the CPU default for frame backbones on their fixed
    crop, with their spatial grid when one is stored; regions and clips run eagerly, as does ``--eager``;
    ``--compile`` compiles any of them."""
    if options.eager and options.compile:
        raise UserError("--eager and --compile exclude each other; choose one")
    if options.compile and plan.boxes is not None:
        raise UserError("--compile does not apply with --rois (region maps come from the eager backbone); drop one")
    if options.compile and plan.grid is not None:
        raise UserError("--compile does not apply with --spatial (grids come from the eager backbone); drop one")
    crop = plan.geometry.crop
    if options.compile:
        return ModelSettings(options.precision, "compiled", (batch_size,))
    if (options.eager or device.type != "cpu" or backbone.kind != "frame" or plan.boxes is not None or not crop
            or options.precision == "bf16"):  # frozen graphs are traced in fp32
        return ModelSettings(options.precision)
    return ModelSettings(options.precision, backbone.cpu_graph, (batch_size, crop, crop, 3), plan.grid)


class _Extraction:
    """Routes the pool's messages: rows to the batcher (full batches to the device stage, outputs to the
    assembler), ends and failures to the assembler. Region boxes are checked against each video's first rows."""

    def __init__(self, stage: DeviceStage, plan: RowPlan, batch_size: int, assembler: Assembler) -> None:
        self.stage, self.plan, self.batch_size, self.assembler = stage, plan, batch_size, assembler
        self.batcher = Batcher()
        self.checked: set[int] = set()
        self.rejected: set[int] = set()

    def handle(self, message: PoolMessage) -> None:
        if message.video in self.rejected:
            return
        if isinstance(message, RowChunk):
            if self._boxes_fit(message):
                self.assembler.queued(message)
                self.batcher.add(message)
                self.run_batches(self.batch_size)
        elif isinstance(message, VideoEnd):
            self.assembler.end(message)
        else:
            self.batcher.drop(message.video)
            self.assembler.failed(message)

    def _boxes_fit(self, chunk: RowChunk) -> bool:
        """Whether the region source can give boxes for this video; a video it cannot is failed, not decoded on."""
        if self.plan.boxes is None or chunk.video in self.checked:
            return True
        self.checked.add(chunk.video)
        try:
            self.plan.boxes.check(self.assembler.keys([chunk])[0], *chunk.size)
            return True
        except ValueError as exc:
            self.rejected.add(chunk.video)
            self.assembler.failed(VideoFailed(chunk.video, str(exc)))
            return False

    def run_batches(self, minimum: int) -> None:
        """Run batches while at least ``minimum`` (>= 1) rows wait."""
        while self.batcher.rows >= minimum:
            chunks = self.batcher.take(self.batch_size)
            for output in self.stage.submit(chunks, self.assembler.keys(chunks)):
                self.assembler.add(output)

    def finish(self) -> None:
        """The tail: the last rows, the batches still on the device, and the videos they complete."""
        self.run_batches(1)
        for output in self.stage.flush():
            self.assembler.add(output)
        self.assembler.finish_ready()


class Extractor:
    """The decode pool, the model and its device stage, built once and reused for any number of video lists
    (a Dask worker keeps one for the whole run): decode pool -> batcher -> device stage -> assembler."""

    def __init__(self, setup: ExtractionSetup, decode_workers: int | None = None) -> None:
        self.setup = setup
        plan, batch_size = setup.plan, setup.batch_size
        spec = DecodeSpec(setup.options.sampling, plan.geometry, plan.windowing,
                          chunk_rows=min(batch_size, MAX_CHUNK_ROWS))
        self.pool = DecodePool(spec, decode_workers, setup.options.video_timeout)  # first: starts while the model builds
        try:
            settings = model_settings(setup.backbone, plan, setup.device, batch_size, setup.options)
            self.stage = DeviceStage(Model(setup.backbone, setup.device, settings), plan.boxes, plan.grid)
        except BaseException:
            self.pool.close()
            raise

    def run(
        self, jobs: list[VideoJob], writer: StoreWriter, summary: ExtractSummary, stop: threading.Event | None = None
    ) -> None:
        """Extract ``jobs`` into ``writer`` (stored and committed as they finish), until every video is done or
        Ctrl-C (or ``stop``, set from another thread) interrupts the run."""
        setup = self.setup
        assembler = Assembler(jobs, writer, summary, setup.options, setup.plan.windowing is not None)
        extraction = _Extraction(self.stage, setup.plan, setup.batch_size, assembler)
        try:
            for message in self.pool.messages([job.path for job in jobs]):
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                extraction.handle(message)
            extraction.finish()
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            assembler.close()

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "Extractor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
