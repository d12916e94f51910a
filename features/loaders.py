"""Loaders that turn a feature store into training data: pooled (X, y) for scikit-learn, padded sequences for torch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vidfeat.features.store import FeatureStore, open_store

POOLINGS = ("mean", "max", "meanstd")


def select_keys(store: FeatureStore, split: str | None = None, fold: int = 1) -> list[str]:
    """Keys of one split of one fold (all labelled keys when split is None), in a stable order."""
    keys = [k for k in store.keys() if store.label(k) is not None]
    if split is None:
        return keys
    if store.n_folds == 0:
        raise ValueError(f"this store has no split information; it cannot select the {split!r} split")
    return [k for k in keys if store.split(k, fold) == split]


def pool(sequence: np.ndarray, pooling: str) -> np.ndarray:
    """Order-blind summary of a [T, D] sequence."""
    x = sequence.astype(np.float32, copy=False)
    if pooling == "mean":
        return x.mean(axis=0)
    if pooling == "max":
        return x.max(axis=0)
    if pooling == "meanstd":
        return np.concatenate([x.mean(axis=0), x.std(axis=0)])
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


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


class SequenceDataset(Dataset):
    """Variable-length [T, D] float32 sequences with class indices.

    In memory when ``in_memory`` (the default: an HMDB51-size cache fits), otherwise each DataLoader worker
    opens its own HDF5 handle lazily, because h5py handles must not cross process boundaries.
    """

    def __init__(self, path: str | os.PathLike, keys: Sequence[str] | None = None, in_memory: bool = True) -> None:
        self.path = Path(path)
        with open_store(self.path) as store:
            self.keys = list(keys) if keys is not None else select_keys(store)
            class_index = {name: i for i, name in enumerate(store.classes)}
            self.labels = [class_index[store.label(k)] if store.label(k) is not None else -1 for k in self.keys]
            self._sequences = store.load_all(self.keys) if in_memory else None
        self._store: FeatureStore | None = None
        self._store_pid: int | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def sequence(self, index: int) -> np.ndarray:
        if self._sequences is not None:
            return self._sequences[index]
        if self._store is None or self._store_pid != os.getpid():
            self._store = open_store(self.path)
            self._store_pid = os.getpid()
        return self._store.features(self.keys[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.asarray(self.sequence(index), dtype=np.float32)), self.labels[index]


def pad_collate(batch: Sequence[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad to the longest sequence: (x [B, T, D], mask [B, T] True where valid, y [B]). Never truncates."""
    lengths = [len(x) for x, _ in batch]
    dim = batch[0][0].shape[1]
    x = torch.zeros(len(batch), max(lengths), dim)
    mask = torch.zeros(len(batch), max(lengths), dtype=torch.bool)
    for i, ((sequence, _), n) in enumerate(zip(batch, lengths)):
        x[i, :n] = sequence
        mask[i, :n] = True
    y = torch.tensor([label for _, label in batch], dtype=torch.long)
    return x, mask, y
