"""Training data for the temporal heads: fold splits, sampled sequences and padded batches.

Rows come from :class:`vidfeat.features.SequenceSource` (in memory when the cache fits, else one HDF5
handle per DataLoader worker); region heads also get each video's RoIs from a :class:`RegionSource`, spatial heads
its grid from a :class:`SpatialSource` (both :class:`RowArrays`, loaded or streamed the same way).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vidfeat.features import FeatureStore, SequenceSource, StorePath, fits_in_memory, open_store, select_keys
from vidfeat.features.store import ROI_DATASETS, SPATIAL_DATASET
from vidfeat.temporal.sampling import check_sampling, sample_indices

@dataclass
class FoldSplit:
    """Keys of the train/val/test parts of one fold, and where the validation part came from."""

    train: list[str]
    val: list[str]
    test: list[str]
    val_source: str  # "dataset" | "carved" | "none"


def carve_validation(
    keys: Sequence[str], labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Stratified, seeded split of ``keys`` into (train, val): about ``fraction`` of every class that has
    at least two videos goes to validation (at least one), so no class disappears from training."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    val_idx: list[int] = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2 or fraction <= 0:
            continue
        n_val = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        val_idx.extend(rng.permutation(members)[:n_val].tolist())
    chosen = set(val_idx)
    return [k for i, k in enumerate(keys) if i not in chosen], [k for i, k in enumerate(keys) if i in chosen]


def fold_split(store: FeatureStore, fold: int = 1, val_fraction: float = 0.15, seed: int = 0) -> FoldSplit:
    """Train/val/test keys of ``fold``; validation is the dataset's own when it has one, else carved from train.

    Unlabelled videos and videos the fold does not use are left out.
    """
    if store.n_folds == 0:
        raise ValueError(
            "this store has no train/test splits (n_folds=0), so there is nothing to train and score on; "
            "extract a dataset with splits (hmdb51, ucf101, a list file with a split column, folder, sample)"
        )
    parts = {name: select_keys(store, name, fold) for name in ("train", "val", "test")}
    for name in ("train", "test"):
        if not parts[name]:
            raise ValueError(
                f"fold {fold} of this store has no labelled {name} videos; check the dataset's split files"
            )
    if parts["val"]:
        return FoldSplit(parts["train"], parts["val"], parts["test"], "dataset")
    if val_fraction <= 0:
        return FoldSplit(parts["train"], [], parts["test"], "none")
    train, val = carve_validation(parts["train"], class_indices(store, parts["train"]), val_fraction, seed)
    return FoldSplit(train, val, parts["test"], "carved" if val else "none")


Regions = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One video's regions as the store returns them: roi_features [T, R, Dr], boxes [T, R, 4], roi_mask [T, R]."""


def require_regions(store: FeatureStore, head: str) -> dict:
    """The store's ``rois`` provenance; a clear error naming ``vidfeat extract --rois`` when it has none."""
    rois = store.attrs.get("rois")
    if not rois:
        raise ValueError(
            f"head {head!r} works on region (RoI) features, but this store ({', '.join(map(str, store.paths))}) "
            "has none; extract one with `vidfeat extract ... --rois SOURCE` (SOURCE: file:BOXES.csv, grid:RxC "
            "or detector:NAME), or train a frame head (mean, lstm, tcn, transformer, logreg)"
        )
    return dict(rois)


def require_spatial(store: FeatureStore, head: str) -> dict:
    """The store's ``spatial`` provenance; a clear error naming ``vidfeat extract --spatial`` when it has none."""
    spatial = store.attrs.get("spatial")
    if not spatial:
        raise ValueError(
            f"head {head!r} works on spatial grids, but this store ({', '.join(map(str, store.paths))}) has none; "
            "extract one with `vidfeat extract ... --spatial S` (e.g. 4), or train a frame head "
            "(mean, lstm, tcn, transformer, logreg)"
        )
    return dict(spatial)


