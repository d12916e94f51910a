"""Loaders that turn a feature store into training data: pooled (X, y) for scikit-learn, and a torch Dataset
of variable-length sequences.

A store is taken in whole when it fits in memory (an HDF5 cache of HMDB51 size does: 6,766 x 64 x 2048 fp16 is
1.8 GB) - memory-mapped, so the page cache holds it once for every process (see ``FeatureStore.load_rows``) -
otherwise read lazily with one HDF5 handle per DataLoader worker, because h5py handles must not cross process
boundaries.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vidfeat.features.errors import UserError
from vidfeat.features.store import FeatureStore, Rows, open_store

POOLINGS = ("mean", "max", "meanstd")


def select_keys(store: FeatureStore, split: str | None = None, fold: int = 1) -> list[str]:
    """Keys of one split of one fold (all labelled keys when split is None), in a stable order."""
    keys = [k for k in store.keys() if store.label(k) is not None]
    if split is None:
        return keys
    if store.n_folds == 0:
        raise UserError(f"this store has no split information; it cannot select the {split!r} split")
    return [k for k in keys if store.split(k, fold) == split]


def to_float32(values: np.ndarray) -> np.ndarray:
    """``values`` as float32, float16 converted by torch: numpy's float16 -> float32 ``astype`` is not vectorised
    here (1.7 ns per value on the 2-core bench machine, against 0.1-0.5 for torch), and a spatial head's batch holds
    5 M values. An array that is float32 already is returned as it is."""
    if values.dtype == np.float32:
        return values
    if values.dtype != np.dtype("float16"):  # e.g. float64, or another byte order, which torch cannot take
        return values.astype(np.float32)
    with warnings.catch_warnings():  # a read-only memory map is only read here
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(values)).to(torch.float32).numpy()


def pool(sequence: np.ndarray, pooling: str) -> np.ndarray:
    """Order-blind summary of a [T, D] sequence."""
    x = to_float32(sequence)
    if pooling == "mean":
        return x.mean(axis=0)
    if pooling == "max":
        return x.max(axis=0)
    if pooling == "meanstd":
        return np.concatenate([x.mean(axis=0), x.std(axis=0)])
    raise UserError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def load_xy(
    store: FeatureStore | str | os.PathLike,
    split: str | None = None,
    fold: int = 1,
    pooling: str = "mean",
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """In-memory (X [N, D'], y [N] class indices, keys) for scikit-learn estimators."""
    if not isinstance(store, FeatureStore):
        with open_store(store) as opened:
            return load_xy(opened, split, fold, pooling)
    keys = select_keys(store, split, fold)
    class_index = {name: i for i, name in enumerate(store.classes)}
    sequences = store.load_all(keys)
    x = np.stack([pool(s, pooling) for s in sequences]) if keys else np.zeros((0, store.feature_dim), np.float32)
    y = np.array([class_index[store.label(k)] for k in keys], dtype=np.int64)
    return x, y, keys


StorePath = str | os.PathLike | Sequence[str | os.PathLike]

MEMORY_FRACTION = 0.5
"""Load the cache into memory when it needs at most this fraction of the currently available RAM."""


def fits_in_memory(store: FeatureStore, keys: Sequence[str], datasets: Sequence[str] = ("features",)) -> bool:
    """Whether the rows of ``keys`` in the per-row ``datasets`` (the features, and e.g. a head's regions or
    spatial grid, which are loaded together) take at most :data:`MEMORY_FRACTION` of the available RAM."""
    lengths = store.lengths()
    nbytes = store.row_nbytes()
    needed = sum(lengths[k] for k in keys) * sum(nbytes.get(name, 0) for name in datasets)
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return needed <= MEMORY_FRACTION * available


class SequenceSource(Dataset):
    """Variable-length feature sequences of a list of keys: all in memory (one :class:`Rows` array, possibly a memory
    map shared by processes), or read on demand (one HDF5 handle per process). As a torch Dataset, item ``i`` is
    video ``i``'s ``[T, D]`` float32 tensor, never truncated."""

    def __init__(
        self, keys: Sequence[str], *, rows: Rows | None = None, path: StorePath | None = None,
        lengths: Sequence[int] | None = None,
    ) -> None:
        if rows is None and (path is None or lengths is None):
            raise ValueError("a SequenceSource needs either the rows or the store path and lengths to read them from")
        self.keys = list(keys)
        self.path, self._rows = path, rows
        self.lengths = rows.lengths if rows is not None else np.asarray(lengths, dtype=np.int64)
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
            if in_memory:
                return cls(keys, rows=store.load_rows(keys), path=path)
            lengths = store.lengths()
            return cls(keys, path=path, lengths=[lengths[k] for k in keys])

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], keys: Sequence[str] | None = None) -> "SequenceSource":
        """Wrap in-memory ``[T, D]`` arrays (e.g. features just extracted for ``predict``)."""
        keys = list(keys) if keys is not None else [str(i) for i in range(len(arrays))]
        return cls(keys, rows=Rows.from_arrays(arrays))

    @property
    def in_memory(self) -> bool:
        return self._rows is not None

    def subset(self, keys: Sequence[str]) -> "SequenceSource":
        """A source over some of the keys, sharing the loaded rows (no copy)."""
        position = {k: i for i, k in enumerate(self.keys)}
        picked = [position[k] for k in keys]
        rows = self._rows.take(picked) if self._rows is not None else None
        return SequenceSource(keys, rows=rows, path=self.path, lengths=self.lengths[picked])

    def share(self, directory: Path) -> "SequenceSource":
        """This in-memory source memory-mapped from ``directory/features.npy``: processes it is pickled to map the
        same pages instead of receiving a copy."""
        if self._rows is None:
            raise ValueError("only an in-memory source can be shared; load it with in_memory=True")
        return SequenceSource(self.keys, rows=self._rows.share(Path(directory) / "features.npy"), path=self.path)

    def __len__(self) -> int:
        return len(self.keys)

    def get(self, index: int) -> np.ndarray:
        """``[T, D]`` rows of video ``index`` in the stored dtype."""
        if self._rows is not None:
            return self._rows.video(index)
        if self._store is None or self._pid != os.getpid():
            self._store = open_store(self.path)
            self._pid = os.getpid()
        return self._store.features(self.keys[index])

    def gather(self, videos: Sequence[int], steps: Sequence[np.ndarray]) -> np.ndarray:
        """``[sum of len(steps), D]`` float32: steps ``steps[j]`` of video ``videos[j]``, concatenated. In memory this
        is one indexing operation and one conversion for the whole batch."""
        if self._rows is not None:
            return to_float32(self._rows.gather(videos, steps))
        return to_float32(np.concatenate([self.get(v)[s] for v, s in zip(videos, steps)]))

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(to_float32(np.asarray(self.get(index))))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"], state["_pid"] = None, None  # each worker opens its own handle
        return state
