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
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np

SCHEMA_VERSION = 1
SPLIT_CODES = {None: 0, "train": 1, "val": 2, "test": 3}
SPLIT_NAMES = {code: name for name, code in SPLIT_CODES.items()}
# Provenance fields that define what a feature *means*; stores that differ in any of them must never mix.
IDENTITY_FIELDS = (
    "kind", "backbone", "weights", "feature_dim", "dtype", "preprocessing", "sampling", "window", "rois",
    "spatial", "dataset", "classes", "n_folds",
)
# Identity fields added after schema version 1 was fixed: hashed only when set, so stores written before keep
# their provenance hash.
_LATER_FIELDS = ("spatial",)
_JSON_FIELDS = ("preprocessing", "sampling", "window", "rois", "spatial", "classes", "software")
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


class StoreError(RuntimeError):
    """A store cannot be read or written as asked."""


class StoreLocked(StoreError):
    """Another writer holds the store."""


class ProvenanceMismatch(StoreError):
    """Two stores (or a store and a request) were made differently and must not be mixed."""


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


def _canonical(value: object) -> str:
    """JSON with sorted keys: tuples and lists, or dicts in another order, compare equal as they do on disk."""
    return json.dumps(value, sort_keys=True)


def provenance_hash(provenance: dict) -> str:
    """Hash of the identity fields only, so versions and timestamps don't make equal configs look different."""
    identity = {
        name: provenance.get(name) for name in IDENTITY_FIELDS
        if name not in _LATER_FIELDS or provenance.get(name) is not None
    }
    return hashlib.sha256(_canonical(identity).encode()).hexdigest()


def check_compatible(expected: dict, actual: dict, what: str) -> None:
    """Raise ProvenanceMismatch naming every identity field that differs."""
    diffs = [
        f"  {name}: {_canonical(expected.get(name))} vs {_canonical(actual.get(name))}"
        for name in IDENTITY_FIELDS
        if _canonical(expected.get(name)) != _canonical(actual.get(name))
    ]
    if diffs:
        raise ProvenanceMismatch(
            f"{what} was made with a different configuration; refusing to mix them:\n" + "\n".join(diffs)
            + "\nUse a different output file for a different configuration."
        )


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
            value = _canonical(value)
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


def _committed_files(path: Path) -> list[Path]:
    """The main file (if any) followed by committed parts in commit order."""
    files = [path] if path.exists() else []
    parts = parts_dir(path)
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.name.startswith("part-") and p.suffix == ".h5")
    return files


class FeatureStore:
    """Read-only view over one store (main file + committed parts) or several shards read as one."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._files: list[_File] = []
        self._where: dict[str, tuple[_File, int]] = {}
        self._failures: dict[str, tuple[str, str]] = {}
        try:
            for path in paths:
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
            raise ValueError(f"fold must be in 1..{self.n_folds} for this store, got {fold}")
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

    def load_all(self, keys: Sequence[str] | None = None) -> list[np.ndarray]:
        """Bulk read: one sequential read per file instead of one per video."""
        keys = self.keys() if keys is None else list(keys)
        whole = {id(f): f.h5["features"][:] for f in self._files if keys}
        out = []
        for key in keys:
            file, i = self._locate(key)
            start = int(file.start[i])
            out.append(whole[id(file)][start:start + int(file.length[i])])
        return out

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
    """Open a store read-only; a list of paths reads several shards as one store."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return FeatureStore([Path(p) for p in paths])


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
    """Write one complete store file atomically: temp name, fsync, rename, fsync the directory.

    Rows are loaded one video at a time through ``load`` so merging a large store needs little memory.
    """
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

    tmp = path.with_name(path.name + ".tmp")
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
            if r.features.shape != (n, dim):
                raise StoreError(f"{key!r}: features of shape {r.features.shape}, expected ({n}, {dim})")
            if r.label is not None and r.label not in class_index:
                raise StoreError(f"{key!r}: label {r.label!r} is not in the store's class list {classes}")
            if len(r.splits) != n_folds:
                raise StoreError(f"{key!r}: {len(r.splits)} split entries for a store with {n_folds} folds")
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
        v = f.create_group("videos")
        v.create_dataset("key", data=keys, dtype=_STR)
        v.create_dataset("start", data=starts)
        v.create_dataset("length", data=lengths)
        for name, dtype_ in _VIDEO_COLUMNS.items():
            data = np.array(columns[name], dtype=dtype_ if dtype_ is not _STR else object)
            if name == "split":
                data = data.reshape(len(keys), n_folds)
            v.create_dataset(name, data=data, dtype=dtype_)
        failures = sorted(failures)
        g = f.create_group("failures")
        for column, name in enumerate(("key", "source", "error")):
            g.create_dataset(name, data=[row[column] for row in failures], dtype=_STR)
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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
            raise ValueError(f"commit_every is a number of seconds >= 0, got {commit_every}")
        self.path = Path(path)
        self.provenance = _stamp(provenance)
        self.commit_every = commit_every
        self.commits = 0  # part files written by this writer
        self._last_commit = time.monotonic()
        self._parts = parts_dir(self.path)
        self._parts.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._acquire_lock()
        self._pending: list[VideoRecord] = []
        self._pending_failures: list[tuple[str, str, str]] = []
        try:
            for stale in self._parts.glob("*.tmp"):
                stale.unlink()
            self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
            self.done: set[str] = set()
            self.previous_failures: dict[str, str] = {}
            self._source_stats: dict[str, tuple[int, float]] = {}
            if _committed_files(self.path):
                with FeatureStore([self.path]) as existing:
                    check_compatible(existing.attrs, self.provenance, f"the existing store {self.path}")
                    self.provenance = {**existing.attrs, "updated": self.provenance["created"]}
                    self.done = set(existing.keys())
                    self._source_stats = existing.source_stats()
                    self.previous_failures = {key: error for key, _, error in existing.failure_records()}
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

    def is_stale(self, key: str, source: str | os.PathLike) -> bool:
        """True when the stored video's source file changed size or mtime since it was extracted."""
        recorded = self._source_stats.get(key)
        if recorded is None:
            return False
        try:
            stat = os.stat(source)
        except OSError:
            return False
        return (stat.st_size, stat.st_mtime) != recorded

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
        _write_file(self._parts / name, self.provenance, lengths, by_key.__getitem__, self._pending_failures)
        self.done.update(r.key for r in self._pending)
        self._pending, self._pending_failures = [], []
        self.commits += 1

    def close(self) -> None:
        """Commit, then merge main file and parts into a new main file and remove the parts."""
        if self._lock_file is None:
            return
        try:
            self.commit()
            parts = [p for p in _committed_files(self.path) if p != self.path]
            if parts:
                merge_stores([self.path], self.path, provenance=self.provenance)
                for part in parts:
                    part.unlink()
            (self._parts / "lock").unlink(missing_ok=True)
            if not any(self._parts.iterdir()):
                self._parts.rmdir()
        finally:
            self._release_lock()

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
