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

from vidfeat.features import FeatureStore, Rows, SequenceSource, StorePath, fits_in_memory, open_store, select_keys
from vidfeat.features.errors import UserError
from vidfeat.features.loaders import to_float32
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


SPLIT_PARTS = ("train", "val", "test")


def fold_parts(store: FeatureStore, fold: int) -> dict[str, list[str]]:
    """The labelled keys of each part (train, val, test) of ``fold``, as the store records them."""
    if store.n_folds == 0:
        raise UserError(
            "this store has no train/test splits (n_folds=0), so there is nothing to train and score on; "
            "extract a dataset with splits (hmdb51, ucf101, a list file with a split column, folder, sample)"
        )
    parts = {name: select_keys(store, name, fold) for name in SPLIT_PARTS}
    for name in ("train", "test"):
        if not parts[name]:
            raise UserError(
                f"fold {fold} of this store has no labelled {name} videos; check the dataset's split files"
            )
    return parts


def split_parts(parts: dict[str, list[str]], labels: dict[str, int], val_fraction: float, seed: int) -> FoldSplit:
    """A fold's split from its recorded parts: validation is the dataset's own when it has one, else carved
    (stratified, seeded) from train."""
    if parts["val"]:
        return FoldSplit(parts["train"], parts["val"], parts["test"], "dataset")
    if val_fraction <= 0:
        return FoldSplit(parts["train"], [], parts["test"], "none")
    train, val = carve_validation(parts["train"], [labels[k] for k in parts["train"]], val_fraction, seed)
    return FoldSplit(train, val, parts["test"], "carved" if val else "none")


def fold_split(store: FeatureStore, fold: int = 1, val_fraction: float = 0.15, seed: int = 0) -> FoldSplit:
    """Train/val/test keys of ``fold``; validation is the dataset's own when it has one, else carved from train.

    Unlabelled videos and videos the fold does not use are left out.
    """
    parts = fold_parts(store, fold)
    return split_parts(parts, dict(zip(parts["train"], class_indices(store, parts["train"]))), val_fraction, seed)


Regions = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One video's regions as the store returns them: roi_features [T, R, Dr], boxes [T, R, 4], roi_mask [T, R]."""


def require_regions(store: FeatureStore, head: str) -> dict:
    """The store's ``rois`` provenance; a clear error naming ``vidfeat extract --rois`` when it has none."""
    rois = store.attrs.get("rois")
    if not rois:
        raise UserError(
            f"head {head!r} works on region (RoI) features, but this store ({', '.join(map(str, store.paths))}) "
            "has none; extract one with `vidfeat extract ... --rois SOURCE` (SOURCE: file:BOXES.csv, grid:RxC "
            "or detector:NAME), or train a frame head (mean, lstm, tcn, transformer, logreg)"
        )
    return dict(rois)


def require_spatial(store: FeatureStore, head: str) -> dict:
    """The store's ``spatial`` provenance; a clear error naming ``vidfeat extract --spatial`` when it has none."""
    spatial = store.attrs.get("spatial")
    if not spatial:
        raise UserError(
            f"head {head!r} works on spatial grids, but this store ({', '.join(map(str, store.paths))}) has none; "
            "extract one with `vidfeat extract ... --spatial S` (e.g. 4), or train a frame head "
            "(mean, lstm, tcn, transformer, logreg)"
        )
    return dict(spatial)


