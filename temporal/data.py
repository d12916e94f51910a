"""Training data for the temporal heads: fold splits, sampled sequences and padded batches.

A store is read into memory in one bulk read when it fits (an HDF5 cache of HMDB51 size does:
6,766 x 64 x 2048 fp16 is 1.8 GB), otherwise lazily with one HDF5 handle per DataLoader worker,
because h5py handles must not cross process boundaries.
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

from vidfeat.features import FeatureStore, open_store, select_keys
from vidfeat.temporal.sampling import check_sampling, sample_indices

StorePath = str | os.PathLike | Sequence[str | os.PathLike]

MEMORY_FRACTION = 0.5
"""Load the cache into memory when it needs at most this fraction of the currently available RAM."""


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


def fits_in_memory(store: FeatureStore, keys: Sequence[str]) -> bool:
    """Whether the rows of ``keys`` take at most :data:`MEMORY_FRACTION` of the available RAM."""
    lengths = store.lengths()
    itemsize = np.dtype(store.attrs.get("dtype", "float32")).itemsize
    needed = sum(lengths[k] for k in keys) * store.feature_dim * itemsize
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return needed <= MEMORY_FRACTION * available


class SequenceSource:
    """Feature arrays of a list of keys: all in memory, or read on demand (one HDF5 handle per process)."""

    def __init__(
        self, keys: Sequence[str], *, arrays: Sequence[np.ndarray] | None = None, path: StorePath | None = None
    ) -> None:
        if arrays is None and path is None:
            raise ValueError("a SequenceSource needs either the arrays or the store path to read them from")
        self.keys = list(keys)
        self.path, self._arrays = path, (list(arrays) if arrays is not None else None)
        self._store: FeatureStore | None = None
        self._pid: int | None = None

    @classmethod
    def from_store(cls, path: StorePath, keys: Sequence[str], in_memory: bool | None = None) -> "SequenceSource":
        """Rows of ``keys``; ``in_memory=None`` loads them when they fit (:func:`fits_in_memory`)."""
        with open_store(path) as store:
            missing = [k for k in keys if k not in store]
            if missing:
                raise KeyError(f"{len(missing)} requested videos are not in the store, e.g. {missing[0]!r}")
            if in_memory is None:
                in_memory = fits_in_memory(store, keys)
            return cls(keys, arrays=store.load_all(keys) if in_memory else None, path=path)

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], keys: Sequence[str] | None = None) -> "SequenceSource":
        """Wrap in-memory ``[T, D]`` arrays (e.g. features just extracted for ``predict``)."""
        keys = list(keys) if keys is not None else [str(i) for i in range(len(arrays))]
        return cls(keys, arrays=arrays)

    @property
    def in_memory(self) -> bool:
        return self._arrays is not None

    def subset(self, keys: Sequence[str]) -> "SequenceSource":
        """A source over some of the keys, sharing the loaded arrays (no copy)."""
        position = {k: i for i, k in enumerate(self.keys)}
        picked = [position[k] for k in keys]
        arrays = [self._arrays[i] for i in picked] if self._arrays is not None else None
        return SequenceSource(keys, arrays=arrays, path=self.path)

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, index: int) -> np.ndarray:
        """``[T, D]`` rows of video ``index`` in the stored dtype."""
        if self._arrays is not None:
            return self._arrays[index]
        if self._store is None or self._pid != os.getpid():
            self._store = open_store(self.path)
            self._pid = os.getpid()
        return self._store.features(self.keys[index])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"], state["_pid"] = None, None  # each worker opens its own handle
        return state


class SequenceDataset(Dataset):
    """Sampled steps of each video as float32, with its class index.

    Training randomness (``train=True``) is drawn from a generator seeded by (seed, epoch, index), so
    a run is reproducible whatever the number of workers; call :meth:`set_epoch` every epoch.
    Evaluation takes the deterministic clip ``clip`` of ``num_clips``.
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
    ) -> None:
        if len(labels) != len(source):
            raise ValueError(f"{len(labels)} labels for {len(source)} sequences")
        self.source, self.labels = source, [int(y) for y in labels]
        self.segments, self.mode, self.train, self.seed = segments, mode, train, seed
        self.num_clips, self.clip, self.epoch = num_clips, 0, 0
        check_sampling(mode, segments, num_clips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        rows = self.source.get(index)
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.train else None
        steps = sample_indices(len(rows), self.segments, self.mode, rng=rng, clip=self.clip, num_clips=self.num_clips)
        return {"x": torch.from_numpy(np.asarray(rows[steps], dtype=np.float32)), "y": self.labels[index]}


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
