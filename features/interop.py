"""Caches made elsewhere: per-video feature files in video_features' layout, into a store and back.

video_features (github.com/v-iashin/video_features) saves, for each video and each key of its output dict, a file
``<video stem>_<key>.npy`` (``--on_extraction save_numpy``, ``np.save``) or ``.pkl`` (``save_pickle``, a pickled
array): the features under the feature type's key (``resnet``, ``r21d``, ``clip``, ``rgb``/``flow`` for i3d...)
plus, for frame-wise extractors, ``fps`` (a scalar) and ``timestamps_ms`` (one time per feature row, in ms).

An imported store records where its features came from (``imported``: tool, folder, feature type, file format);
its ``backbone`` is ``imported:<feature type>``, so it never mixes with extracted features or with another import.
"""
from __future__ import annotations

import csv
import os
import pickle
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from vidfeat.features.errors import UserError
from vidfeat.features.loaders import to_float32
from vidfeat.features.store import SPLIT_CODES, StoreError, VideoRecord, open_store, write_store

META_KEYS = ("fps", "timestamps_ms")
FORMATS = ("npy", "pkl")
LABELS_HEADER = ("video", "label", "split")


@dataclass
class FeatureFiles:
    """The files of one video: its features, and its timestamps and fps when the extractor saved them."""

    stem: str
    features: Path
    timestamps_ms: Path | None = None
    fps: Path | None = None


@dataclass
class Labelling:
    """What the store records of an imported video besides its rows: key, class and one split per fold."""

    key: str
    label: str | None = None
    splits: tuple[str | None, ...] = ()


@dataclass
class ImportSummary:
    videos: int
    feature_type: str
    feature_dim: int
    unmatched_labels: list[str] = field(default_factory=list)  # labelled videos that have no feature file


def _load(path: Path) -> np.ndarray:
    if path.suffix == ".pkl":
        with path.open("rb") as f:
            return np.asarray(pickle.load(f))  # video_features' own pickles; only import files you trust
    return np.load(path, allow_pickle=False)


def find_feature_files(folder: Path, feature_type: str | None = None) -> tuple[str, list[FeatureFiles]]:
    """The feature type (given, or the one non-meta key all files share) and the files of every video."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix[1:] in FORMATS and "_" in p.stem)
    if not files:
        raise StoreError(f"{folder} holds no <video>_<key>.npy or .pkl files (video_features' save_numpy layout)")
    if feature_type is None:
        keys = Counter(p.stem.rsplit("_", 1)[1] for p in files if not p.stem.endswith(("_fps", "_timestamps_ms")))
        if len(keys) != 1:
            raise StoreError(
                f"cannot tell the feature type in {folder}: file names end in {', '.join(sorted(keys))}; "
                "pass --feature-type (e.g. resnet, or rgb for i3d)"
            )
        feature_type = next(iter(keys))
    videos = {}
    for path in files:
        for key in (feature_type, *META_KEYS):
            if path.stem.endswith(f"_{key}"):
                stem = path.stem[: -len(key) - 1]
                videos.setdefault(stem, {})[key] = path
                break
    found = [FeatureFiles(s, v[feature_type], v.get("timestamps_ms"), v.get("fps")) for s, v in sorted(videos.items())
             if feature_type in v]
    if not found:
        raise StoreError(f"{folder} holds no *_{feature_type}.npy or .pkl feature files")
    return feature_type, found


def read_labels(path: Path) -> dict[str, Labelling]:
    """A labels CSV with header ``video,label[,split]`` (video: the file stem; split: train, val, test or empty)."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = set(rows[0]) if rows else set()
    if not {"video", "label"} <= header:
        raise UserError(f"{path}: a labels CSV needs the columns video,label[,split]; found {sorted(header)}")
    bad = [r["split"] for r in rows if (r.get("split") or None) not in SPLIT_CODES]
    if bad:
        raise UserError(f"{path}: split must be train, val, test or empty, got {bad[0]!r}")
    has_split = "split" in header
    return {r["video"]: Labelling(r["video"], r["label"] or None, ((r["split"] or None),) if has_split else ())
            for r in rows}


def _record(files: FeatureFiles, labelling: Labelling) -> VideoRecord:
    features = _load(files.features)
    if features.ndim != 2 or not len(features):
        raise StoreError(f"{files.features}: expected a non-empty [T, D] feature array, got shape {features.shape}")
    fps = float(_load(files.fps)) if files.fps is not None else None
    if files.timestamps_ms is not None:
        seconds = _load(files.timestamps_ms).astype(np.float64).reshape(-1) / 1000.0
        if len(seconds) != len(features):
            raise StoreError(f"{files.timestamps_ms}: {len(seconds)} timestamps for {len(features)} feature rows")
    else:
        seconds = np.arange(len(features)) / fps if fps else np.full(len(features), np.nan)
    frames = np.round(seconds * fps).astype(np.int64) if fps else np.arange(len(features))
    return VideoRecord(key=labelling.key, features=features, timestamps=seconds, frame_indices=frames,
                       label=labelling.label, splits=labelling.splits, source=str(files.features.resolve()))