class RowArrays:
    """Per-row arrays beyond the features (a region or spatial head's input) of a list of keys, aligned with a
    :class:`SequenceSource`'s rows: all in memory, or read on demand (one HDF5 handle per process, like the
    sequences). Subclasses say which datasets they read, how, and what the store must have."""

    datasets: tuple[str, ...] = ()

    def __init__(self, keys: Sequence[str], *, arrays: Sequence | None = None, path: StorePath | None = None):
        if arrays is None and path is None:
            raise ValueError(f"a {type(self).__name__} needs either the arrays or the store path to read them from")
        self.keys = list(keys)
        self.path, self._arrays = path, (list(arrays) if arrays is not None else None)
        self._store: FeatureStore | None = None
        self._pid: int | None = None

    @staticmethod
    def require(store: FeatureStore, head: str) -> dict:
        """The store's provenance of these arrays; raises ValueError saying how to extract them."""
        raise NotImplementedError

    @staticmethod
    def read(store: FeatureStore, key: str):
        """One video's arrays as the store returns them (None when the store lacks them)."""
        raise NotImplementedError

    @classmethod
    def from_store(cls, path: StorePath, keys: Sequence[str], in_memory: bool | None = None, head: str = ""):
        """Arrays of ``keys``; ``in_memory=None`` loads them when they fit (:func:`fits_in_memory`)."""
        with open_store(path) as store:
            cls.require(store, head)
            if in_memory is None:
                in_memory = fits_in_memory(store, keys, cls.datasets)
            return cls(keys, arrays=[cls.read(store, k) for k in keys] if in_memory else None, path=path)

    @property
    def in_memory(self) -> bool:
        return self._arrays is not None

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, keys: Sequence[str]):
        """A source over some of the keys, sharing the loaded arrays."""
        position = {k: i for i, k in enumerate(self.keys)}
        picked = [position[k] for k in keys]
        arrays = [self._arrays[i] for i in picked] if self._arrays is not None else None
        return type(self)(keys, arrays=arrays, path=self.path)

    def get(self, index: int):
        if self._arrays is not None:
            return self._arrays[index]
        if self._store is None or self._pid != os.getpid():
            self._store = open_store(self.path)
            self._pid = os.getpid()
        value = self.read(self._store, self.keys[index])
        if value is None:
            raise ValueError(f"video {self.keys[index]!r} has no {', '.join(self.datasets)} in {self.path}")
        return value

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"], state["_pid"] = None, None  # each worker opens its own handle
        return state


class RegionSource(RowArrays):
    """Each video's :data:`Regions` (for region heads such as ``gcn``)."""

    datasets = ROI_DATASETS

    @staticmethod
    def require(store: FeatureStore, head: str) -> dict:
        return require_regions(store, head or "gcn")

    @staticmethod
    def read(store: FeatureStore, key: str) -> Regions | None:
        return store.rois(key)


class SpatialSource(RowArrays):
    """Each video's spatial grid ``[T, S*S, D]`` (for spatial heads such as ``timesformer`` and ``eco``)."""

    datasets = (SPATIAL_DATASET,)

    @staticmethod
    def require(store: FeatureStore, head: str) -> dict:
        return require_spatial(store, head or "timesformer")

    @staticmethod
    def read(store: FeatureStore, key: str) -> np.ndarray | None:
        return store.spatial(key)


