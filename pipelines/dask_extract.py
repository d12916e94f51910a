"""Extraction on a Dask cluster (``--cluster``, ``--scheduler``); imported only when one is asked for.

The client plans (which videos are left, in lists of ``videos_per_task``), submits one task per list and
gathers the workers' reports. Each worker runs an ``ExtractionWorker`` plugin: its model, decode pool and shard
writer are built on its first task and kept until the plugin is removed at the end, which merges the shard.
Dask itself reruns the task of a worker that died; see ``pipelines.scaleout`` for why nothing is stored twice.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import re
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import dask
import torch
from distributed import Client, KilledWorker, Nanny, Scheduler, SpecCluster, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from tqdm import tqdm

from vidfeat.extract.options import ExtractOptions
from vidfeat.extract.runner import (
    Extractor, ExtractSummary, VideoJob, new_summary, prepare_extraction, videos_to_extract,
)
from vidfeat.features.store import CommittedKeys, StoreWriter
from vidfeat.pipelines.scaleout import (
    ClusterError, ScaledSummary, ScaleOut, WorkerStats, check_shard_directory, make_shard_directory,
    refuse_stale,
)

PLUGIN_NAME = "vidfeat-extract"
MAX_VIDEOS_PER_TASK = 256
TASKS_PER_WORKER = 8  # enough for the faster workers to take over the slower ones' share near the end


@dataclass(frozen=True)
class ExtractRequest:
    """What every worker needs to build the same extraction the client planned (sent once, in the plugin)."""

    out: Path
    backbone: str
    weights: str | None
    options: ExtractOptions
    dataset: dict
    classes: list[str]
    n_folds: int
    keys: frozenset[str]
    decode_workers: int | None
    model_threads: int | None  # torch threads per worker (local clusters: the cores / workers); None: Dask's


@dataclass
class TaskReport:
    """Worker -> client: what one task (one list of videos) did."""

    worker: str
    summary: ExtractSummary


def shard_file_name(worker_name: str) -> str:
    return "shard-" + re.sub(r"[^A-Za-z0-9_.-]", "_", worker_name) + ".h5"


# The worker side ---------------------------------------------------------------------------------------
class _WorkerSession:
    """One worker's model, decode pool and shard writer, for the whole run."""

    def __init__(self, request: ExtractRequest, worker_name: str) -> None:
        if multiprocessing.current_process().daemon:
            raise ClusterError(
                f"Dask worker {worker_name} runs as a daemonic process, which cannot start vidfeat's decode processes. "
                "Start the workers with DASK_DISTRIBUTED__WORKER__DAEMON=False in their environment (dask-jobqueue: "
                "job_script_prologue=['export DASK_DISTRIBUTED__WORKER__DAEMON=False']), or set "
                "distributed.worker.daemon: false in their Dask config")
        self.worker_name = worker_name
        if request.model_threads is not None:
            torch.set_num_threads(request.model_threads)  # Dask starts workers with OMP_NUM_THREADS=1
        self.setup = prepare_extraction(set(request.keys), request.backbone, request.options, request.dataset,
                                        request.classes, request.n_folds, request.weights)
        self.shard = request.out / shard_file_name(worker_name)
        self.committed = CommittedKeys(request.out)
        self.writer = StoreWriter(self.shard, self.setup.provenance, request.options.commit_every)
        try:
            self.extractor = Extractor(self.setup, request.decode_workers)
        except BaseException:
            self.writer.close()
            raise

    def extract(self, jobs: list[VideoJob], stop: threading.Event) -> TaskReport:
        """The task's videos that no worker has committed yet (a dead worker may have), committed before
        returning, so that a finished task is durable even if this worker dies next."""
        stored = self.committed.current()
        todo = [job for job in jobs if job.key not in stored]
        summary = new_summary(self.shard, len(jobs), self.setup)
        summary.already_done = len(jobs) - len(todo)
        commits = self.writer.commits
        if todo:
            self.extractor.run(todo, self.writer, summary, stop)
        self.writer.commit()
        summary.commits = self.writer.commits - commits
        return TaskReport(self.worker_name, summary)

    def close(self) -> None:
        try:
            self.extractor.close()
        finally:
            self.writer.close()  # merges the shard's parts into its main file


