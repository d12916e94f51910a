"""Scale-out drivers: one logical store (a directory of shards) written by many extractors at once.

* ``--cluster local[:N]`` starts a Dask cluster on this node, one worker process per GPU (or N single-threaded
  processes on CPU); ``--scheduler ADDRESS`` uses a cluster the user already runs (dask-jobqueue, Kubernetes).
  The unit of work is a list of videos; each Dask worker builds its model and decode pool once (an
  ``ExtractionWorker`` plugin) and writes its own shard, ``OUT/shard-<worker>.h5``, one writer per file.
* ``--shard I/N`` needs no Dask: job I of an N-job array takes the videos whose key hashes to it.

A worker killed mid-run loses only its uncommitted videos: Dask runs its task again elsewhere, and the new
worker skips what the dead one had committed (``CommittedKeys``), so every video is stored exactly once.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from vidfeat.extract.options import ExtractOptions
from vidfeat.extract.runner import (
    ExtractionSetup, ExtractSummary, VideoJob, extract_prepared, new_summary, prepare_extraction,
)
from vidfeat.features.errors import UserError
from vidfeat.features.store import (
    FeatureStore, StoredVideos, StoreError, check_compatible, merge_stores, open_store, shard_paths,
)

DIST_EXTRA = "pip install 'vidfeat[dist]'"


class MissingDependency(UserError, ImportError):
    """An optional piece (an extra) that this feature needs is not installed."""


class ClusterError(UserError):
    """The Dask cluster cannot run the extraction as it is set up (unreachable, or its workers cannot)."""


@dataclass(frozen=True)
class ScaleOut:
    """How an extraction is spread: over a Dask cluster, or as one job of an array; optionally merged at the end."""

    cluster: str | None = None       # "local" or "local:N"
    scheduler: str | None = None     # address of a running Dask scheduler
    shard: str | None = None         # "I/N"
    merge: Path | None = None        # one file to merge the shards into when the run is complete
    videos_per_task: int | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.cluster, self.scheduler, self.shard)) != 1:
            raise UserError("a scaled-out extraction takes exactly one of --cluster, --scheduler and --shard")
        if self.videos_per_task is not None and (self.videos_per_task < 1 or self.shard is not None):
            raise UserError("--videos-per-task takes a number >= 1, with --cluster or --scheduler")
        if self.merge is not None and self.shard is not None:
            raise UserError("--merge cannot finish an array job (the other shards may still run); merge when all "
                             "are done, with `vidfeat features merge OUT.h5 DIR`")
        if self.cluster is not None:
            _local_workers(self.cluster)
        if self.shard is not None:
            Shard.parse(self.shard)

    @property
    def local_workers(self) -> int | None:
        return _local_workers(self.cluster) if self.cluster is not None else None


def _local_workers(cluster: str) -> int | None:
    """``local`` -> None (one worker per GPU, or per core), ``local:N`` -> N."""
    match = re.fullmatch(r"local(?::(\d+))?", cluster.strip())
    if not match or match[1] == "0":
        raise UserError(f"--cluster takes local or local:N with N >= 1, got {cluster!r}")
    return int(match[1]) if match[1] else None


@dataclass
class WorkerStats:
    tasks: int = 0
    videos: int = 0
    rows: int = 0
    seconds: float = 0.0
    failures: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ScaledSummary:
    """The whole run's ExtractSummary (wall-clock seconds), plus each Dask worker's share and the dashboard."""

    summary: ExtractSummary
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    dashboard: str = ""


@dataclass(frozen=True)
class Shard:
    """Job ``index`` (1-based) of ``count``: the videos whose key's CRC-32 is ``index - 1`` modulo ``count``.
    A hash of the key, not a position in the list, so a video stays in its shard when the dataset grows."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match or not 1 <= int(match[1]) <= int(match[2]):
            raise UserError(f"--shard takes I/N with 1 <= I <= N (for example 3/8), got {text!r}")
        return cls(int(match[1]), int(match[2]))

    def takes(self, key: str) -> bool:
        return zlib.crc32(key.encode()) % self.count == self.index - 1

    @property
    def file_name(self) -> str:
        return f"shard-{self.index:0{len(str(self.count))}d}-of-{self.count}.h5"


