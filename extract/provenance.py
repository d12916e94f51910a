"""The extractor's side of provenance: the record a store keeps of how its features were made
(:func:`build_provenance`), and its inverse for new videos: the options and the backbone that give them the same
rows (:func:`reproducing_options`, :func:`backbone_for`, used by ``predict``). What counts as "the same" is the
one rule in :mod:`vidfeat.features.provenance`.
"""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch

from vidfeat.extract.backbones import Backbone, create_backbone, detector_categories
from vidfeat.extract.options import ExtractOptions, input_geometry
from vidfeat.extract.rois import ROI_OUTPUT_SIZE, BoxSource
from vidfeat.extract.spatial import SpatialGrid
from vidfeat.extract.video import Geometry, Sampling, backend_versions
from vidfeat.extract.windows import Windowing
from vidfeat.features.errors import UserError
from vidfeat.features.provenance import ProvenanceMismatch, differences


def software_versions() -> dict:
    import h5py

    try:
        opencv = {"opencv": version("opencv-contrib-python-headless")}  # flow methods
    except PackageNotFoundError:
        opencv = {}
    return {
        "vidfeat": version("vidfeat"), "torch": torch.__version__, "torchvision": version("torchvision"),
        **backend_versions(), "h5py": h5py.__version__, "numpy": np.__version__, **opencv,
        "python": platform.python_version(),
    }


def describe_preprocessing(backbone: Backbone, geometry: Geometry) -> dict:
    """The provenance record of the weights' preprocessing at the geometry frames are decoded to."""
    return {**backbone.preprocessing.describe(), "resize": geometry.resize, "crop": geometry.crop}


def build_provenance(
    backbone: Backbone, options: ExtractOptions, windowing: Windowing | None, boxes: BoxSource | None,
    geometry: Geometry, dataset: dict, classes: list[str], n_folds: int, grid: SpatialGrid | None = None,
) -> dict:
    """Everything that defines what the stored numbers mean, plus how and where they were made."""
    return {
        "kind": backbone.kind,
        "window": windowing.describe() if windowing is not None else None,
        "rois": {**boxes.describe(), "feature_dim": backbone.extractor.feature_dim,
                 "pooling": f"roi_align {ROI_OUTPUT_SIZE}x{ROI_OUTPUT_SIZE} on the last map, then max",
                 **({"boxes_at": "the window's centre frame",
                     "time_step": "the output time step whose input span holds the centre frame"}
                    if windowing is not None else {})}
        if boxes is not None else None,
        "spatial": grid.describe(windowing is not None) if grid is not None else None,
        "flow": backbone.describe_flow(),
        "backbone": backbone.name,
        "weights": backbone.weights_id,
        "feature_dim": backbone.extractor.feature_dim,
        "dtype": options.dtype,
        "preprocessing": describe_preprocessing(backbone, geometry),
        "sampling": options.sampling.describe(),
        "dataset": dataset.get("name"),
        "dataset_root": str(dataset.get("root", "")),
        "classes": list(classes),
        "n_folds": int(n_folds),
        "software": software_versions(),
    }


def backbone_for(provenance: dict, options: ExtractOptions, weights: str | None = None) -> Backbone:
    """Rebuild the backbone a store was made with, and prove it is the same one: its weights, and the
    preprocessing the runner records for it under ``options`` (:func:`reproducing_options`), compare equal by
    the one provenance rule."""
    recorded = provenance["weights"]
    if recorded == "none":
        weights = "none"  # seeded random init: reproducible
    elif recorded.startswith("sha256:") and weights is None:
        raise UserError(f"these features were extracted with a weights file ({recorded}); pass it with --weights FILE")
    backbone = create_backbone(provenance["backbone"], weights, options.flow_weights)
    rebuilt = {"weights": backbone.weights_id,
               "preprocessing": describe_preprocessing(backbone, input_geometry(backbone, options)),
               "flow": backbone.describe_flow()}
    mismatches = differences(provenance, rebuilt, rebuilt, ("recorded", "vs available"))
    if mismatches:
        raise ProvenanceMismatch("cannot reproduce the features this run was trained on:\n" + "\n".join(mismatches))
    return backbone


def _region_options(provenance: dict, detector_weights: str | None) -> dict:
    """Extraction options that reproduce a store's regions for new videos. Box files only cover the videos
    they were written for, so only grid and detector sources can be reproduced."""
    rois = provenance.get("rois")
    if rois is None:
        return {}
    source = rois["source"]
    if source.startswith("file:"):
        raise UserError(
            f"this run's regions came from a box file ({source}), which has no boxes for new videos; "
            "train on a store extracted with --rois grid:RxC or detector:NAME to predict on new videos"
        )
    options = {"rois": source, "max_rois": None if source.startswith("grid:") else rois["max_rois"],
               "roi_size": provenance["preprocessing"]["resize"]}
    if source.startswith("detector:"):
        categories = detector_categories(source.removeprefix("detector:"))
        options.update(roi_score_threshold=rois["score_threshold"],
                       roi_classes=tuple(categories[i] for i in rois.get("classes") or ()),
                       detector_weights=_detector_weights(rois["weights"], detector_weights))
    return options


def _spatial_options(provenance: dict) -> dict:
    """Extraction options that reproduce a store's spatial grid (size and layer) for new videos."""
    spatial = provenance.get("spatial")
    if spatial is None:
        return {}
    return {"spatial": int(spatial["grid"]), "spatial_layer": spatial["layer"]}


def _detector_weights(recorded: str, given: str | None) -> str | None:
    """The detector weights to find new videos' boxes with: the user's file, or what the store recorded."""
    if given is not None:
        return given  # predict checks the boxes' provenance against the run's after extracting
    if recorded.startswith("sha256:"):
        raise UserError(
            f"this run's regions were found with a detector weights file ({recorded}); pass that file with "
            "--detector-weights FILE so that new videos get boxes from the same detector"
        )
    return "none" if recorded == "none" else None  # None: the default weights, as recorded


def _flow_weights(provenance: dict, given: str | None) -> str | None:
    """The RAFT weights to compute new videos' flow with: the user's file, or what the store recorded; None for a
    store without RAFT flow (so one ``--flow-weights`` serves the flow stream of a two-stream run)."""
    recorded = (provenance.get("flow") or {}).get("weights")
    if recorded is None:
        return None
    if given is not None:
        return given
    if recorded.startswith("sha256:"):
        raise UserError(f"this run's flow was computed with a RAFT weights file ({recorded}); pass that file with "
                        "--flow-weights FILE")
    return "none" if recorded == "none" else None  # None: the default weights, as recorded


def reproducing_options(
    provenance: dict, device: str = "auto", detector_weights: str | None = None, flow_weights: str | None = None
) -> ExtractOptions:
    """Extraction options that give new videos the rows a store's videos have: its sampling, dtype, clip
    windows, regions, grid and flow weights (the backbone and preprocessing are checked by `backbone_for`)."""
    window = provenance.get("window") or {}
    return ExtractOptions(
        sampling=Sampling.from_description(provenance["sampling"]), device=device, dtype=provenance["dtype"],
        clip_len=window.get("clip_len"), clip_stride=window.get("stride"), progress=False,
        flow_weights=_flow_weights(provenance, flow_weights),
        **_region_options(provenance, detector_weights), **_spatial_options(provenance),
    )
