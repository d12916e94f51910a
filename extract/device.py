"""The device stage: batches of uint8 rows in, float features out, as fast as the device allows.

* CPU: fp32, and for frame backbones a frozen TorchScript graph (conv + BN folded, oneDNN fusions; for ResNets
  in oneDNN's blocked layout), measured faster than eager with the same features; each batch completes before
  the next is taken.
* CUDA: the batch is assembled straight into a pinned staging buffer, uploaded as uint8 on a side stream (so batch
  n+1 uploads while batch n computes), normalised and made channels_last on the device inside the extractor, run
  under fp16/bf16 autocast, and copied back asynchronously into pinned memory. ``submit`` returns a batch's
  features one batch later, so the host assembles and stores batch n-1 while the device runs batch n, and the
  decode pool's processes keep decoding all along.
* ``--compile`` wraps the extractor in ``torch.compile`` instead (on either device).
* Spatial grids of a frame backbone on the CPU come from a frozen graph too: the extractor traced together with
  the grid's pooling, returning the global vector and the grid, within 1e-4 of eager's (not bit-identical: BN is
  folded) and 1.6x as fast (lite0, 4x4 grid, batch 8 on 2 busy cores: 16.9 frames/s, eager 10.6; the plain
  frozen graph 20.2).
"""
from __future__ import annotations

import warnings
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from vidfeat.extract.backbones import Backbone
from vidfeat.extract.decode_pool import RowChunk
from vidfeat.extract.rois import BoxSource, pool_regions
from vidfeat.extract.spatial import LAST_LAYER, SpatialGrid
from vidfeat.features.cpu import cpu_has_native_bf16
from vidfeat.features.errors import UserError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; an unavailable CUDA request fails loudly instead of silently using CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was requested but CUDA is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported --device {name}; use auto, cpu, cuda or cuda:N")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Reduced precision where it pays: CUDA tensor cores (auto = fp16), and on request bf16 on CPUs that run it
    natively (resnet50 1.9x fp32 on 2 Zen 4 cores, but features 0.5-10% off fp32's, so CPU runs fp32 unless
    asked)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]
    if precision == "fp16":
        raise UserError(f"--precision fp16 needs a CUDA device; use fp32 (or bf16 where the CPU has it) on {device}")
    if precision == "bf16" and not cpu_has_native_bf16():
        raise UserError("--precision bf16 on CPU needs native bfloat16 (AVX512-BF16 or AMX), which this CPU lacks; "
                         "use --precision fp32")
    return torch.bfloat16 if precision == "bf16" else None


