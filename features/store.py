"""The HDF5 feature store: the contract between extraction and the temporal heads.

Crash safety comes from never modifying an HDF5 file in place. A writer commits finished videos as small,
complete *part* files (written to ``*.tmp``, fsynced, then renamed) in ``<store>.parts/``; on close it merges
the main file and all parts into a new main file the same way. A ``kill -9`` can only lose videos that were
not yet committed, and the reader sees main + committed parts as one store, so nothing committed is lost.

Every file uses the same layout (schema version 1, documented in README.md): per-row datasets hold all videos'
rows concatenated (contiguous, uncompressed: a video is one slice read, the whole cache one sequential read),
and a small ``/videos`` index maps each key to its row range.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np

from vidfeat.features.errors import UserError
from vidfeat.features.provenance import ProvenanceMismatch, canonical, check_compatible, provenance_hash

SCHEMA_VERSION = 1
SPLIT_CODES = {None: 0, "train": 1, "val": 2, "test": 3}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}
_JSON_FIELDS = ("preprocessing", "sampling", "window", "rois", "spatial", "flow", "classes", "software", "imported")
_STR = h5py.string_dtype("utf-8")
# Per-row region datasets, present when the store was extracted with --rois.
ROI_DATASETS = ("roi_features", "boxes", "roi_mask")
# Per-row spatial grid [N, S*S, D], present when the store was extracted with --spatial S.
SPATIAL_DATASET = "spatial"
EXTRA_ROW_DATASETS = (*ROI_DATASETS, SPATIAL_DATASET)
# Per-video columns of /videos besides key/start/length, with their on-disk types.
_VIDEO_COLUMNS = {
    "label": np.int32, "split": np.uint8, "source": _STR, "source_size": np.int64, "source_mtime": np.float64,
    "decoded_frames": np.int64, "expected_frames": np.int64, "partial": _STR,
}


class StoreError(UserError):
    """A store cannot be read or written as asked."""


class StoreLocked(StoreError):
    """Another writer holds the store."""


class DiskFull(StoreError):
    """A store file could not be written for lack of space; what was committed before is intact."""


@dataclass
class VideoRecord:
    """One successfully extracted video: its rows plus where they came from."""

    key: str
    features: np.ndarray
    timestamps: np.ndarray
    frame_indices: np.ndarray
    label: str | None = None
    splits: tuple[str | None, ...] = ()
    source: str = ""
    source_size: int = 0
    source_mtime: float = 0.0
    decoded_frames: int = 0
    expected_frames: int = -1
    partial: str = ""
    frame_ranges: np.ndarray | None = None
    roi_features: np.ndarray | None = None
    boxes: np.ndarray | None = None
    roi_mask: np.ndarray | None = None
    spatial: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.features)
        if self.features.ndim != 2 or n == 0:
            raise StoreError(f"{self.key!r}: features must be a non-empty [T, D] array, got shape {self.features.shape}")
        if len(self.timestamps) != n or len(self.frame_indices) != n:
            raise StoreError(f"{self.key!r}: timestamps/frame_indices must have {n} rows like the features")


@dataclass
class Rows:
    """Rows of many videos in one array, video ``i`` being ``data[starts[i]:starts[i] + lengths[i]]``.

    One array lets a batch of sampled steps be gathered with a single indexing operation. When ``data`` is a memory
    map (of a store file, or of a ``.npy`` file written by :meth:`share`), pickling sends the file name and offset,
    not the rows, so worker processes map the same pages instead of each holding a copy.
    """

    data: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def video(self, i: int) -> np.ndarray:
        start = int(self.starts[i])
        return self.data[start:start + int(self.lengths[i])]

    def take(self, picked: Sequence[int]) -> "Rows":
        """The rows of some of the videos, sharing ``data``."""
        picked = np.asarray(picked, dtype=np.int64)
        return Rows(self.data, self.starts[picked], self.lengths[picked])

    def gather(self, videos: Sequence[int], steps: Sequence[np.ndarray]) -> np.ndarray:
        """``[sum of len(steps), ...]``: steps ``steps[j]`` of video ``videos[j]``, concatenated, in one read."""
        index = np.concatenate([self.starts[v] + s for v, s in zip(videos, steps)]) if len(videos) else []
        return self.data[np.asarray(index, dtype=np.int64)]

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> "Rows":
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        return cls(np.concatenate(arrays), np.cumsum(lengths) - lengths, lengths)

    def share(self, path: Path) -> "Rows":
        """The same rows written to ``path`` as ``.npy`` and memory-mapped from there, for processes to share: a
        private snapshot, which a store file replaced meanwhile (a resumed extraction merging) cannot change."""
        np.save(path, np.ascontiguousarray(self.data))
        return Rows(np.load(path, mmap_mode="r"), self.starts, self.lengths)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if isinstance(self.data, np.memmap):
            data, stat = self.data, os.stat(self.data.filename)
            state["data"] = _Mapped(Path(data.filename), data.offset, data.dtype.str, data.shape,
                                    (stat.st_size, stat.st_mtime_ns))
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["data"], _Mapped):
            mapped = state["data"]
            stat = os.stat(mapped.path)
            if (stat.st_size, stat.st_mtime_ns) != mapped.identity:
                raise StoreError(f"{mapped.path} was replaced after its rows were mapped; load the store again")
            state["data"] = np.memmap(mapped.path, dtype=mapped.dtype, mode="r", offset=mapped.offset,
                                      shape=mapped.shape)
        self.__dict__.update(state)


@dataclass
class _Mapped:
    """Where a memory-mapped array lives, which is all that a pickled :class:`Rows` carries of it, and the file's
    size and mtime then, so that a file replaced since is refused instead of read at stale offsets."""

    path: Path
    offset: int
    dtype: str
    shape: tuple[int, ...]
    identity: tuple[int, int]


def _read_attrs(f: h5py.File) -> dict:
    attrs = {}
    for name, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        attrs[name] = json.loads(value) if name in _JSON_FIELDS or name == "dataset" else value
    return attrs


def _write_attrs(f: h5py.File, provenance: dict) -> None:
    for name, value in provenance.items():
        if value is None:
            continue
        if name in _JSON_FIELDS or name == "dataset":
            value = canonical(value)
        f.attrs[name] = value
    f.attrs["provenance_hash"] = provenance_hash(provenance)


def _decode(values: Iterable) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class _File:
    """One immutable store file with its video index held in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.h5 = h5py.File(path, "r", locking=False)
        except OSError as exc:
            raise StoreError(f"cannot open feature store {path}: {exc}; is it an HDF5 file written by vidfeat?") from exc
        f = self.h5
        if "schema_version" not in f.attrs or "videos" not in f:
            f.close()
            raise StoreError(f"{path} is not a vidfeat feature store (no schema_version / videos index)")
        version = int(f.attrs["schema_version"])
        if version != SCHEMA_VERSION:
            f.close()
            raise StoreError(
                f"{path} has schema version {version}; this vidfeat reads version {SCHEMA_VERSION}. "
                "Re-extract it or use the vidfeat version that wrote it."
            )
        self.attrs = _read_attrs(f)
        v = f["videos"]
        self.keys = _decode(v["key"][:])
        self.start = v["start"][:]
        self.length = v["length"][:]
        self.label = v["label"][:]
        self.split = v["split"][:]
        self.index = {key: i for i, key in enumerate(self.keys)}
        failures = f.get("failures")
        self.failures = (
            list(zip(_decode(failures["key"][:]), _decode(failures["source"][:]), _decode(failures["error"][:])))
            if failures is not None else []
        )

    def read_all(self, name: str) -> np.ndarray:
        """All rows of dataset ``name``. A contiguous dataset (what the writer makes) is memory-mapped, read-only, at
        its offset in the file: no copy, the pages are the page cache's, shared by every process that maps the file,
        and valid for as long as the mapping lives because a store file is never modified in place. Copying the
        rows instead costs the first touch of as much fresh memory, and h5py's float16 read several times more."""
        dataset = self.h5[name]
        offset = dataset.id.get_offset()
        if offset is None or dataset.chunks is not None:
            return dataset[:]
        return np.memmap(self.path, dtype=dataset.dtype, mode="r", offset=offset, shape=dataset.shape)

    def rows(self, name: str, i: int) -> np.ndarray:
        start = int(self.start[i])
        return self.h5[name][start:start + int(self.length[i])]

    def video_field(self, name: str, i: int):
        value = self.h5["videos"][name][i]
        return value.decode() if isinstance(value, bytes) else value.item()

    def record(self, i: int) -> VideoRecord:
        classes = self.attrs.get("classes") or []
        label_index = int(self.label[i])
        return VideoRecord(
            key=self.keys[i],
            features=self.rows("features", i),
            timestamps=self.rows("timestamps", i),
            frame_indices=self.rows("frame_indices", i),
            label=classes[label_index] if label_index >= 0 else None,
            splits=tuple(SPLIT_NAMES[int(c)] for c in self.split[i]),
            source=self.video_field("source", i),
            source_size=self.video_field("source_size", i),
            source_mtime=self.video_field("source_mtime", i),
            decoded_frames=self.video_field("decoded_frames", i),
            expected_frames=self.video_field("expected_frames", i),
            partial=self.video_field("partial", i),
            frame_ranges=self.rows("frame_ranges", i) if "frame_ranges" in self.h5 else None,
            **{name: self.rows(name, i) for name in EXTRA_ROW_DATASETS if name in self.h5},
        )

    def close(self) -> None:
        self.h5.close()


def parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def shard_paths(directory: Path) -> list[Path]:
    """The shard stores of a sharded store directory (``--cluster``/``--shard`` runs): every ``*.h5`` in it, and
    every shard that has only committed parts so far (its writer died before merging them)."""
    names = {p.name for p in directory.glob("*.h5") if p.is_file()}
    names |= {p.name[: -len(".parts")] for p in directory.glob("*.h5.parts") if p.is_dir()}
    return [directory / name for name in sorted(names)]


def _expand(path: Path) -> list[Path]:
    return shard_paths(path) if path.is_dir() else [path]


def _committed_files(path: Path) -> list[Path]:
    """The main file (if any) followed by committed parts in commit order."""
    files = [path] if path.exists() else []
    parts = parts_dir(path)
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.name.startswith("part-") and p.suffix == ".h5")
    return files


class FeatureStore:
    """Read-only view over one store (main file + committed parts) or several shards read as one; a directory
    stands for all the shards in it."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._files: list[_File] = []
        self._where: dict[str, tuple[_File, int]] = {}
        self._failures: dict[str, tuple[str, str]] = {}
        try:
            for path in [shard for given in paths for shard in _expand(given)]:
                self._add_shard(path)
        except BaseException:
            self.close()
            raise
        if not self._files:
            raise StoreError(f"no feature store at {', '.join(map(str, paths))}; create one with `vidfeat extract`")
        self.attrs = dict(self._files[0].attrs)

    def _add_shard(self, path: Path) -> None:
        """Add one store (main file + its committed parts); later parts override earlier rows of the same key."""
        shard_keys: set[str] = set()
        for file_path in _committed_files(path):
            file = _File(file_path)
            self._files.append(file)
            check_compatible(self._files[0].attrs, file.attrs, str(file.path))
            for key, i in file.index.items():
                if key in self._where and key not in shard_keys:
                    raise StoreError(
                        f"video {key!r} is in both {self._where[key][0].path} and {file.path}; "
                        "shards read as one store must not overlap"
                    )
                shard_keys.add(key)
                self._where[key] = (file, i)
                self._failures.pop(key, None)
            for key, source, error in file.failures:
                if key not in self._where:
                    self._failures[key] = (source, error)

    # Mapping-like access ---------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def _locate(self, key: str) -> tuple[_File, int]:
        try:
            return self._where[key]
        except KeyError:
            raise KeyError(f"video {key!r} is not in this store ({len(self)} videos)") from None

    def features(self, key: str) -> np.ndarray:
        file, i = self._locate(key)
        return file.rows("features", i)

    def timestamps(self, key: str) -> np.ndarray:
        file, i = self._locate(key)
        return file.rows("timestamps", i)

    def frame_indices(self, key: str) -> np.ndarray:
        file, i = self._locate(key)
        return file.rows("frame_indices", i)

    def frame_ranges(self, key: str) -> np.ndarray | None:
        """First and last source frame of each clip window ([T, 2]); None for per-frame stores."""
        file, i = self._locate(key)
        return file.rows("frame_ranges", i) if "frame_ranges" in file.h5 else None

    def rois(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(roi_features [T, R, Dr], boxes [T, R, 4] in [0, 1] as x1 y1 x2 y2, roi_mask [T, R]); None without RoIs."""
        file, i = self._locate(key)
        if "roi_features" not in file.h5:
            return None
        return tuple(file.rows(name, i) for name in ROI_DATASETS)

    def spatial(self, key: str) -> np.ndarray | None:
        """The spatial grid ``[T, S*S, D]`` (cells row-major, see provenance ``spatial``); None without one."""
        file, i = self._locate(key)
        return file.rows(SPATIAL_DATASET, i) if SPATIAL_DATASET in file.h5 else None

    def row_nbytes(self) -> dict[str, int]:
        """Bytes one row takes on disk in each per-row dataset (features, timestamps, regions, grid, ...)."""
        h5 = self._files[0].h5
        return {
            name: int(np.prod(h5[name].shape[1:], dtype=np.int64)) * h5[name].dtype.itemsize
            for name in h5 if isinstance(h5[name], h5py.Dataset)
        }

    def label(self, key: str) -> str | None:
        file, i = self._locate(key)
        index = int(file.label[i])
        return self.classes[index] if index >= 0 else None

    def split(self, key: str, fold: int = 1) -> str | None:
        if not 1 <= fold <= self.n_folds:
            raise UserError(f"fold must be in 1..{self.n_folds} for this store, got {fold}")
        file, i = self._locate(key)
        return SPLIT_NAMES[int(file.split[i, fold - 1])]

    def record(self, key: str) -> VideoRecord:
        file, i = self._locate(key)
        return file.record(i)

    def lengths(self) -> dict[str, int]:
        return {key: int(file.length[i]) for key, (file, i) in self._where.items()}

    def source_stats(self) -> dict[str, tuple[int, float]]:
        """(size, mtime) of each video's source when it was extracted, to spot videos changed since."""
        columns = {id(f): (f.h5["videos"]["source_size"][:], f.h5["videos"]["source_mtime"][:]) for f in self._files}
        return {
            key: (int(columns[id(file)][0][i]), float(columns[id(file)][1][i]))
            for key, (file, i) in self._where.items()
        }

    def partial(self) -> dict[str, str]:
        """Videos kept although they decoded short, with the reason (decoded vs expected frames)."""
        out = {}
        for key, (file, i) in self._where.items():
            reason = file.video_field("partial", i)
            if reason:
                out[key] = reason
        return dict(sorted(out.items()))

    def failures(self) -> list[tuple[str, str]]:
        """(source, error) of every video that could not be extracted and has not succeeded since."""
        return [self._failures[key] for key in sorted(self._failures)]

    def failure_records(self) -> list[tuple[str, str, str]]:
        return [(key, *self._failures[key]) for key in sorted(self._failures)]

    def load_rows(self, keys: Sequence[str] | None = None, name: str = "features") -> Rows:
        """Bulk read of per-row dataset ``name`` (``features`` or a region dataset) of ``keys``: one sequential read
        per file that holds any of them, kept as one array instead of one per video."""
        keys = self.keys() if keys is None else list(keys)
        located = [self._locate(key) for key in keys]
        files = list({id(file): file for file, _ in located}.values())
        parts = [file.read_all(name) for file in files]
        offset = dict(zip(map(id, files), np.cumsum([0] + [len(p) for p in parts[:-1]], dtype=np.int64)))
        data = parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else self._files[0].h5[name][:0]
        starts = np.array([offset[id(file)] + int(file.start[i]) for file, i in located], dtype=np.int64)
        lengths = np.array([int(file.length[i]) for file, i in located], dtype=np.int64)
        return Rows(data, starts, lengths)

    def load_all(self, keys: Sequence[str] | None = None) -> list[np.ndarray]:
        """Bulk read (see :meth:`load_rows`), one array view per video."""
        rows = self.load_rows(keys)
        return [rows.video(i) for i in range(len(rows))]

    # Provenance -----------------------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.attrs.get("classes") or [])

    @property
    def n_folds(self) -> int:
        return int(self.attrs.get("n_folds", 0))

    @property
    def feature_dim(self) -> int:
        return int(self.attrs["feature_dim"])

    @property
    def provenance_hash(self) -> str:
        return provenance_hash(self.attrs)

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self._files]

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(path: str | os.PathLike | Sequence[str | os.PathLike]) -> FeatureStore:
    """Open a store read-only; a list of paths, or a directory of shards, reads several shards as one store."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return FeatureStore([Path(p) for p in paths])


@dataclass
class StoredVideos:
    """What a store already holds: what a rerun skips (done, unless its source changed since) and what it
    retries (failures)."""

    done: set[str] = field(default_factory=set)
    failures: dict[str, str] = field(default_factory=dict)
    source_stats: dict[str, tuple[int, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, store: FeatureStore) -> "StoredVideos":
        return cls(set(store.keys()), {key: error for key, _, error in store.failure_records()}, store.source_stats())

    def is_stale(self, key: str, source: str | os.PathLike) -> bool:
        """True when the stored video's source file changed size or mtime since it was extracted."""
        recorded = self.source_stats.get(key)
        if recorded is None:
            return False
        try:
            stat = os.stat(source)
        except OSError:
            return False
        return (stat.st_size, stat.st_mtime) != recorded