class ExtractionWorker(WorkerPlugin):
    """Builds the worker's session on its first task, closes it when the plugin is removed (stopping a running
    task at its next chunk of frames, so that Ctrl-C on the client is prompt). The tasks of one worker run one at
    a time (a worker may have several threads; the session is not shared)."""

    name = PLUGIN_NAME

    def __init__(self, request: ExtractRequest, local: bool) -> None:
        self.request, self.local = request, local

    def setup(self, worker) -> None:
        self.worker_name = str(worker.name)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.session: _WorkerSession | None = None
        if self.local and threading.current_thread() is threading.main_thread():
            # A terminal's Ctrl-C reaches the local workers too (one process group); the client handles it.
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    def run(self, jobs: list[VideoJob]) -> TaskReport:
        with self.lock:
            if self.session is None:
                self.session = _WorkerSession(self.request, self.worker_name)
            return self.session.extract(jobs, self.stop)

    def teardown(self, worker) -> None:
        self.stop.set()
        with self.lock:
            if self.session is not None:
                self.session.close()
                self.session = None


def extract_task(jobs: list[VideoJob]) -> TaskReport:
    """The Dask task: one list of videos, on this worker's session."""
    return get_worker().plugins[PLUGIN_NAME].run(jobs)


# Clusters ----------------------------------------------------------------------------------------------
def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cluster(workers: int | None, device: str) -> SpecCluster:
    """One worker process per GPU (pinned with CUDA_VISIBLE_DEVICES; dask-cuda's cluster when installed), or
    ``workers`` single-threaded processes on CPU. Workers may start decode processes (not daemonic)."""
    gpus = 0 if device == "cpu" else _gpu_count()
    count = workers or gpus or len(os.sched_getaffinity(0))
    if gpus:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            pass
        else:
            return LocalCUDACluster(n_workers=count, threads_per_worker=1, dashboard_address=":0",
                                    silence_logs=logging.ERROR)
    specs = {
        i: {"cls": Nanny, "options": {
            "nthreads": 1, "name": i, "silence_logs": logging.ERROR,
            "env": {"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus else {},
        }}
        for i in range(count)
    }
    return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                       silence_logs=logging.ERROR)