def default_batch_size(device: torch.device, kind: str = "frame", frames_per_row: int = 1) -> int:
    """Frames: 8 is the measured sweet spot with channels_last on a 2-core CPU; GPUs want far bigger batches.
    Clip windows are tens of frames each, so a few make a batch (more of the short windows of flow pairs)."""
    if kind == "clip":
        return max(16, 256 // frames_per_row) if device.type == "cuda" else max(2, 32 // frames_per_row)
    return 128 if device.type == "cuda" else 8


def freeze_graph(extractor: nn.Module, input_shape: tuple[int, ...], mkldnn: bool = False) -> torch.jit.ScriptModule:
    """The extractor traced on one uint8 row of ``input_shape`` and frozen: weights become constants, conv + BN
    are folded and oneDNN fuses what it can; ``mkldnn`` also converts the graph to oneDNN's blocked layout
    (``torch.jit.optimize_for_inference``). Features stay within 1e-4 of eager's (tested). The graph takes any
    batch size, so it is traced on a single row: tracing runs the model once, and resnet50 traced on 8 rows took
    0.6-1.0 s against 0.2 s on one, with the same speed afterwards. The tracer's own check (a second and third
    forward pass, 2 s for resnet50) is skipped: the tests compare the graphs with eager on other batch sizes."""
    example = torch.zeros((1, *input_shape[1:]), dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the input checks it drops
        traced = torch.jit.trace(extractor, example, check_trace=False)
        return torch.jit.optimize_for_inference(traced) if mkldnn else torch.jit.freeze(traced)


GRAPHS = ("eager", "frozen", "frozen_mkldnn", "compiled")


class GridOutputs(nn.Module):
    """A frame extractor plus the pooling of ``grid``: uint8 frames -> (global vectors [B, D], cells [B, S*S, Dg]),
    the outputs ``Model.with_maps`` gives for a frame batch with a grid, as one module that a frozen graph holds."""

    def __init__(self, extractor: nn.Module, grid: SpatialGrid) -> None:
        super().__init__()
        self.extractor, self.grid = extractor, grid

    def forward(self, frames_uint8_nhwc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map, layer_map = self.extractor.feature_maps(frames_uint8_nhwc, self.grid.layer)
        return feature_map.float().mean(dim=(2, 3)), self.grid.pool(layer_map)


@dataclass(frozen=True)
class ModelSettings:
    """How the backbone runs: op by op (eager), as a frozen TorchScript graph traced on ``input_shape`` (the CPU
    default for frame backbones; "frozen_mkldnn" in oneDNN's layout), or through torch.compile."""

    precision: str = "auto"
    graph: str = "eager"
    input_shape: tuple[int, ...] | None = None  # a full batch; frozen graphs trace one row, compiled ones its size
    grid: SpatialGrid | None = None  # frozen graphs: also pool this grid (frame backbones), see GridOutputs

    def __post_init__(self) -> None:
        if self.graph not in GRAPHS:
            raise ValueError(f"unknown graph {self.graph!r}; choose one of {', '.join(GRAPHS)}")
        if self.graph != "eager" and self.input_shape is None:
            raise ValueError(f"a {self.graph} graph needs the batch's input_shape")


class Model:
    """The backbone on its device, with the precision and graph that are fastest there."""

    def __init__(self, backbone: Backbone, device: torch.device, settings: ModelSettings) -> None:
        self.device = device
        self.extractor = backbone.extractor.to(device).eval()
        self.amp = autocast_dtype(settings.precision, device)
        self.full_batch = settings.input_shape[0] if settings.graph == "compiled" else None
        self.grid = settings.grid if settings.graph in ("frozen", "frozen_mkldnn") else None
        if self.grid is not None:  # the graph returns (features, grid): what with_maps gives, not what run gives
            self.forward = freeze_graph(GridOutputs(self.extractor, self.grid).eval(), settings.input_shape,
                                        settings.graph == "frozen_mkldnn")
        elif settings.graph == "compiled":
            self.forward = torch.compile(self.extractor, dynamic=False)
        elif settings.graph in ("frozen", "frozen_mkldnn"):
            self.forward = freeze_graph(self.extractor, settings.input_shape, settings.graph == "frozen_mkldnn")
        else:
            self.forward = self.extractor

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of a batch on the device, under autocast. A compiled graph always sees the full batch (a short
        last batch is padded with copies of its last row), so it is compiled once."""
        rows = len(batch)
        if self.full_batch is not None and rows < self.full_batch:
            batch = torch.cat([batch, batch[-1:].expand(self.full_batch - rows, *batch.shape[1:])])
        with self.autocast():
            out = self.forward(batch)
            return (out[0] if self.grid is not None else out)[:rows]

    def _to_device(self, frames: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(frames)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """Features of one batch, synchronously."""
        return self.run(self._to_device(frames)).float().cpu().numpy()

    @torch.inference_mode()
    def with_maps(
        self, pixels: np.ndarray, centres: np.ndarray, boxes: np.ndarray | None, grid: SpatialGrid | None
    ) -> RowMaps:
        """Global features plus [B, R, D] region features (``boxes``) and [B, S*S, D] spatial grids (``grid``)
        from one pass over the frames or clips.

        A clip's map is [B, D, T', H', W'], one spatial map per output time step; a window's boxes belong to the
        frame at position ``centre``, so its regions and grid are pooled from the time step whose input span
        holds that frame (I3D: one step per 8 input frames), where the boxes and the map show the same moment."""
        if self.grid is not None and grid == self.grid and boxes is None and pixels.ndim == 4:
            with self.autocast():
                features, spatial = self.forward(self._to_device(pixels))
            return RowMaps(features.float().cpu().numpy(), None, spatial.float().cpu().numpy())
        with self.autocast():
            if pixels.ndim == 5:
                features, clip_map = self.extractor.features_and_map(self._to_device(pixels))
                steps = torch.from_numpy(centres * clip_map.shape[2] // pixels.shape[1]).to(self.device)
                feature_map = clip_map[torch.arange(len(pixels), device=self.device), :, steps]
                layer_map = feature_map
            else:
                layer = grid.layer if grid is not None else LAST_LAYER
                feature_map, layer_map = self.extractor.feature_maps(self._to_device(pixels), layer)
                features = feature_map.float().mean(dim=(2, 3))
        regions = (pool_regions(feature_map, torch.from_numpy(boxes).to(self.device), pixels.shape[-3:-1])
                   if boxes is not None else None)
        spatial = grid.pool(layer_map) if grid is not None else None
        return RowMaps(features.float().cpu().numpy(), *(None if t is None else t.cpu().numpy()
                                                         for t in (regions, spatial)))


@dataclass
class RowMaps:
    """One pass's outputs beyond the global vectors, row-aligned with the batch; None where not asked for."""

    features: np.ndarray
    regions: np.ndarray | None
    spatial: np.ndarray | None


@dataclass
class BatchOutput:
    """Device stage -> assembler: the features of one batch, row-aligned with its chunks; for region stores also
    each row's region features and each chunk's boxes and masks; for spatial stores each row's grid."""

    chunks: list[RowChunk]
    features: np.ndarray
    regions: np.ndarray | None = None
    boxes: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    spatial: np.ndarray | None = None


def _box_frames(pixels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The frames boxes are found on: the frames themselves, or each window's centre frame (what detectors see)."""
    return pixels if pixels.ndim == 4 else pixels[np.arange(len(pixels)), centres]


@dataclass
class _InFlight:
    """A CUDA batch whose features are still being computed and copied back into ``host``."""

    chunks: list[RowChunk]
    host: torch.Tensor
    done: torch.cuda.Event


class _CudaOverlap:
    """Pinned staging buffers (two, used in turn), uploads on a side stream, asynchronous downloads."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.copy_stream = torch.cuda.Stream(model.device)
        self.staging: list[torch.Tensor | None] = [None, None]
        self.turn = 0
        self.in_flight: deque[_InFlight] = deque()

    def _stage(self, chunks: list[RowChunk]) -> torch.Tensor:
        """The batch's rows copied straight into a pinned buffer (grown when a batch does not fit)."""
        rows, shape = sum(len(c) for c in chunks), chunks[0].shape
        buffer = self.staging[self.turn]
        if buffer is None or buffer.shape[1:] != shape or len(buffer) < rows:
            buffer = torch.empty((rows, *shape), dtype=torch.uint8, pin_memory=True)
            self.staging[self.turn] = buffer
        self.turn = 1 - self.turn
        np.concatenate([c.pixels for c in chunks], out=buffer[:rows].numpy())
        return buffer[:rows]

    @torch.inference_mode()
    def submit(self, chunks: list[RowChunk]) -> list[BatchOutput]:
        """Start a batch; returns the batches that finished, keeping at most one in flight.

        Staging buffer reuse is safe: a buffer is refilled two batches later, after the batch that used it has
        been waited for, and that batch's compute came after its upload on the stream order."""
        host_batch = self._stage(chunks)
        compute = torch.cuda.current_stream(self.model.device)
        with torch.cuda.stream(self.copy_stream):
            batch = host_batch.to(self.model.device, non_blocking=True)
        compute.wait_stream(self.copy_stream)
        batch.record_stream(compute)  # allocated on the copy stream, used on the compute stream
        features = self.model.run(batch)
        host = torch.empty(features.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(features.float(), non_blocking=True)
        done = torch.cuda.Event()
        done.record(compute)
        self.in_flight.append(_InFlight(chunks, host, done))
        return [self._collect() for _ in range(len(self.in_flight) - 1)]

    def _collect(self) -> BatchOutput:
        batch = self.in_flight.popleft()
        batch.done.synchronize()
        return BatchOutput(batch.chunks, batch.host.numpy())

    def flush(self) -> list[BatchOutput]:
        return [self._collect() for _ in range(len(self.in_flight))]


class DeviceStage:
    """Batches in, BatchOutputs out, in submission order. Batches with regions (boxes found on the host, maps
    pooled on the device) or spatial grids, and CPU batches, complete in ``submit``; plain CUDA batches overlap
    (see ``_CudaOverlap``)."""

    def __init__(self, model: Model, boxes: BoxSource | None, grid: SpatialGrid | None = None) -> None:
        self.model, self.boxes, self.grid = model, boxes, grid
        plain = boxes is None and grid is None
        self.overlap = _CudaOverlap(model) if model.device.type == "cuda" and plain else None

    def submit(self, chunks: list[RowChunk], keys: list[str]) -> list[BatchOutput]:
        """Run one batch (``keys``: each chunk's video key, for its boxes); returns the batches now finished."""
        if self.overlap is not None:
            return self.overlap.submit(chunks)
        pixels = np.concatenate([c.pixels for c in chunks])
        if self.boxes is None and self.grid is None:
            return [BatchOutput(chunks, self.model(pixels))]
        chunk_boxes, chunk_masks = [], []
        if self.boxes is not None:
            found = [self.boxes.boxes(key, c.indices, *c.size, _box_frames(c.pixels, c.centres))
                     for key, c in zip(keys, chunks)]
            chunk_boxes, chunk_masks = (list(part) for part in zip(*found))
        centres = np.concatenate([c.centres for c in chunks])
        maps = self.model.with_maps(pixels, centres, np.concatenate(chunk_boxes) if chunk_boxes else None, self.grid)
        return [BatchOutput(chunks, maps.features, maps.regions, chunk_boxes, chunk_masks, maps.spatial)]

    def flush(self) -> list[BatchOutput]:
        """The batches still on the device."""
        return self.overlap.flush() if self.overlap is not None else []