class CommittedKeys:
    """The keys committed so far in a store or a directory of shards, as other writers go on committing.

    Committed files never change, so a file is read once; a long-lived worker can ask before each task which of
    its videos another worker (one that died after committing them) has already stored."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._read: dict[Path, tuple[tuple[int, int], frozenset[str]]] = {}

    def current(self) -> set[str]:
        seen: dict[Path, tuple[tuple[int, int], frozenset[str]]] = {}
        for shard in _expand(self.path):
            for file_path in _committed_files(shard):
                try:
                    stat = file_path.stat()
                    signature = (stat.st_mtime_ns, stat.st_size)
                    known = self._read.get(file_path)
                    if known is None or known[0] != signature:
                        with h5py.File(file_path, "r", locking=False) as f:
                            known = (signature, frozenset(_decode(f["videos"]["key"][:])))
                except FileNotFoundError:
                    continue  # merged away since the listing: writers merge their parts only when they close
                seen[file_path] = known
        self._read = seen
        return set().union(*(keys for _, keys in seen.values()))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _extra_row_shapes(provenance: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The optional per-row datasets a store of this provenance holds: each row's shape and dtype."""
    dtype = np.dtype(provenance.get("dtype", "float16"))
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    rois = provenance.get("rois")
    if rois is not None:
        slots, roi_dim = int(rois["max_rois"]), int(rois["feature_dim"])
        shapes.update(roi_features=((slots, roi_dim), dtype), boxes=((slots, 4), np.dtype(np.float32)),
                      roi_mask=((slots,), np.dtype(bool)))
    spatial = provenance.get("spatial")
    if spatial is not None:
        shapes[SPATIAL_DATASET] = ((int(spatial["cells"]), int(spatial["feature_dim"])), dtype)
    return shapes