def import_features(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    labels: dict[str, Labelling] | None = None,
    *,
    classes: Sequence[str] | None = None,
    feature_type: str | None = None,
    dataset: dict | None = None,
    dtype: str = "float16",
) -> ImportSummary:
    """Write a store at ``out`` from the feature files in ``folder``; ``labels`` maps a video stem to its key,
    class and splits (every feature file needs one; without ``labels`` videos are keyed by stem, unlabelled)."""
    folder = Path(folder)
    feature_type, found = find_feature_files(folder, feature_type)
    if labels is not None:
        unlabelled = [f.stem for f in found if f.stem not in labels]
        if unlabelled:
            raise UserError(f"{len(unlabelled)} feature file(s) have no row in the labels, e.g. {unlabelled[0]!r}; "
                             "label every video, or import a folder holding only the labelled ones")
    labelling = labels or {f.stem: Labelling(f.stem) for f in found}
    records = [_record(f, labelling[f.stem]) for f in found]
    dims = {r.features.shape[1] for r in records}
    if len(dims) != 1:
        raise StoreError(f"the feature files in {folder} have different widths {sorted(dims)}; one store holds one")
    folds = {len(r.splits) for r in records}
    classes = list(classes) if classes is not None else sorted({r.label for r in records if r.label is not None})
    fps = {float(_load(f.fps)) for f in found if f.fps is not None}
    provenance = {
        "kind": "frame", "backbone": f"imported:{feature_type}", "weights": "unknown", "feature_dim": dims.pop(),
        "dtype": dtype, "preprocessing": {}, "sampling": {"mode": "imported", **({"fps": fps.pop()} if len(fps) == 1
                                                                                 else {})},
        "dataset": dataset or {"name": "imported", "root": str(folder.resolve())}, "classes": classes,
        "n_folds": folds.pop() if len(folds) == 1 else 0,
        "imported": {"tool": "video_features", "folder": str(folder.resolve()), "feature_type": feature_type,
                     "format": found[0].features.suffix[1:], "videos": len(found)},
    }
    write_store(out, records, provenance)
    stems = {f.stem for f in found}
    unmatched = sorted(s for s in (labels or {}) if s not in stems)
    return ImportSummary(len(records), feature_type, provenance["feature_dim"], unmatched)


def export_features(store_path: str | os.PathLike, out_dir: str | os.PathLike, *, feature_type: str | None = None,
                    fmt: str = "npy") -> int:
    """Write every video of the store as video_features does (``<stem>_<type>.npy``, ``_timestamps_ms``, and
    ``_fps`` when the store records one rate), plus ``labels.csv`` for :func:`read_labels`; returns #videos."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    with open_store(store_path) as store:
        feature_type = feature_type or store.attrs.get("imported", {}).get("feature_type") or store.attrs["backbone"]
        fps = (store.attrs.get("sampling") or {}).get("fps")
        stems = {key: key.rsplit("/", 1)[-1] for key in store.keys()}
        clashes = [s for s, n in Counter(stems.values()).items() if n > 1]
        if clashes:
            raise StoreError(f"videos in different folders share the file stem {clashes[0]!r}; video_features' "
                             "layout names files by stem only, so they cannot be exported into one folder")
        out_dir.mkdir(parents=True, exist_ok=True)
        for key, stem in stems.items():
            arrays = {feature_type: to_float32(store.features(key)), "timestamps_ms": store.timestamps(key) * 1000}
            if fps:
                arrays["fps"] = np.asarray(float(fps))
            for name, value in arrays.items():
                _save(out_dir / f"{stem}_{name}.{fmt}", value)
        _write_labels(store, stems, out_dir / "labels.csv")
        return len(stems)


def _save(path: Path, value: np.ndarray) -> None:
    if path.suffix == ".pkl":
        with path.open("wb") as f:
            pickle.dump(value, f)
    else:
        np.save(path, value)


def _write_labels(store, stems: dict[str, str], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LABELS_HEADER if store.n_folds == 1 else LABELS_HEADER[:2])
        for key, stem in stems.items():
            row = [stem, store.label(key) or ""]
            writer.writerow(row + [store.split(key, 1) or ""] if store.n_folds == 1 else row)