class RowArrays:
    """Per-row arrays beyond the features (a region or spatial head's input) of a list of keys, aligned with a
    :class:`SequenceSource`'s rows: all in memory (one :class:`Rows` per dataset), or read on demand (one HDF5
    handle per process, like the sequences). Subclasses say which datasets they read, the item fields and dtypes
    they become, and what the store must have."""

    datasets: tuple[str, ...] = ()
    fields: tuple[tuple[str, type], ...] = ()  # (item field, dtype) per dataset

    def __init__(self, keys: Sequence[str], *, rows: Sequence[Rows] | None = None, path: StorePath | None = None):
        if rows is None and path is None:
            raise ValueError(f"a {type(self).__name__} needs either the loaded rows or the store path to read them from")
        self.keys = list(keys)
        self.path, self._rows = path, (tuple(rows) if rows is not None else None)
        self._store: FeatureStore | None = None
        self._pid: int | None = None

    @staticmethod
    def require(store: FeatureStore, head: str) -> dict:
        """The store's provenance of these arrays; raises ValueError saying how to extract them."""
        raise NotImplementedError

    @staticmethod
    def read(store: FeatureStore, key: str) -> tuple[np.ndarray, ...] | None:
        """One video's arrays, one per dataset (None when the store lacks them)."""
        raise NotImplementedError

    @staticmethod
    def head_options(provenance: dict) -> dict:
        """The head options these arrays fix, from the store's provenance (e.g. their feature size)."""
        raise NotImplementedError

    @classmethod
    def from_store(cls, path: StorePath, keys: Sequence[str], in_memory: bool | None = None, head: str = ""):
        """Arrays of ``keys``; ``in_memory=None`` loads them when they fit (:func:`fits_in_memory`)."""
        with open_store(path) as store:
            cls.require(store, head)
            if in_memory is None:
                in_memory = fits_in_memory(store, keys, cls.datasets)
            rows = [store.load_rows(keys, name) for name in cls.datasets] if in_memory else None
            return cls(keys, rows=rows, path=path)

    @classmethod
    def from_arrays(cls, values: Sequence[tuple[np.ndarray, ...]], keys: Sequence[str]):
        """Wrap each video's in-memory arrays, one per dataset (e.g. just extracted for ``predict``)."""
        return cls(keys, rows=[Rows.from_arrays([v[n] for v in values]) for n in range(len(cls.datasets))])

    @property
    def in_memory(self) -> bool:
        return self._rows is not None

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, keys: Sequence[str]):
        """A source over some of the keys, sharing the loaded rows."""
        position = {k: i for i, k in enumerate(self.keys)}
        picked = [position[k] for k in keys]
        rows = [r.take(picked) for r in self._rows] if self._rows is not None else None
        return type(self)(keys, rows=rows, path=self.path)

    def share(self, directory: Path):
        """This in-memory source memory-mapped from ``.npy`` files in ``directory`` (see :meth:`SequenceSource.share`)."""
        if self._rows is None:
            raise ValueError(f"only in-memory {', '.join(self.datasets)} can be shared; load them with in_memory=True")
        rows = [r.share(Path(directory) / f"{name}.npy") for r, name in zip(self._rows, self.datasets)]
        return type(self)(self.keys, rows=rows, path=self.path)

    def get(self, index: int) -> tuple[np.ndarray, ...]:
        if self._rows is not None:
            return tuple(r.video(index) for r in self._rows)
        if self._store is None or self._pid != os.getpid():
            self._store = open_store(self.path)
            self._pid = os.getpid()
        value = self.read(self._store, self.keys[index])
        if value is None:
            raise UserError(f"video {self.keys[index]!r} has no {', '.join(self.datasets)} in {self.path}")
        return value

    def gather(
        self, videos: Sequence[int], steps: Sequence[np.ndarray], feature_rows: Sequence[int]
    ) -> dict[str, np.ndarray]:
        """The arrays at steps ``steps[j]`` of video ``videos[j]``, concatenated over the videos, by item field
        in that field's dtype. Each video must have ``feature_rows[j]`` rows, as its features do (checked on the
        arrays read here, so a streamed video is read once)."""
        if self._rows is not None:
            self._check_rows(videos, self._rows[0].lengths[list(videos)], feature_rows)
            parts = [r.gather(videos, steps) for r in self._rows]
        else:
            per_video = [self.get(v) for v in videos]
            self._check_rows(videos, [len(arrays[0]) for arrays in per_video], feature_rows)
            parts = [np.concatenate([arrays[n][s] for arrays, s in zip(per_video, steps)])
                     for n in range(len(self.datasets))]
        return {name: to_float32(part) if dtype == np.float32 else part.astype(dtype)
                for (name, dtype), part in zip(self.fields, parts)}

    def _check_rows(self, videos: Sequence[int], found: Sequence[int], feature_rows: Sequence[int]) -> None:
        for video, rows, expected in zip(videos, found, feature_rows):
            if int(rows) != int(expected):
                raise UserError(
                    f"video {self.keys[video]!r}: {int(rows)} {self.datasets[0]} rows for {int(expected)} feature "
                    "rows; the store is inconsistent, extract it again"
                )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"], state["_pid"] = None, None  # each worker opens its own handle
        return state


