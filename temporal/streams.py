"""Several feature stores of the same videos read side by side, one per stream: two-stream networks (RGB and
optical flow), or SlowFast with one store per frame rate.

The stores are aligned by video key, and stores that do not describe the same videos the same way (classes,
videos, labels, fold assignment) are refused, naming what differs (:func:`check_aligned`). A training step reads
every stream at the same relative positions of the video (:func:`~vidfeat.temporal.sampling.map_steps`: the
streams may have different row counts, e.g. a flow store's one row fewer per video, or another fps) and joins
their rows into one vector per step (:class:`JoinedSource`), so sampling, batching and padding work as for one
store; the fusion (:mod:`vidfeat.temporal.fusion`) decides what the head makes of the joined vector.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vidfeat.features import FeatureStore, SequenceSource, StorePath
from vidfeat.features.errors import UserError
from vidfeat.temporal.sampling import map_steps

EXAMPLES = 3  # keys named in an error


@dataclass(frozen=True)
class Streams:
    """The stores of a multi-stream run, in stream order (``Streams(["rgb.h5", "flow.h5"])``). Each one is a
    :data:`~vidfeat.features.StorePath`, so a stream may itself be a directory or list of shards; a plain
    ``StorePath`` where a ``Streams`` is accepted is a one-stream run."""

    paths: tuple[StorePath, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(self.paths))
        if not self.paths:
            raise UserError("a multi-stream run needs at least one feature store")


def stream_paths(path: StorePath | Streams) -> list[StorePath]:
    """The store of each stream: one for a plain store path (a file, a shard directory or a list of shards)."""
    return list(path.paths) if isinstance(path, Streams) else [path]


def _examples(keys: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in list(keys)[:EXAMPLES])
    return shown + (", ..." if len(keys) > EXAMPLES else "")


def _assignment(store: FeatureStore, key: str) -> str:
    """A video's label and split per fold, as an error names them (``label appear, splits train``)."""
    splits = "/".join(str(store.split(key, fold)) for fold in range(1, store.n_folds + 1)) or "-"
    return f"label {store.label(key)}, splits {splits}"


def _check_pair(first: FeatureStore, other: FeatureStore, names: tuple[str, str]) -> None:
    a, b = names
    if other.classes != first.classes:
        raise UserError(f"stores {a} and {b} have different classes ({first.classes} vs {other.classes}); the streams "
                        "of a run must be extracted from the same dataset")
    keys, other_keys = set(first.keys()), set(other.keys())
    missing, extra = sorted(keys - other_keys), sorted(other_keys - keys)
    if missing or extra:
        raise UserError(
            f"stores {a} and {b} hold different videos: {len(missing)} of {a}'s are not in {b}"
            + (f" ({_examples(missing)})" if missing else "") + f", {len(extra)} of {b}'s are not in {a}"
            + (f" ({_examples(extra)})" if extra else "")
            + "; extract every stream from the same videos (a video that failed in one store is retried by "
            "rerunning that extraction)"
        )
    if other.n_folds != first.n_folds:
        raise UserError(f"stores {a} and {b} have {first.n_folds} and {other.n_folds} folds; the streams of a run "
                        "must be extracted from the same dataset")
    differing = [k for k in sorted(keys) if _assignment(first, k) != _assignment(other, k)]
    if differing:
        key = differing[0]
        raise UserError(
            f"{len(differing)} video(s) have another label or fold assignment in {b} than in {a} "
            f"({_examples(differing)}); e.g. {key!r}: {_assignment(first, key)} in {a}, {_assignment(other, key)} in "
            f"{b}. Extract every stream from the same dataset and split files"
        )


def check_aligned(stores: Sequence[FeatureStore], names: Sequence[str]) -> None:
    """Refuse streams that do not hold the same videos with the same classes, labels and folds (``names``: how
    errors call each store)."""
    for store, name in zip(stores[1:], names[1:]):
        _check_pair(stores[0], store, (names[0], name))


def store_name(path: StorePath) -> str:
    """How errors name a store path (a file, a directory, or a list of shards)."""
    return str(path) if isinstance(path, (str, os.PathLike)) else "+".join(map(str, path))


class JoinedSource:
    """The rows of several streams of the same videos as one ``[T, D1 + D2 + ...]`` sequence per video. ``T`` is
    the longest stream's row count, and every stream is read at the same relative positions
    (:func:`~vidfeat.temporal.sampling.map_steps`), so a shorter stream repeats rows. Behaves as a
    :class:`~vidfeat.features.SequenceSource` for :class:`~vidfeat.temporal.data.SequenceDataset`."""

    def __init__(self, sources: Sequence[SequenceSource]) -> None:
        if any(s.keys != sources[0].keys for s in sources):
            raise ValueError("the streams must hold the same videos, in the same order")
        self.sources = list(sources)
        self.keys = list(sources[0].keys)
        self.lengths = np.max(np.stack([s.lengths for s in sources]), axis=0)

    @classmethod
    def from_stores(cls, paths: Sequence[StorePath], keys: Sequence[str], in_memory: bool | None) -> "JoinedSource":
        return cls([SequenceSource.from_store(path, keys, in_memory) for path in paths])

    @classmethod
    def from_arrays(cls, streams: Sequence[Sequence[np.ndarray]]) -> "JoinedSource":
        """Wrap each stream's in-memory ``[T, D]`` arrays, video by video (e.g. just extracted for ``predict``)."""
        return cls([SequenceSource.from_arrays(arrays) for arrays in streams])

    @property
    def in_memory(self) -> bool:
        return all(s.in_memory for s in self.sources)

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, keys: Sequence[str]) -> "JoinedSource":
        return JoinedSource([s.subset(keys) for s in self.sources])

    def share(self, directory: Path) -> "JoinedSource":
        """Each stream memory-mapped from its own folder of ``directory`` (see :meth:`SequenceSource.share`)."""
        shared = []
        for i, source in enumerate(self.sources):
            folder = Path(directory) / f"stream{i}"
            folder.mkdir(exist_ok=True)
            shared.append(source.share(folder))
        return JoinedSource(shared)

    def gather(self, videos: Sequence[int], steps: Sequence[np.ndarray]) -> np.ndarray:
        """``[sum of len(steps), D1 + D2 + ...]`` float32: each stream's rows at the relative positions of
        ``steps[j]`` (steps of the longest stream) of video ``videos[j]``, side by side."""
        parts = []
        for source in self.sources:
            mapped = [map_steps(s, int(self.lengths[v]), int(source.lengths[v])) for v, s in zip(videos, steps)]
            parts.append(source.gather(videos, mapped))
        return np.concatenate(parts, axis=1)

    def get(self, index: int) -> np.ndarray:
        """Video ``index``'s whole joined sequence ``[T, D1 + D2 + ...]`` (float32)."""
        return self.gather([index], [np.arange(int(self.lengths[index]))])
