"""What a user asks of an extraction (:class:`ExtractOptions`, the ``vidfeat extract`` flags), and the rules that
turn those options and a backbone into what the model sees: sampling, clip windows, input geometry, spatial grid.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from vidfeat.extract.backbones import Backbone
from vidfeat.extract.spatial import SpatialGrid, spatial_grid
from vidfeat.extract.video import Geometry, Sampling
from vidfeat.extract.windows import Windowing
from vidfeat.features.errors import UserError


@dataclass
class ExtractOptions:
    """The `vidfeat extract` options, as one value the runner, the Dask workers and `predict` pass around."""

    sampling: Sampling = field(default_factory=Sampling)
    clip_len: int | None = None      # clip backbones: frames per window (default: what the weights expect)
    clip_stride: int | None = None   # clip backbones: frames between window starts (default: the backbone's)
    rois: str | None = None          # region boxes: file:BOXES.csv | grid:RxC | detector:NAME
    max_rois: int | None = None      # R region slots per row (padded and masked)
    roi_size: int | None = None      # short side of the full, uncropped frame when regions are extracted
    roi_score_threshold: float = 0.5
    roi_classes: tuple[str, ...] = ()
    detector_weights: str | None = None
    flow_weights: str | None = None  # flow backbones with RAFT: its weights (name, file or none)
    spatial: int | None = None       # S: also store the map average-pooled to S x S cells per row
    spatial_layer: str | None = None  # frame backbones: the trunk stage the grid is pooled from (default: last)
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None      # decode processes (default: the cores minus one, at least one)
    video_timeout: float | None = None  # seconds a decoder may produce nothing before its video fails
    commit_every: float = 5.0        # seconds between commits of finished videos (0: after every batch)
    eager: bool = False              # CPU: run the model op by op instead of as a frozen graph
    compile: bool = False            # torch.compile the backbone (either device)
    precision: str = "auto"
    dtype: str = "float16"
    strict: bool = False
    skip_failed: bool = False
    progress: bool = True


def windowing_for(backbone: Backbone, options: ExtractOptions) -> Windowing | None:
    """The sliding-window config of a clip backbone (None for per-frame backbones)."""
    if backbone.kind != "clip":
        if options.clip_len is not None or options.clip_stride is not None:
            raise UserError(f"--clip-len/--clip-stride apply to clip backbones; {backbone.name} works per frame")
        return None
    clip_len = options.clip_len or backbone.clip_len
    backbone.check_clip_len(clip_len)
    return Windowing(clip_len, options.clip_stride or backbone.stride_for(clip_len))


def sampling_for(backbone: Backbone, options: ExtractOptions) -> Sampling:
    """Clip backbones default to the frame rate their weights were trained at (motion speed matters to them);
    frame backbones default to every frame."""
    if backbone.kind == "clip" and options.sampling == Sampling() and backbone.frame_rate:
        return Sampling(fps=backbone.frame_rate)
    return options.sampling


def grid_for(backbone: Backbone, options: ExtractOptions) -> SpatialGrid | None:
    """The spatial grid ``--spatial``/``--spatial-layer`` ask of this backbone (None without ``--spatial``)."""
    if options.spatial is None:
        if options.spatial_layer is not None:
            raise UserError("--spatial-layer only applies with --spatial S")
        return None
    body = backbone.extractor.body if backbone.kind == "frame" else None
    return spatial_grid(options.spatial, options.spatial_layer, backbone.kind, backbone.extractor.feature_dim, body)


def input_geometry(backbone: Backbone, options: ExtractOptions) -> Geometry:
    """The weights' own resize/crop; with regions, the whole frame (no crop) so boxes near the border survive."""
    geometry = backbone.preprocessing.geometry()
    if options.rois is None:
        if options.roi_size is not None:
            raise UserError("--roi-size only applies with --rois")
        return geometry
    return Geometry(options.roi_size or geometry.resize, None, geometry.interpolation)