class RegionSource(RowArrays):
    """Each video's :data:`Regions` (for region heads such as ``gcn``)."""

    datasets = ROI_DATASETS
    fields = (("rois", np.float32), ("boxes", np.float32), ("roi_mask", bool))

    @staticmethod
    def require(store: FeatureStore, head: str) -> dict:
        return require_regions(store, head or "gcn")

    @staticmethod
    def read(store: FeatureStore, key: str) -> Regions | None:
        return store.rois(key)

    @staticmethod
    def head_options(provenance: dict) -> dict:
        return {"roi_dim": int(provenance["rois"]["feature_dim"])}


class SpatialSource(RowArrays):
    """Each video's spatial grid ``[T, S*S, D]`` (for spatial heads such as ``timesformer`` and ``eco``)."""

    datasets = (SPATIAL_DATASET,)
    fields = (("spatial", np.float32),)

    @staticmethod
    def require(store: FeatureStore, head: str) -> dict:
        return require_spatial(store, head or "timesformer")

    @staticmethod
    def read(store: FeatureStore, key: str) -> tuple[np.ndarray] | None:
        grid = store.spatial(key)
        return None if grid is None else (grid,)

    @staticmethod
    def head_options(provenance: dict) -> dict:
        spatial = provenance["spatial"]
        return {"spatial_dim": int(spatial["feature_dim"]), "grid": int(spatial["grid"])}


class SequenceDataset(Dataset):
    """Sampled steps of each video as float32, with its class index.

    Training randomness (``train=True``) is drawn from a generator seeded by (seed, epoch, index), so
    a run is reproducible whatever the number of workers; call :meth:`set_epoch` every epoch.
    Evaluation takes the deterministic clip ``clip`` of ``num_clips``. With ``regions`` (for region heads)
    each item also carries ``rois``, ``boxes`` and ``roi_mask`` at the same sampled steps as ``x``; with
    ``spatial`` (for spatial heads) the grid ``spatial [t, S*S, D]``.
    The DataLoader fetches a batch through :meth:`__getitems__`, which reads all its steps at once.
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

    def _steps(self, index: int) -> np.ndarray:
        length = int(self.source.lengths[index])
        rng = np.random.default_rng((self.seed, self.epoch, index)) if self.train else None
        return sample_indices(length, self.segments, self.mode, rng=rng, clip=self.clip, num_clips=self.num_clips)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        """The items of a batch; their sampled steps are read and converted to float32 in one operation."""
        steps = [self._steps(i) for i in indices]
        sizes = [len(s) for s in steps]
        x = torch.from_numpy(self.source.gather(indices, steps)).split(sizes)
        items = [{"x": rows, "y": self.labels[i]} for rows, i in zip(x, indices)]
        feature_rows = [int(self.source.lengths[i]) for i in indices]
        for extra in (self.regions, self.spatial):
            if extra is None:
                continue
            for name, values in extra.gather(indices, steps, feature_rows).items():
                for item, part in zip(items, torch.from_numpy(values).split(sizes)):
                    item[name] = part
        return items


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


def _stack(tensors: list[Tensor]) -> Tensor:
    """``torch.stack``, without its copy when the tensors are consecutive equal parts of one buffer, as the items
    of a batch gathered in one read are (a spatial batch is 21 MB of float32)."""
    first = tensors[0]
    start, size, pointer = first.storage_offset(), first.numel(), first.untyped_storage().data_ptr()
    if all(t.is_contiguous() and t.shape == first.shape and t.untyped_storage().data_ptr() == pointer
           and t.storage_offset() == start + i * size for i, t in enumerate(tensors)):
        return first.as_strided((len(tensors), *first.shape), (size, *first.stride()), start)
    return torch.stack(tensors)


def _pad(tensors: list[Tensor], length: int) -> Tensor:
    if all(len(t) == length for t in tensors):  # nothing to pad (TSN segments): no zeros and copies
        return _stack(tensors)
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