@contextmanager
def dask_client(cluster: str | None, scheduler: str | None, workers: int | None, device: str) -> Iterator[Client]:
    """A client of a new local cluster, or of the user's scheduler at ``scheduler``."""
    if scheduler is not None:
        try:
            client = Client(scheduler)
        except OSError as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}. Is it running, and is the "
                               "address the one it printed (tcp://HOST:PORT)?") from exc
        with client:
            yield client
        return
    # Read again by each nanny when it restarts a worker. Dask's MALLOC_TRIM_THRESHOLD_=65536 returns every freed
    # buffer to the OS at once, and the model's MB-sized buffers are then faulted in again on every batch: the CPU
    # model ran 36% slower with it (lite0, one thread), so the workers keep glibc's own threshold.
    with dask.config.set({"distributed.worker.daemon": False,
                          "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        with local_cluster(workers, device) as spec_cluster, Client(spec_cluster) as client:
            client.wait_for_workers(len(spec_cluster.worker_spec))
            yield client


def dashboard_link(client: Client) -> str:
    return client.dashboard_link if "dashboard" in client.scheduler_info().get("services", {}) else ""


# The client side ---------------------------------------------------------------------------------------
def task_lists(jobs: list[VideoJob], workers: int, videos_per_task: int | None) -> list[list[VideoJob]]:
    """Lists of videos, so short clips still fill a GPU's batches and each task is worth its round trip."""
    size = videos_per_task or max(1, min(MAX_VIDEOS_PER_TASK, math.ceil(len(jobs) / (TASKS_PER_WORKER * workers))))
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def _add_report(total: ScaledSummary, report: TaskReport) -> None:
    part, stats = report.summary, total.workers.setdefault(report.worker, WorkerStats())
    summary = total.summary
    summary.extracted += part.extracted
    summary.already_done += part.already_done
    summary.rows += part.rows
    summary.failures += part.failures
    summary.partial += part.partial
    summary.commits += part.commits
    summary.device, summary.batch_size, summary.unit = part.device, part.batch_size, part.unit
    stats.tasks += 1
    stats.videos += part.extracted
    stats.rows += part.rows
    stats.seconds += part.seconds
    stats.failures += len(part.failures)


def _lost_task(total: ScaledSummary, jobs: list[VideoJob], error: Exception) -> None:
    """Videos of a task that killed worker after worker: not stored, so the next run tries them again."""
    reason = (f"the Dask workers running this video's task died ({error}); it is not stored, and the next "
              "run tries it again")
    total.summary.failures += [(str(job.path), reason) for job in jobs]


def run_tasks(client: Client, plugin: ExtractionWorker, todo: list[VideoJob], total: ScaledSummary,
              videos_per_task: int | None, progress: bool) -> None:
    """Submit the task lists with the plugin registered, gather reports as they come; the plugin's removal
    (also after an error or Ctrl-C, which stops the running tasks) merges every worker's shard."""
    workers = max(1, len(client.scheduler_info()["workers"]))
    lists = task_lists(todo, workers, videos_per_task)
    token = uuid.uuid4().hex[:8]
    client.register_plugin(plugin, name=PLUGIN_NAME)
    futures = {client.submit(extract_task, jobs, key=f"vidfeat-extract-{token}-{i}", pure=False): jobs
               for i, jobs in enumerate(lists)}
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for future in as_completed(futures):
            try:
                _add_report(total, future.result())
            except KilledWorker as exc:
                _lost_task(total, futures[future], exc)
            bar.update(len(futures[future]))
            bar.set_postfix_str(f"{total.summary.rows / (time.perf_counter() - start):.1f} {total.summary.unit}/s",
                                refresh=False)
    except KeyboardInterrupt:
        total.summary.interrupted = True
    finally:
        bar.close()
        client.cancel(list(futures))
        client.unregister_worker_plugin(PLUGIN_NAME)
        total.summary.seconds = time.perf_counter() - start


def extract_on_dask(
    jobs: list[VideoJob], out: Path, backbone: str, weights: str | None, options: ExtractOptions, dataset: dict,
    classes: list[str], n_folds: int, scale: ScaleOut,
) -> ScaledSummary:
    """Plan on the client (the provenance, checked against the shards already in ``out``; the videos left),
    then extract them on the cluster into ``out/shard-<worker>.h5``."""
    keys = frozenset(job.key for job in jobs)
    # The client only describes the features; the device and precision are each worker's own to resolve.
    planned = prepare_extraction(set(keys), backbone, replace(options, device="cpu", precision="auto"), dataset,
                                 classes, n_folds, weights)
    stored = check_shard_directory(out, planned.provenance)
    refuse_stale(jobs, stored, out)
    total = ScaledSummary(new_summary(out, len(jobs), planned))
    todo = videos_to_extract(jobs, stored, options.skip_failed, total.summary)
    if not todo:
        return total
    make_shard_directory(out)
    with dask_client(scale.cluster, scale.scheduler, scale.local_workers, options.device) as client:
        local = scale.cluster is not None
        workers, cores = len(client.scheduler_info()["workers"]), len(os.sched_getaffinity(0))
        decode = options.workers or (max(1, cores // workers - 1) if local else None)
        request = ExtractRequest(out, backbone, weights, replace(options, progress=False), dataset, classes, n_folds,
                                 keys, decode, max(1, cores // workers) if local else None)
        total.dashboard = dashboard_link(client)
        if total.dashboard and options.progress:
            tqdm.write(f"Dask dashboard: {total.dashboard}")
        run_tasks(client, ExtractionWorker(request, local), todo, total, scale.videos_per_task, options.progress)
    return total
