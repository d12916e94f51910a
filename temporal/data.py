"""Training data for the temporal heads: fold splits, sampled sequences and padded batches.

Rows come from :class:`vidfeat.features.SequenceSource` (in memory when the cache fits, else one HDF5
handle per DataLoader worker).
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

from vidfeat.features import FeatureStore, SequenceSource, StorePath, open_store, select_keys
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