def _write_file(
    path: Path,
    provenance: dict,
    lengths_by_key: dict[str, int],
    load: Callable[[str], VideoRecord],
    failures: Sequence[tuple[str, str, str]],
) -> None:
    """Write one complete store file atomically: temp name, fsync, rename, fsync the directory. A file that
    cannot be completed (a full disk, a bad record) leaves nothing behind: its temp file is removed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_rows(tmp, provenance, lengths_by_key, load, failures)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        feature_bytes = sum(lengths_by_key.values()) * int(provenance["feature_dim"]) * np.dtype(
            provenance.get("dtype", "float16")).itemsize
        if isinstance(exc, (OSError, RuntimeError)) and _out_of_space(exc, path.parent, feature_bytes):
            raise DiskFull(f"the disk is full (or over quota): could not write {path}") from exc
        raise
    _fsync_dir(path.parent)


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _out_of_space(exc: BaseException, folder: Path, needed: int) -> bool:
    """Whether a failed write ran out of space. HDF5 reports ENOSPC inside the text of a RuntimeError (and
    closing the file then raises another error on top of it), so the whole chain is read, and the free space
    asked as well."""
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, OSError) and chain.errno in _NO_SPACE:
            return True
        if any(os.strerror(code) in str(chain) for code in _NO_SPACE):
            return True
        chain = chain.__cause__ or chain.__context__
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize < needed


def _check_record(record: VideoRecord, rows: int, dim: int, classes: list[str], n_folds: int) -> None:
    """A record's features, label and splits must fit the store it is written into."""
    if record.features.shape != (rows, dim):
        raise StoreError(f"{record.key!r}: features of shape {record.features.shape}, expected ({rows}, {dim})")
    if record.label is not None and record.label not in classes:
        raise StoreError(f"{record.key!r}: label {record.label!r} is not in the store's class list {classes}")
    if len(record.splits) != n_folds:
        raise StoreError(f"{record.key!r}: {len(record.splits)} split entries for a store with {n_folds} folds")