# The directory of shards ---------------------------------------------------------------------------------
def check_shard_directory(out: Path, provenance: dict) -> StoredVideos:
    """What the shards in ``out`` hold, after proving they were all made as this run would make them."""
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out} is a single-file store; a sharded run writes a directory of shards. Give a new "
                         "--out directory (`vidfeat features merge` makes one file of a directory afterwards)")
    if not out.is_dir() or not shard_paths(out):
        return StoredVideos()
    with FeatureStore([out]) as existing:
        check_compatible(existing.attrs, provenance, f"the sharded store {out}")
        return StoredVideos.of(existing)


def make_shard_directory(out: Path) -> None:
    """The directory a sharded run writes into; its parent must exist (a typo must not create a tree)."""
    if not out.parent.is_dir():
        raise StoreError(f"the folder {out.parent} does not exist; create it, or fix --out")
    out.mkdir(exist_ok=True)


def refuse_stale(jobs: list[VideoJob], stored: StoredVideos, out: Path) -> None:
    """A changed source would be re-extracted into another shard than the one holding its old rows."""
    stale = [job for job in jobs if job.key in stored.done and stored.is_stale(job.key, job.path)]
    if stale:
        names = ", ".join(str(job.path) for job in stale[:5]) + (" ..." if len(stale) > 5 else "")
        raise StoreError(
            f"{len(stale)} video(s) changed since they were stored in {out}: {names}. A sharded store cannot "
            "replace a video held by another shard; extract into a new --out directory")


def merge_directory(out: Path, merged: Path) -> int:
    """Merge the shards into one file; an earlier merge of the same store is replaced, anything else refused."""
    if merged.exists():
        with open_store(merged) as previous, open_store(out) as shards:
            check_compatible(shards.attrs, previous.attrs, f"{merged} (which --merge would replace)")
    return merge_stores([out], merged)


# Job arrays --------------------------------------------------------------------------------------------
def extract_shard(
    setup: ExtractionSetup, jobs: list[VideoJob], out: Path, shard: Shard
) -> ExtractSummary:
    """Array job ``shard``: its videos into ``out/<shard file>``, skipping any shard of ``out`` already holds
    (changed sources were refused, so a stored video is done whichever shard holds it)."""
    stored = check_shard_directory(out, setup.provenance)
    mine = [job for job in jobs if shard.takes(job.key)]
    refuse_stale(mine, stored, out)
    own = out / shard.file_name
    summary = new_summary(own, len(mine), setup)
    todo = [job for job in mine if job.key not in stored.done]
    summary.already_done = len(mine) - len(todo)
    make_shard_directory(out)
    return extract_prepared(setup, todo, own, summary)


def extract_scaled(
    jobs: list[VideoJob], out: Path, backbone: str, weights: str | None, options: ExtractOptions, dataset: dict,
    classes: list[str], n_folds: int, scale: ScaleOut,
) -> ScaledSummary:
    """The scaled-out extraction into the shard directory ``out``; merged into ``scale.merge`` when complete."""
    if options.dtype == "auto":
        raise UserError("--dtype auto measures the first video in one process, so shards could choose differently; "
                        "with --cluster, --scheduler or --shard pass --dtype float16 or float32")
    if scale.shard is not None:
        setup = prepare_extraction({job.key for job in jobs}, backbone, options, dataset, classes, n_folds, weights)
        return ScaledSummary(extract_shard(setup, jobs, out, Shard.parse(scale.shard)))
    try:
        from vidfeat.pipelines import dask_extract
    except ImportError as exc:
        raise MissingDependency(
            f"--cluster and --scheduler need Dask ({exc}); install the extra: {DIST_EXTRA}") from exc
    result = dask_extract.extract_on_dask(jobs, out, backbone, weights, options, dataset, classes, n_folds, scale)
    if scale.merge is not None and not result.summary.interrupted:
        merge_directory(out, scale.merge)
    return result
