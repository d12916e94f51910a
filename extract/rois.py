"""Region-of-interest boxes per sampled frame, and region features pooled from the backbone's last map.

A box source answers "which R boxes does row t of this video have"; boxes are stored normalised to [0, 1]
(x1, y1, x2, y2) relative to the upright (display) frame, padded to R slots with a mask. Region features are
``roi_align`` (7x7, on the backbone's last spatial map of the full, uncropped frame) max-pooled to D, as in
Wang & Gupta's space-time region graphs. Rows of clip stores are windows: their boxes are those of the window's
centre frame, pooled from the clip map's output time step that covers it (the runner picks the step).
"""
from __future__ import annotations

import bisect
import csv
import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import roi_align

from vidfeat.features.errors import UserError

ROI_OUTPUT_SIZE = 7
DETECTORS = ("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2")
BOX_COLUMNS = ("video", "frame", "x1", "y1", "x2", "y2")


class BoxSource(Protocol):
    max_rois: int

    def describe(self) -> dict: ...

    def check(self, key: str, width: int, height: int) -> None:
        """Raise ValueError when this source cannot give valid boxes for the video (runs before decoding)."""

    def boxes(self, key: str, indices: np.ndarray, width: int, height: int, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes [n, R, 4] float32 in [0, 1], mask [n, R] bool) for rows with source frame ``indices``."""


@dataclass(frozen=True)
class GridBoxes:
    """A fixed rows x cols grid plus the whole frame: regions without any detector."""

    rows: int
    cols: int

    @property
    def max_rois(self) -> int:
        return self.rows * self.cols + 1

    def describe(self) -> dict:
        return {"source": f"grid:{self.rows}x{self.cols}", "max_rois": self.max_rois}

    def check(self, key: str, width: int, height: int) -> None:
        return None

    def boxes(self, key, indices, width, height, pixels):
        cells = [
            (c / self.cols, r / self.rows, (c + 1) / self.cols, (r + 1) / self.rows)
            for r in range(self.rows) for c in range(self.cols)
        ]
        grid = np.array([(0.0, 0.0, 1.0, 1.0), *cells], dtype=np.float32)
        n = len(indices)
        return np.broadcast_to(grid, (n, *grid.shape)).copy(), np.ones((n, self.max_rois), dtype=bool)


class FileBoxes:
    """Boxes from a CSV: ``video,frame,x1,y1,x2,y2[,score][,track]`` in source pixels (display orientation).

    A sampled frame without boxes of its own takes those of the nearest annotated frame; the R highest-scoring
    boxes are kept.
    """

    def __init__(self, path: str | os.PathLike, max_rois: int | None, keys: set[str]) -> None:
        self.path = Path(path)
        self.by_video: dict[str, dict[int, list[tuple[float, tuple[float, float, float, float]]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        try:
            handle = open(self.path, newline="")
        except OSError as exc:
            raise UserError(f"cannot read the boxes file {self.path}: {exc.strerror or exc}") from exc
        with handle:
            reader = csv.DictReader(handle)
            missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(
                    f"{self.path} lacks column(s) {', '.join(missing)}; the header must be "
                    "video,frame,x1,y1,x2,y2[,score][,track]"
                )
            for line, row in enumerate(reader, start=2):
                try:
                    frame = int(row["frame"])
                    x1, y1, x2, y2 = (float(row[c]) for c in ("x1", "y1", "x2", "y2"))
                    score = float(row["score"]) if row.get("score") not in (None, "") else 1.0
                except ValueError as exc:
                    raise UserError(f"{self.path}:{line}: {exc}; frame must be an integer, coordinates numbers") from None
                if frame < 0 or not (0 <= x1 < x2 and 0 <= y1 < y2):
                    raise UserError(
                        f"{self.path}:{line}: invalid box (frame {frame}, {x1},{y1},{x2},{y2}); "
                        "need frame >= 0 and 0 <= x1 < x2, 0 <= y1 < y2 in pixels"
                    )
                self.by_video[row["video"]][frame].append((score, (x1, y1, x2, y2)))
        unknown = sorted(set(self.by_video) - keys)
        if unknown:
            raise UserError(
                f"{self.path} has boxes for {len(unknown)} video key(s) not in this extraction, e.g. {unknown[:3]}; "
                "the video column must hold keys as `vidfeat features info` lists them (path without extension)"
            )
        busiest = max((len(b) for frames in self.by_video.values() for b in frames.values()), default=1)
        self.max_rois = max_rois or busiest
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self._frames = {key: sorted(frames) for key, frames in self.by_video.items()}

    def describe(self) -> dict:
        return {"source": f"file:{self.path.resolve()}", "sha256": self.sha256, "max_rois": self.max_rois}

    def check(self, key: str, width: int, height: int) -> None:
        for frame, boxes in self.by_video.get(key, {}).items():
            for _, (x1, y1, x2, y2) in boxes:
                if x2 > width or y2 > height:
                    raise UserError(
                        f"box ({x1},{y1},{x2},{y2}) at frame {frame} lies outside the {width}x{height} frame; "
                        f"boxes in {self.path} must use the video's display pixel coordinates"
                    )

    def _nearest(self, key: str, index: int) -> list:
        frames = self._frames.get(key)
        if not frames:
            return []
        i = bisect.bisect_left(frames, index)
        candidates = frames[max(0, i - 1):i + 1]
        return self.by_video[key][min(candidates, key=lambda f: abs(f - index))]

    def boxes(self, key, indices, width, height, pixels):
        out = np.zeros((len(indices), self.max_rois, 4), dtype=np.float32)
        mask = np.zeros((len(indices), self.max_rois), dtype=bool)
        scale = np.array([width, height, width, height], dtype=np.float32)
        for row, index in enumerate(indices):
            best = sorted(self._nearest(key, int(index)), key=lambda b: -b[0])[: self.max_rois]
            for slot, (_, box) in enumerate(best):
                out[row, slot] = np.array(box, dtype=np.float32) / scale
                mask[row, slot] = True
        return out, mask


class DetectorBoxes:
    """Top-R boxes of a torchvision detector (score threshold; the detector applies NMS), optional class filter."""

    def __init__(self, name: str, max_rois: int, score_threshold: float, classes: list[str] | None,
                 weights: str | None, device: torch.device) -> None:
        from vidfeat.extract.backbones import load_detector

        self.name, self.max_rois, self.score_threshold = name, max_rois, score_threshold
        self.model, self.weights_id, categories = load_detector(name, weights)
        self.model.to(device).eval()
        self.device = device
        self.class_ids = None
        if classes:
            unknown = [c for c in classes if c not in categories]
            if unknown:
                raise UserError(f"unknown detector class(es) {unknown}; COCO classes include {categories[1:8]}...")
            self.class_ids = {categories.index(c) for c in classes}

    def describe(self) -> dict:
        return {"source": f"detector:{self.name}", "weights": self.weights_id, "max_rois": self.max_rois,
                "score_threshold": self.score_threshold,
                "classes": sorted(self.class_ids) if self.class_ids is not None else None}

    def check(self, key: str, width: int, height: int) -> None:
        return None

    @torch.inference_mode()
    def boxes(self, key, indices, width, height, pixels):
        images = [torch.from_numpy(p).to(self.device).permute(2, 0, 1).float().div(255) for p in pixels]
        out = np.zeros((len(images), self.max_rois, 4), dtype=np.float32)
        mask = np.zeros((len(images), self.max_rois), dtype=bool)
        h, w = pixels.shape[1:3]
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        for row, detections in enumerate(self.model(images)):
            keep = detections["scores"] >= self.score_threshold
            if self.class_ids is not None:
                keep &= torch.tensor([int(c) in self.class_ids for c in detections["labels"]], dtype=torch.bool,
                                     device=keep.device)
            chosen = detections["boxes"][keep][: self.max_rois].cpu() / scale  # already sorted by score
            out[row, : len(chosen)] = chosen.clamp(0, 1).numpy()
            mask[row, : len(chosen)] = True
        return out, mask


def parse_roi_source(
    spec: str, max_rois: int | None, keys: set[str], *, score_threshold: float = 0.5,
    classes: list[str] | None = None, detector_weights: str | None = None, device: torch.device | None = None,
) -> BoxSource:
    """``file:BOXES.csv``, ``grid:RxC`` or ``detector:NAME``."""
    kind, _, arg = spec.partition(":")
    if kind == "grid":
        try:
            rows, cols = (int(v) for v in arg.lower().split("x"))
        except ValueError:
            raise UserError(f"--rois grid:RxC needs two integers, e.g. grid:2x2; got {spec!r}") from None
        if rows < 1 or cols < 1:
            raise UserError(f"--rois {spec}: the grid needs at least 1x1 cells")
        grid = GridBoxes(rows, cols)
        if max_rois is not None and max_rois != grid.max_rois:
            raise UserError(f"--rois {spec} always gives {grid.max_rois} regions (cells + whole frame); drop --max-rois")
        return grid
    if kind == "file":
        return FileBoxes(arg, max_rois, keys)
    if kind == "detector":
        if arg not in DETECTORS:
            raise UserError(f"unknown detector {arg!r}; choose one of {', '.join(DETECTORS)}")
        return DetectorBoxes(arg, max_rois or 10, score_threshold, classes, detector_weights,
                             device or torch.device("cpu"))
    raise UserError(f"unknown --rois source {spec!r}; use file:BOXES.csv, grid:RxC or detector:NAME")


def pool_regions(feature_map: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """[B, R, D] region features: roi_align 7x7 on the map (boxes normalised to the image), then max-pooled."""
    batch, slots = boxes.shape[:2]
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=feature_map.dtype, device=feature_map.device)
    pixel_boxes = boxes.to(feature_map) * scale
    indices = torch.arange(batch, device=feature_map.device, dtype=feature_map.dtype).repeat_interleave(slots)
    rois = torch.cat([indices[:, None], pixel_boxes.reshape(-1, 4)], dim=1)
    pooled = roi_align(feature_map.float(), rois.float(), ROI_OUTPUT_SIZE,
                       spatial_scale=feature_map.shape[-1] / width, sampling_ratio=2, aligned=True)
    return pooled.amax(dim=(2, 3)).reshape(batch, slots, -1)