def _write_index(
    videos: h5py.Group, keys: list[str], starts: np.ndarray, lengths: np.ndarray, columns: dict[str, list],
    n_folds: int,
) -> None:
    """The ``/videos`` table: each video's key, row range and per-video columns."""
    videos.create_dataset("key", data=keys, dtype=_STR)
    videos.create_dataset("start", data=starts)
    videos.create_dataset("length", data=lengths)
    for name, dtype in _VIDEO_COLUMNS.items():
        data = np.array(columns[name], dtype=dtype if dtype is not _STR else object)
        if name == "split":
            data = data.reshape(len(keys), n_folds)
        videos.create_dataset(name, data=data, dtype=dtype)


def _write_rows(
    tmp: Path,
    provenance: dict,
    lengths_by_key: dict[str, int],
    load: Callable[[str], VideoRecord],
    failures: Sequence[tuple[str, str, str]],
) -> None:
    """The file's contents, fsynced. Rows are loaded one video at a time through ``load``, so merging a large
    store needs little memory."""
    keys = sorted(lengths_by_key)
    classes = provenance.get("classes") or []
    class_index = {name: i for i, name in enumerate(classes)}
    n_folds = int(provenance.get("n_folds", 0))
    dim = int(provenance["feature_dim"])
    dtype = np.dtype(provenance.get("dtype", "float16"))
    lengths = np.array([lengths_by_key[key] for key in keys], dtype=np.int64)
    starts = (np.cumsum(lengths) - lengths).astype(np.int64)
    total = int(lengths.sum())
    columns: dict[str, list] = {name: [] for name in _VIDEO_COLUMNS}
    has_ranges = provenance.get("kind") == "clip"

    with h5py.File(tmp, "w", locking=False) as f:
        _write_attrs(f, provenance)
        f.attrs["schema_version"] = SCHEMA_VERSION
        feats = f.create_dataset("features", shape=(total, dim), dtype=dtype)
        stamps = f.create_dataset("timestamps", shape=(total,), dtype=np.float64)
        indices = f.create_dataset("frame_indices", shape=(total,), dtype=np.int64)
        ranges = f.create_dataset("frame_ranges", shape=(total, 2), dtype=np.int64) if has_ranges else None
        extras = {
            name: f.create_dataset(name, shape=(total, *row_shape), dtype=row_dtype)
            for name, (row_shape, row_dtype) in _extra_row_shapes(provenance).items()
        }
        for key, start, n in zip(keys, starts, lengths):
            r = load(key)
            _check_record(r, int(n), dim, classes, n_folds)
            rows = slice(int(start), int(start + n))
            feats[rows] = r.features.astype(dtype, copy=False)
            stamps[rows] = r.timestamps
            indices[rows] = r.frame_indices
            if ranges is not None:
                if r.frame_ranges is None:
                    raise StoreError(f"{r.key!r}: clip stores need frame_ranges for every window")
                ranges[rows] = r.frame_ranges
            for name, dataset in extras.items():
                value = getattr(r, name)
                if value is None or value.shape != (n, *dataset.shape[1:]):
                    raise StoreError(f"{key!r}: {name} of shape {None if value is None else value.shape}, "
                                     f"expected {(int(n), *dataset.shape[1:])} (this store has {name})")
                dataset[rows] = value
            columns["label"].append(class_index.get(r.label, -1))
            columns["split"].append([SPLIT_CODES[s] for s in r.splits])
            for name in list(_VIDEO_COLUMNS)[2:]:
                columns[name].append(getattr(r, name))
        _write_index(f.create_group("videos"), keys, starts, lengths, columns, n_folds)
        failures = sorted(failures)
        g = f.create_group("failures")
        for column, name in enumerate(("key", "source", "error")):
            g.create_dataset(name, data=[row[column] for row in failures], dtype=_STR)
        f.flush()
        os.fsync(f.id.get_vfd_handle())


