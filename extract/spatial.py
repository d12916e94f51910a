"""Spatial grids: a backbone's feature map average-pooled to S x S cells per row, for heads that attend over space.

A grid keeps *where* things are in the frame, which a global (mean-pooled) vector loses, at S*S times its disk
cost. Cells are stored row-major (cell ``r * S + c`` is row r, column c of the frame), ``[N, S*S, D]`` beside the
global vector. Frame backbones pool their last map, or with ``layer`` the output of an earlier stage of their
trunk (ECO-style mid-level maps); clip rows take the output time step holding the window's centre frame, as
region features do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidfeat.features.errors import UserError

LAST_LAYER = "last"


@dataclass(frozen=True)
class SpatialGrid:
    """What ``--spatial S [--spatial-layer NAME]`` stores: the grid size, the map it is pooled from and its depth."""

    size: int
    layer: str
    feature_dim: int

    @property
    def cells(self) -> int:
        return self.size * self.size

    def describe(self, clips: bool) -> dict:
        return {
            "grid": self.size, "cells": self.cells, "layer": self.layer, "feature_dim": self.feature_dim,
            "pooling": f"adaptive average pooling of the map to {self.size}x{self.size} cells, row-major",
            **({"time_step": "the output time step whose input span holds the window's centre frame"} if clips else {}),
        }

    def pool(self, feature_map: Tensor) -> Tensor:
        """``[B, D, H, W]`` map -> ``[B, S*S, D]`` cell features."""
        return F.adaptive_avg_pool2d(feature_map.float(), self.size).flatten(2).transpose(1, 2)


def trunk_layers(body: nn.Sequential) -> dict[str, int]:
    """Names of a frame trunk's stages (their index in the trunk) and the channels each outputs, measured with a
    small forward pass; what ``--spatial-layer`` accepts."""
    channels = {}
    x = torch.zeros(1, 3, 64, 64)
    with torch.inference_mode():
        for index, stage in enumerate(body):
            x = stage(x)
            channels[str(index)] = int(x.shape[1])
    return channels


def spatial_grid(size: int, layer: str | None, kind: str, last_dim: int, body: nn.Sequential | None) -> SpatialGrid:
    """Validate ``--spatial``/``--spatial-layer`` for a backbone; errors say what to pass instead."""
    if size < 1:
        raise UserError(f"--spatial must be a grid size S >= 1 (S x S cells), got {size}")
    if layer is None or layer == LAST_LAYER:
        return SpatialGrid(size, LAST_LAYER, last_dim)
    if kind != "frame" or body is None:
        raise UserError("--spatial-layer applies to frame backbones; clip backbones pool their last map, drop it")
    channels = trunk_layers(body)
    if layer not in channels:
        listed = ", ".join(f"{name} ({dim}-d)" for name, dim in channels.items())
        raise UserError(f"unknown --spatial-layer {layer!r}; this backbone's trunk stages are: {listed}")
    return SpatialGrid(size, layer, channels[layer])