class SequenceDataset(Dataset):
    """Sampled steps of each video as float32, with its class index.

    Training randomness (``train=True``) is drawn from a generator seeded by (seed, epoch, index), so
    a run is reproducible whatever the number of workers; call :meth:`set_epoch` every epoch.
    Evaluation takes the deterministic clip ``clip`` of ``num_clips``. With ``regions`` (for region heads)
    each item also carries ``rois``, ``boxes`` and ``roi_mask`` at the same sampled steps as ``x``; with
    ``spatial`` (for spatial heads) the grid ``spatial [t, S*S, D]``.
    """

    def __init__(
        self,
        source: SequenceSource,
        labels: Sequence[int],
        *,
        segments: int,
        mode: str,
        train: bool,
        seed: int = 0,
        num_clips: int = 1,
        regions: RegionSource | None = None,
        spatial: SpatialSource | None = None,
    ) -> None:
        if len(labels) != len(source):
            raise ValueError(f"{len(labels)} labels for {len(source)} sequences")
        for extra in (regions, spatial):
            if extra is not None and extra.keys != source.keys:
                raise ValueError(f"the {type(extra).__name__} must hold the same videos, in the same order, "
                                 "as the sequences")
        self.source, self.regions, self.spatial, self.labels = source, regions, spatial, [int(y) for y in labels]
        self.segments, self.mode, self.train, self.seed = segments, mode, train, seed
        self.num_clips, self.clip, self.epoch = num_clips, 0, 0
        check_sampling(mode, segments, num_clips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def in_memory(self) -> bool:
        """Whether every array an item reads is loaded (else DataLoader workers read them in parallel)."""
        return all(part.in_memory for part in (self.source, self.regions, self.spatial) if part is not None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        rows = self.source.get(index)
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.train else None
        steps = sample_indices(len(rows), self.segments, self.mode, rng=rng, clip=self.clip, num_clips=self.num_clips)
        item = {"x": torch.from_numpy(np.asarray(rows[steps], dtype=np.float32)), "y": self.labels[index]}
        if self.regions is not None:
            rois, boxes, roi_mask = self.regions.get(index)
            if not len(rois) == len(boxes) == len(roi_mask) == len(rows):
                raise ValueError(
                    f"video {self.source.keys[index]!r}: {len(rois)} region rows for {len(rows)} feature rows; "
                    "the store is inconsistent, extract it again"
                )
            item["rois"] = torch.from_numpy(np.asarray(rois[steps], dtype=np.float32))
            item["boxes"] = torch.from_numpy(np.asarray(boxes[steps], dtype=np.float32))
            item["roi_mask"] = torch.from_numpy(np.asarray(roi_mask[steps], dtype=bool))
        if self.spatial is not None:
            grid = self.spatial.get(index)
            if len(grid) != len(rows):
                raise ValueError(
                    f"video {self.source.keys[index]!r}: {len(grid)} grid rows for {len(rows)} feature rows; "
                    "the store is inconsistent, extract it again"
                )
            item["spatial"] = torch.from_numpy(np.asarray(grid[steps], dtype=np.float32))
        return item


@dataclass
class Batch:
    """A padded batch: ``x [B, T, ...]``, ``mask [B, T]`` (True = valid), ``y [B]`` and padded per-step extras."""

    x: Tensor
    mask: Tensor
    y: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        def move(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        return Batch(move(self.x), move(self.mask), move(self.y), {k: move(v) for k, v in self.extras.items()})


def _pad(tensors: list[Tensor], length: int) -> Tensor:
    out = tensors[0].new_zeros((len(tensors), length, *tensors[0].shape[1:]))
    for i, t in enumerate(tensors):
        out[i, : len(t)] = t
    return out


def collate(items: Sequence[dict]) -> Batch:
    """Pad every per-step field (``x`` and any extras such as future RoI ``boxes``) with zeros at the end
    to the longest sequence and build the mask; nothing is truncated."""
    lengths = [len(item["x"]) for item in items]
    longest = max(lengths)
    mask = torch.arange(longest).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    extras = {
        name: _pad([item[name] for item in items], longest) for name in items[0] if name not in ("x", "y")
    }
    y = torch.tensor([item["y"] for item in items], dtype=torch.long)
    return Batch(_pad([item["x"] for item in items], longest), mask, y, extras)


def class_indices(store: FeatureStore, keys: Sequence[str]) -> list[int]:
    """Class index of each key in the store's class list."""
    index = {name: i for i, name in enumerate(store.classes)}
    return [index[store.label(k)] for k in keys]


def resolve_store_path(path: StorePath) -> str | list[str]:
    """Absolute form of a store path (or shard list) for recording in run configs."""
    if isinstance(path, (str, os.PathLike)):
        return str(Path(path).resolve())
    return [str(Path(p).resolve()) for p in path]