def write_store(
    path: str | os.PathLike,
    records: Iterable[VideoRecord],
    provenance: dict,
    failures: Sequence[tuple[str, str, str]] = (),
) -> None:
    """Write a complete store in one go (tests, synthetic caches, conversions); refuses to overwrite."""
    path = Path(path)
    if path.exists():
        raise StoreError(f"{path} already exists; remove it first or append with StoreWriter")
    by_key = {r.key: r for r in records}
    _write_file(path, _stamp(provenance), {k: len(r.features) for k, r in by_key.items()}, by_key.__getitem__, failures)


def _stamp(provenance: dict) -> dict:
    """Fill in the fields every store carries, without overriding what the caller recorded."""
    from importlib.metadata import version

    stamped = {"schema_version": SCHEMA_VERSION, "kind": "frame", "dtype": "float16", "classes": [], "n_folds": 0}
    stamped.update(provenance)
    stamped.setdefault("vidfeat_version", version("vidfeat"))
    stamped.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return stamped


class StoreWriter:
    """Appends videos to a store crash-safely; one writer per store at a time.

    ``add``/``add_failure`` buffer, ``commit`` makes the buffer durable as one part file (``commit_if_due`` at most
    every ``commit_every`` seconds), ``close`` merges
    everything into the main file. Opening an existing store checks that it was made the same way.
    """

    def __init__(self, path: str | os.PathLike, provenance: dict, commit_every: float = 0.0) -> None:
        if commit_every < 0:
            raise UserError(f"commit_every is a number of seconds >= 0, got {commit_every}")
        self.path = Path(path)
        self.provenance = _stamp(provenance)
        self.commit_every = commit_every
        self.commits = 0  # part files written by this writer
        self._disk_full = False
        self._last_commit = time.monotonic()
        self._parts = parts_dir(self.path)
        if not self.path.parent.is_dir():
            raise StoreError(f"the folder {self.path.parent} does not exist; create it, or fix the output path")
        try:
            self._parts.mkdir(exist_ok=True)
            self._lock_file = self._acquire_lock()
        except OSError as exc:
            raise StoreError(f"cannot write the store {self.path}: {exc.strerror or exc}; the folder "
                             f"{self.path.parent} must be writable (not a read-only mount)") from exc
        self._pending: list[VideoRecord] = []
        self._pending_failures: list[tuple[str, str, str]] = []
        try:
            for stale in self._parts.glob("*.tmp"):
                stale.unlink()
            self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
            self.stored = StoredVideos()  # what the store held when this writer opened it
            if _committed_files(self.path):
                with FeatureStore([self.path]) as existing:
                    check_compatible(existing.attrs, self.provenance, f"the existing store {self.path}")
                    self.provenance = {**existing.attrs, "updated": self.provenance["created"]}
                    self.stored = StoredVideos.of(existing)
            self.done: set[str] = set(self.stored.done)  # stored, and committed by this writer since
        except BaseException:
            self._release_lock()
            raise

    def _acquire_lock(self):
        lock_path = self._parts / "lock"
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreLocked(
                f"{self.path} is being written by {holder}; wait for it to finish or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {datetime.now().isoformat(timespec='seconds')}")
        handle.flush()
        return handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def add(self, record: VideoRecord) -> None:
        self._pending.append(record)

    def add_failure(self, key: str, source: str, error: str) -> None:
        self._pending_failures.append((key, source, error))

    def commit_if_due(self) -> None:
        """Commit when ``commit_every`` seconds have passed since the last commit (always, for 0).

        On a fast device short videos finish many times a second; one fsynced part file each would be tens of
        thousands of small files on a cluster's network filesystem. A ``kill -9`` then loses at most the videos
        finished in the last ``commit_every`` seconds, and a rerun extracts them again.
        """
        if time.monotonic() - self._last_commit >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Make everything added so far durable as one part file, now."""
        self._last_commit = time.monotonic()
        if not self._pending and not self._pending_failures:
            return
        name = f"part-{time.time_ns():020d}-{os.getpid()}.h5"
        by_key = {r.key: r for r in self._pending}
        lengths = {k: len(r.features) for k, r in by_key.items()}
        with self._safe_if_disk_full():
            _write_file(self._parts / name, self.provenance, lengths, by_key.__getitem__, self._pending_failures)
        self.done.update(r.key for r in self._pending)
        self._pending, self._pending_failures = [], []
        self.commits += 1

    def close(self) -> None:
        """Commit, then merge main file and parts into a new main file and remove the parts."""
        if self._lock_file is None:
            return
        try:
            if self._disk_full:
                return  # the committed parts stay; the next run merges them
            self.commit()
            parts = [p for p in _committed_files(self.path) if p != self.path]
            if parts:
                with self._safe_if_disk_full():
                    merge_stores([self.path], self.path, provenance=self.provenance)
                for part in parts:
                    part.unlink()
            (self._parts / "lock").unlink(missing_ok=True)
            if not any(self._parts.iterdir()):
                self._parts.rmdir()
        finally:
            self._release_lock()

    @contextmanager
    def _safe_if_disk_full(self) -> Iterator[None]:
        """A full disk ends the run, with what the user needs to know: what is safe, and how to go on. The
        writer then writes nothing more (HDF5 itself may be left unable to create files in this process)."""
        try:
            yield
        except DiskFull as exc:
            self._disk_full = True
            raise DiskFull(f"{exc}. The {len(self.done)} video(s) committed before are safe in {self.path} (with "
                           f"its {self._parts.name} folder, if any); free some space and rerun the same command "
                           "to resume") from exc

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge_stores(sources: Sequence[str | os.PathLike], out: str | os.PathLike, provenance: dict | None = None) -> int:
    """Merge stores (shards from several machines, or a store and its parts) into one file; returns #videos."""
    out = Path(out)
    with FeatureStore([Path(s) for s in sources]) as store:
        merged = dict(provenance or store.attrs)
        check_compatible(store.attrs, merged, f"merging into {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_file(out, merged, store.lengths(), store.record, store.failure_records())
        return len(store)


# Verification ------------------------------------------------------------------------------------------
VERIFY_CHUNK_ROWS = 65536  # rows read at a time when checking that every value is finite


@dataclass
class Verification:
    """What ``verify_store`` found: problems make the store untrustworthy; notes are harmless leftovers."""

    files: int = 0
    videos: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str | os.PathLike) -> Verification:
    """Read a whole store (a file with its parts, or a directory of shards) once and check it: each file opens
    as a complete store, its index fits its datasets without overlap, shapes and dtypes match its provenance,
    every value is finite, all files were made the same way, and no video is in two shards."""
    result = Verification()
    owner: dict[str, Path] = {}
    first: dict | None = None
    for shard in _expand(Path(path)):
        result.notes += [f"{tmp}: an unfinished write (the next writer removes it)"
                         for tmp in [*shard.parent.glob(shard.name + ".tmp"), *parts_dir(shard).glob("*.tmp")]]
        shard_keys: set[str] = set()
        for file_path in _committed_files(shard):
            try:
                file = _File(file_path)
            except StoreError as exc:
                result.problems.append(str(exc))
                continue
            with closing(file):
                result.files += 1
                result.problems += [f"{file_path}: {problem}" for problem in _file_problems(file)]
                first = first or file.attrs
                try:
                    check_compatible(first, file.attrs, str(file_path))
                except ProvenanceMismatch as exc:
                    result.problems.append(str(exc))
                for key in file.keys:
                    if key in owner and key not in shard_keys:
                        result.problems.append(f"video {key!r} is in both {owner[key]} and {file_path}")
                    owner[key] = file_path
                shard_keys.update(file.keys)
                result.rows += int(file.length.sum())
    result.videos = len(owner)
    if not result.files and not result.problems:
        result.problems.append(f"no feature store at {path}")
    return result


