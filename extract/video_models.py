"""Clip backbones: a window of frames -> one feature vector, with the window the weights were trained on.

`create_clip_backbone(name, weights)` returns a `ClipBackbone`: a `Backbone` of kind "clip" that also says how many
frames a window holds (`clip_len`), at which frame rate the weights saw them (`frame_rate`) and how far windows
advance by default (`default_stride`). Its `ClipFeatureExtractor` takes uint8 clips [B, T, H, W, 3] as decoded,
normalises them inside (so preprocessing travels with the weights, as for frame backbones) and returns [B, D];
`feature_map` returns the last spatio-temporal map [B, D, T', H', W'] that region features are pooled from.

Models: I3D (`vidfeat.extract.i3d`) and torchvision's Kinetics-400 video networks r3d_18, mc3_18, r2plus1d_18, s3d,
mvit_v2_s and swin3d_t. Each torchvision model uses its weights' own:
- clip length and frame rate: the ones torchvision's model docs state for the weights ("The accuracies are
  estimated on video-level with parameters `frame_rate=15`, `clips_per_video=5`, and `clip_len=16`"), recorded in
  `TRAINED_WINDOWS`: 16 frames at 15 fps for the R3D family, 128 at 15 for s3d, 16 at 7.5 for mvit_v2_s, 32 at 15
  for swin3d_t;
- crop, interpolation and mean/std: the weights' transforms(). Their resize is a fixed size for two families
  ((128, 171) for the R3D family, (256, 256) for s3d) which our decoder approximates by resizing the short side
  (128 / 256, aspect kept) before the centre crop: identical on 4:3 sources (R3D) and square ones (s3d);
- feature: the vector the classifier reads (the global mean of the last map; mvit_v2_s: its class token; s3d: the
  mean of its (2, 7, 7) average pool), so `classify(features)` reproduces torchvision's logits.

Weights: None = the KINETICS400_V1 record's file from the torch hub cache (downloaded, hash checked, unless
VIDFEAT_OFFLINE=1), "none" = seeded random init, a path = a state_dict for that torchvision model; the same
records, rules and errors as frame backbones (`vidfeat.extract.weights`).

`default_stride` is half a window: every frame is seen by two windows, and the feature sequence has two steps per
window length, which temporal heads need on short clips, for twice the compute of non-overlapping windows.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from vidfeat.extract.backbones import Backbone
from vidfeat.extract.weights import (
    IMAGENET_CATEGORIES, Preprocessing, WeightsRecord, build_network, choose_weights, torchvision_records,
)
from vidfeat.features.errors import UserError

TORCHVISION_VIDEO_MODELS = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t")
# (clip_len, frame_rate) each weights set was evaluated with, as torchvision's model docs state them.
TRAINED_WINDOWS: dict[str, tuple[int, float]] = {
    "R3D_18_Weights.KINETICS400_V1": (16, 15.0),
    "MC3_18_Weights.KINETICS400_V1": (16, 15.0),
    "R2Plus1D_18_Weights.KINETICS400_V1": (16, 15.0),
    "S3D_Weights.KINETICS400_V1": (128, 15.0),
    "MViT_V2_S_Weights.KINETICS400_V1": (16, 7.5),
    "Swin3D_T_Weights.KINETICS400_V1": (32, 15.0),
}


class ClipFeatureExtractor(nn.Module):
    """uint8 clips [B, T, H, W, 3] -> [B, D] float features, normalised inside like `FeatureExtractor`.

    Permuting the decoded clips to [B, 3, T, H, W] gives a view whose memory already is channels_last_3d, so the
    batch is never transposed before the network.
    """

    def __init__(
        self,
        name: str,
        trunk: nn.Module,
        classifier: nn.Module | None,
        preprocessing: Preprocessing,
        feature_dim: int,
        min_size: tuple[int, int, int] = (1, 1, 1),
        fixed_size: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        self.name = name
        # normalised [B, 3, T, H, W] -> (map [B, D, T', H', W'], pooled [B, D]); channels_last_3d kernels match the
        # input layout (measured ~7% faster for r2plus1d_18 on 2 CPU cores, neutral for I3D)
        self.trunk = trunk.to(memory_format=torch.channels_last_3d)
        self.classifier = classifier
        self.feature_dim = feature_dim
        self.min_size, self.fixed_size = min_size, fixed_size
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, clips_uint8: Tensor) -> Tensor:
        return self.features_and_map(clips_uint8)[0]

    def feature_map(self, clips_uint8: Tensor) -> Tensor:
        """The last spatio-temporal map [B, D, T', H', W'] before pooling: what region (RoI) features come from."""
        return self.features_and_map(clips_uint8)[1]

    def features_and_map(self, clips_uint8: Tensor) -> tuple[Tensor, Tensor]:
        """Pooled features and the map from one pass, for callers that need both."""
        fmap, pooled = self.trunk(self._normalise(clips_uint8))
        return pooled, fmap

    def classify(self, features: Tensor) -> Tensor:
        """Logits of the classifier head the weights came with (dropout inactive in eval), for sanity checks."""
        if self.classifier is None:
            raise RuntimeError(f"{self.name} has no classifier head")
        return self.classifier(features)

    def check_size(self, frames: int, height: int, width: int) -> None:
        """Raise ValueError when the network cannot take clips of this size."""
        size = (frames, height, width)
        if self.fixed_size is not None and size != self.fixed_size:
            t, h, w = self.fixed_size
            raise UserError(
                f"{self.name} takes clips of exactly {t} frames of {h}x{w} (its positional tables are sized for it), "
                f"got {frames} frames of {height}x{width}; use its default --clip-len and preprocessing"
            )
        if any(n < m for n, m in zip(size, self.min_size)):
            t, h, w = self.min_size
            raise UserError(
                f"{self.name} needs clips of at least {t} frames of {h}x{w}, got {frames} frames of {height}x{width}; "
                "raise --clip-len or keep the backbone's preprocessing"
            )

    def _normalise(self, clips: Tensor) -> Tensor:
        if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 clips shaped [B, T, H, W, 3], got {clips.dtype} {tuple(clips.shape)}; "
                "stack windows of decoded RGB frames along a new first axis"
            )
        self.check_size(*clips.shape[1:4])
        return clips.permute(0, 4, 1, 2, 3).float().div_(255).sub_(self.mean).div_(self.std)