def _file_problems(file: _File) -> list[str]:
    """Index, shapes, dtypes and values of one committed file."""
    h5, attrs = file.h5, file.attrs
    total = int(h5["features"].shape[0])
    problems = _index_problems(file, total)
    expected = (total, int(attrs["feature_dim"]))
    if h5["features"].shape != expected:
        problems.append(f"features of shape {h5['features'].shape}, provenance says {expected}")
    if h5["features"].dtype != np.dtype(attrs.get("dtype", "float16")):
        problems.append(f"features stored as {h5['features'].dtype}, provenance says {attrs.get('dtype')}")
    for name, dataset in h5.items():
        if isinstance(dataset, h5py.Dataset) and dataset.shape[:1] != (total,):
            problems.append(f"per-row dataset {name} has {dataset.shape[0]} rows, features have {total}")
    if (attrs.get("rois") is not None) != ("roi_features" in h5):
        problems.append("region datasets do not match the provenance's rois")
    for name in ("features", "timestamps", *(n for n in ROI_DATASETS[:2] if n in h5)):
        problems += _non_finite(file, name)
    return problems


def _index_problems(file: _File, total: int) -> list[str]:
    """The /videos index: every range inside the datasets, no two overlapping, labels and splits valid."""
    problems = []
    start, length = file.start.astype(np.int64), file.length.astype(np.int64)
    if (length < 0).any() or (start < 0).any() or (start + length > total).any():
        problems.append("a video's rows lie outside the datasets")
    order = np.argsort(start, kind="stable")
    if (start[order][1:] < (start + length)[order][:-1]).any():
        problems.append("two videos' rows overlap")
    classes = file.attrs.get("classes") or []
    if ((file.label < -1) | (file.label >= len(classes))).any():
        problems.append(f"a label index outside the {len(classes)} classes")
    n_folds = int(file.attrs.get("n_folds", 0))
    if file.split.shape != (len(file.keys), n_folds) or not np.isin(file.split, list(SPLIT_NAMES)).all():
        problems.append(f"split codes of shape {file.split.shape} or values outside {sorted(SPLIT_NAMES)}")
    return problems


def _non_finite(file: _File, name: str) -> list[str]:
    """The videos with NaN or infinite values in dataset ``name``, read in chunks."""
    dataset, bad_rows = file.h5[name], []
    for begin in range(0, dataset.shape[0], VERIFY_CHUNK_ROWS):
        chunk = dataset[begin:begin + VERIFY_CHUNK_ROWS]
        finite = np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
        bad_rows += (np.flatnonzero(~finite) + begin).tolist()
    if not bad_rows:
        return []
    owners = np.searchsorted(file.start, bad_rows, side="right") - 1
    keys = sorted({file.keys[i] for i in owners if 0 <= i < len(file.keys)})
    return [f"{len(bad_rows)} row(s) of {name} are NaN or infinite, in {', '.join(keys[:5])}"
            + (" ..." if len(keys) > 5 else "")]