@dataclass
class ClipBackbone(Backbone):
    """A `Backbone` whose rows are windows: the runner slides `clip_len`-frame windows by `default_stride`."""

    clip_len: int = 16  # frames per window the weights were trained / evaluated with (default --clip-len)
    default_stride: int = 8  # default --clip-stride: half a window (see the module notes)
    frame_rate: float | None = None  # frames/s the weights saw; sample at this rate to match them
    kind: str = "clip"

    @property
    def feature_dim(self) -> int:
        return self.extractor.feature_dim

    def stride_for(self, clip_len: int) -> int:
        """The default --clip-stride when --clip-len overrides the weights' window: half a window, as by default."""
        return max(1, clip_len // 2)

    def check_clip_len(self, clip_len: int) -> None:
        """Raise ValueError (saying what to pass) when windows of `clip_len` frames cannot go through the network."""
        if clip_len < 1:
            raise UserError(f"--clip-len must be >= 1, got {clip_len}")
        crop = self.preprocessing.crop
        self.extractor.check_size(clip_len, crop, crop)

    def describe(self) -> dict:
        return {**super().describe(), "clip_len": self.clip_len, "default_stride": self.default_stride,
                "frame_rate": self.frame_rate}


def list_clip_backbones() -> list[str]:
    return list(_CLIP_BUILDERS)


def create_clip_backbone(name: str, weights: str | os.PathLike | None = None) -> ClipBackbone:
    """Build clip backbone `name` with its default pretrained weights (None), random init ("none") or a file."""
    try:
        builder = _CLIP_BUILDERS[name]
    except KeyError:
        raise UserError(f"unknown clip backbone {name!r}; choose one of: {', '.join(_CLIP_BUILDERS)}") from None
    return builder(name, None if weights is None else str(weights))


def clip_weights_records(name: str) -> list[WeightsRecord]:
    """Every set of pretrained weights of clip backbone ``name``."""
    if name == "i3d":
        from vidfeat.extract.i3d import i3d_weights_records

        return i3d_weights_records()
    if name not in TORCHVISION_VIDEO_MODELS:
        raise UserError(f"unknown clip backbone {name!r}; choose one of: {', '.join(_CLIP_BUILDERS)}")
    return torchvision_records(name, torchvision.models.get_model_weights(name), video_preprocessing,
                               window=lambda member: TRAINED_WINDOWS[str(member)])


def video_preprocessing(weights: WeightsEnum) -> Preprocessing:
    """Crop, interpolation and normalisation of the weights' transforms(); the resize's short side (see notes)."""
    t = weights.transforms()  # only reads the enum's parameters; downloads nothing
    return Preprocessing(
        resize=min(t.resize_size), crop=t.crop_size[0], interpolation=t.interpolation.value,
        mean=tuple(t.mean), std=tuple(t.std),
    )


# ---------------------------------------------------------------------------------------------------------------
# Trunk adapters: normalised [B, 3, T, H, W] -> (last map [B, D, T', H', W'], the vector the classifier reads).


class _VideoResNetTrunk(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.stem, self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.stem, net.layer1, net.layer2, net.layer3, net.layer4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return fmap, fmap.mean(dim=(2, 3, 4))


class _S3dTrunk(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.features, self.avgpool = net.features, net.avgpool

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = self.features(x)
        return fmap, self.avgpool(fmap).mean(dim=(2, 3, 4))  # S3D's classifier is linear, so pooling commutes


class _PointwiseConvHead(nn.Module):
    """A 1x1x1 Conv3d classifier applied to pooled vectors: the same weights as a linear layer."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        self.conv = conv

    def forward(self, features: Tensor) -> Tensor:
        return F.linear(features, self.conv.weight.flatten(1), self.conv.bias)


class _MViTTrunk(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.conv_proj, self.pos_encoding = net.conv_proj, net.pos_encoding
        self.blocks, self.norm = net.blocks, net.norm

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pos_encoding(self.conv_proj(x).flatten(2).transpose(1, 2))
        thw = (self.pos_encoding.temporal_size, *self.pos_encoding.spatial_size)
        for block in self.blocks:
            x, thw = block(x, thw)
        x = self.norm(x)
        tokens = x[:, 1:].transpose(1, 2)  # patch tokens after the class token, [B, D, T'H'W']
        return tokens.reshape(*tokens.shape[:2], *thw), x[:, 0]


class _SwinTrunk(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.patch_embed, self.pos_drop, self.features, self.norm = (
            net.patch_embed, net.pos_drop, net.features, net.norm)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = self.norm(self.features(self.pos_drop(self.patch_embed(x)))).permute(0, 4, 1, 2, 3)
        return fmap, fmap.mean(dim=(2, 3, 4))


@dataclass(frozen=True)
class _Family:
    trunk: Callable[[nn.Module], nn.Module]
    classifier: Callable[[nn.Module], nn.Module]
    feature_dim: Callable[[nn.Module], int]
    fixed_size: bool = False  # positional tables sized for exactly the trained input


_RESNET = _Family(_VideoResNetTrunk, lambda net: net.fc, lambda net: net.fc.in_features)
_FAMILIES: dict[str, _Family] = {
    "r3d_18": _RESNET,
    "mc3_18": _RESNET,
    "r2plus1d_18": _RESNET,
    "s3d": _Family(_S3dTrunk, lambda net: _PointwiseConvHead(net.classifier[1]),
                   lambda net: net.classifier[1].in_channels),
    "mvit_v2_s": _Family(_MViTTrunk, lambda net: net.head, lambda net: net.head[1].in_features, fixed_size=True),
    "swin3d_t": _Family(_SwinTrunk, lambda net: net.head, lambda net: net.head.in_features),
}


def _torchvision_clip(name: str, weights: str | None) -> ClipBackbone:
    records = clip_weights_records(name)
    record = choose_weights(records, weights)
    net, weights_id = build_network(name, lambda: torchvision.models.get_model(name, weights=None), weights, record)
    default = torchvision.models.get_model_weights(name).DEFAULT
    trained = record or choose_weights(records, None)  # a fine-tuned state_dict keeps its parent's window
    family, pre = _FAMILIES[name], trained.preprocessing
    min_size = (default.meta.get("min_temporal_size", 1), *default.meta["min_size"])
    extractor = ClipFeatureExtractor(
        name, family.trunk(net), family.classifier(net), pre, family.feature_dim(net), min_size=min_size,
        fixed_size=(trained.clip_len, pre.crop, pre.crop) if family.fixed_size else None,
    )
    return ClipBackbone(
        name=name, weights_id=weights_id, preprocessing=pre, extractor=extractor,
        categories=list(record.categories) if record is not None else None,
        clip_len=trained.clip_len, default_stride=max(1, trained.clip_len // 2), frame_rate=trained.frame_rate,
    )


def _i3d(name: str, weights: str | None) -> ClipBackbone:
    from vidfeat.extract.i3d import I3D_CLIP_LEN, I3D_FRAME_RATE, I3D_PREPROCESSING, I3dTrunk, load_i3d

    net, weights_id, _ = load_i3d(weights)
    extractor = ClipFeatureExtractor(name, I3dTrunk(net), net.fc, I3D_PREPROCESSING, net.fc.in_features)
    return ClipBackbone(
        name=name, weights_id=weights_id, preprocessing=I3D_PREPROCESSING, extractor=extractor,
        categories=list(IMAGENET_CATEGORIES) if weights is None else None,  # the inflated googlenet's classes
        clip_len=I3D_CLIP_LEN, default_stride=I3D_CLIP_LEN // 2, frame_rate=I3D_FRAME_RATE,
    )


_CLIP_BUILDERS: dict[str, Callable[[str, str | None], ClipBackbone]] = {
    "i3d": _i3d,
    **{name: _torchvision_clip for name in TORCHVISION_VIDEO_MODELS},
}
