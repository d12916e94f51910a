"""Scale-out on loopback: a local Dask cluster, a worker killed mid-run, resuming, --shard job arrays, and
training on a directory of shards. Every sharded store must read as the single-process store, exactly."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from hmdb_fixture import make_hmdb51_tree
from videogen import make_text_file, make_video
import vidfeat.pipelines
from vidfeat.features import open_store, shard_paths
from vidfeat.pipelines.cli import main
from vidfeat.pipelines.scaleout import ScaleOut, Shard

pytest.importorskip("distributed")

VIDEO = partial(make_video, size=(48, 36), fps=10, seconds=2)
CLASSES = ("brush_hair", "cartwheel", "fall_floor")
PER_CLASS = 5
VIDEOS = len(CLASSES) * PER_CLASS  # and one broken file
BROKEN = "brush_hair/not a video.avi"


def run_cli(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def extract_args(hmdb, out, *extra) -> list:
    return ["extract", "--dataset", "hmdb51", "--data-root", hmdb.root, "--out", out, "--no-progress",
            "--allow-failures", *extra]


def cli_process(*args, env: dict | None = None) -> subprocess.Popen:
    """The console script in a process of its own, to interrupt or kill it from the outside. SIGINT is reset to
    its default: a child of a background job inherits it ignored, and would never see the Ctrl-C."""
    return subprocess.Popen([Path(sys.executable).with_name("vidfeat"), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def committed_parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.h5.parts/part-*.h5"))


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory):
    tree = make_hmdb51_tree(tmp_path_factory.mktemp("hmdb51"), write_video=VIDEO, classes=CLASSES, per_class=PER_CLASS)
    make_text_file(tree.videos_dir / BROKEN)
    return tree


@pytest.fixture(scope="module")
def reference(hmdb, tmp_path_factory) -> Path:
    """The single-process store every array job must equal."""
    out = tmp_path_factory.mktemp("reference") / "single.h5"
    result = run_cli(*extract_args(hmdb, out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def reference_per_worker(hmdb, tmp_path_factory) -> Path:
    """The single-process store with a `local:2` worker's threads. oneDNN's float results depend on the number of
    threads (in the last bit), not on how videos are batched, so this is the run a cluster must equal exactly."""
    out = tmp_path_factory.mktemp("reference") / "single.h5"
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
    run = cli_process(*extract_args(hmdb, out), env={**os.environ, "OMP_NUM_THREADS": threads})
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output
    return out


def assert_same_store(actual: Path, expected: Path) -> None:
    with open_store(actual) as a, open_store(expected) as e:
        assert a.keys() == e.keys() and len(a) == VIDEOS
        assert a.provenance_hash == e.provenance_hash
        for key in e.keys():
            np.testing.assert_array_equal(a.features(key), e.features(key))
            np.testing.assert_array_equal(a.timestamps(key), e.timestamps(key))
            np.testing.assert_array_equal(a.frame_indices(key), e.frame_indices(key))
            assert a.label(key) == e.label(key)
            assert [a.split(key, f) for f in (1, 2, 3)] == [e.split(key, f) for f in (1, 2, 3)]
        assert [os.path.basename(s) for s, _ in a.failures()] == [os.path.basename(s) for s, _ in e.failures()]


def test_a_worker_killed_mid_run_costs_nothing(hmdb, reference_per_worker, tmp_path):
    """kill -9 of a worker once it has committed a task: Dask reruns its task elsewhere, the committed videos
    are skipped there, and the store ends up with every video exactly once."""
    out = tmp_path / "shards"
    run = cli_process(*extract_args(hmdb, out, "--cluster", "local:2", "--videos-per-task", "1"))
    lock = out / "shard-0.h5.parts" / "lock"
    wait_for(lambda: any(p.parent.name == "shard-0.h5.parts" for p in committed_parts(out)))
    worker = int(lock.read_text().split()[1])
    os.kill(worker, signal.SIGKILL)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output
    counts = re.search(r"(\d+) extracted now, (\d+) already stored, 1 failed", output)  # only the broken file
    assert counts and int(counts[1]) + int(counts[2]) == VIDEOS, output  # "already": committed by the killed worker
    with open_store(out) as store:  # overlapping shards would be refused here
        assert len(store) == VIDEOS
    assert_same_store(out, reference_per_worker)


def test_an_interrupted_cluster_run_resumes_into_the_single_process_store(hmdb, reference_per_worker, tmp_path):
    """Ctrl-C a `--cluster local:2` run, then rerun it: nothing done is redone, the two workers' shards read as
    (and --merge makes) exactly the single-process store, and a third run has nothing left to do."""
    out, merged = tmp_path / "shards", tmp_path / "merged.h5"
    run = cli_process(*extract_args(hmdb, out, "--cluster", "local:2", "--videos-per-task", "1"))
    wait_for(lambda: len(committed_parts(out)) >= 2)
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 130, output
    with open_store(out) as store:
        stored = len(store)
    assert 0 < stored < VIDEOS

    again = run_cli(*extract_args(hmdb, out, "--cluster", "local:2", "--merge", merged))
    assert again.exit_code == 0, again.output
    assert f"{VIDEOS - stored} extracted now, {stored} already stored, 1 failed" in again.output
    assert "worker 0:" in again.output and "worker 1:" in again.output
    assert [p.name for p in shard_paths(out)] == ["shard-0.h5", "shard-1.h5"]
    assert not list(out.glob("*.parts")), "closing each worker's writer merges its parts"
    assert_same_store(out, reference_per_worker)
    assert_same_store(merged, reference_per_worker)

    info = run_cli("features", "info", out)
    assert info.exit_code == 0 and f"videos: {VIDEOS}" in info.output and "failures: 1" in info.output
    done = run_cli(*extract_args(hmdb, out, "--cluster", "local:2"))
    assert done.exit_code == 0 and f"0 extracted now, {VIDEOS} already stored" in done.output, done.output


@pytest.fixture(scope="module")
def array_store(hmdb, tmp_path_factory) -> Path:
    """The directory two --shard array jobs write."""
    out = tmp_path_factory.mktemp("array") / "shards"
    for shard in ("1/2", "2/2"):
        result = run_cli(*extract_args(hmdb, out, "--shard", shard))
        assert result.exit_code == 0, result.output
    return out


def test_two_array_jobs_make_the_unsharded_store(hmdb, reference, array_store):
    shards = shard_paths(array_store)
    assert [p.name for p in shards] == ["shard-1-of-2.h5", "shard-2-of-2.h5"]
    with open_store(shards[0]) as first, open_store(shards[1]) as second:
        assert first.keys() and second.keys() and not set(first.keys()) & set(second.keys())
    assert_same_store(array_store, reference)

    again = run_cli(*extract_args(hmdb, array_store, "--shard", "2/2"))
    assert "0 extracted now" in again.output, again.output


def test_a_shard_made_differently_is_refused_naming_the_field(hmdb, tmp_path):
    out = tmp_path / "array"
    assert run_cli(*extract_args(hmdb, out, "--shard", "1/2", "--fps", "5")).exit_code == 0
    refused = run_cli(*extract_args(hmdb, out, "--shard", "2/2"))
    assert refused.exit_code != 0
    assert "sampling:" in refused.output and "refusing to mix them" in refused.output
    assert [p.name for p in shard_paths(out)] == ["shard-1-of-2.h5"]


def test_training_on_the_shard_directory_equals_training_on_the_merged_file(array_store, tmp_path):
    out, merged = array_store, tmp_path / "merged.h5"
    assert run_cli("features", "merge", merged, out).exit_code == 0
    runs = {}
    for name, store in (("dir", out), ("file", merged)):
        result = run_cli("train-temporal", "--head", "lstm", "--features", store, "--out", tmp_path / name,
                         "--epochs", "3", "--no-progress")
        assert result.exit_code == 0, result.output
        runs[name] = tmp_path / name
    metrics = [json.loads((runs[n] / "metrics.json").read_text()) for n in ("dir", "file")]
    for field in ("top1", "per_class", "confusion"):
        assert metrics[0][field] == metrics[1][field]
    weights = [torch.load(runs[n] / "model.pt") for n in ("dir", "file")]
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)


def test_shards_hash_keys_and_options_are_checked():
    assert Shard.parse("2/4") == Shard(2, 4) and Shard(2, 4).file_name == "shard-2-of-4.h5"
    assert Shard(3, 12).file_name == "shard-03-of-12.h5"
    keys = [f"video_{i}" for i in range(200)]
    takers = [[Shard(i, 4).takes(k) for i in range(1, 5)] for k in keys]
    assert all(sum(t) == 1 for t in takers)  # every key in exactly one shard
    assert all(20 < sum(t[i] for t in takers) < 80 for i in range(4))
    for bad in ("0/2", "3/2", "1-2", "x"):
        with pytest.raises(ValueError, match="--shard takes I/N"):
            Shard.parse(bad)
    with pytest.raises(ValueError, match="exactly one of"):
        ScaleOut(cluster="local:2", shard="1/2")
    with pytest.raises(ValueError, match="--cluster takes local or local:N"):
        ScaleOut(cluster="local:0")
    with pytest.raises(ValueError, match="--merge cannot finish an array job"):
        ScaleOut(shard="1/2", merge=Path("x.h5"))
    assert ScaleOut(cluster="local").local_workers is None and ScaleOut(cluster="local:3").local_workers == 3


@pytest.mark.parametrize("daemon", [False, True], ids=["workers", "daemonic-workers"])
def test_scheduler_runs_on_the_users_cluster_or_says_how_to_start_its_workers(hmdb, reference, tmp_path, daemon):
    """--scheduler: a cluster the user started. Dask's workers are daemonic by default, and a daemonic process
    cannot start the decode processes: that gets a message saying how to start them."""
    import dask
    from distributed import LocalCluster

    out = tmp_path / "shards"
    with dask.config.set({"distributed.worker.daemon": daemon}), LocalCluster(
            n_workers=1, threads_per_worker=1, dashboard_address=":0", silence_logs=50) as cluster:
        result = run_cli(*extract_args(hmdb, out, "--scheduler", cluster.scheduler_address))
    if daemon:
        assert result.exit_code == 1
        assert "runs as a daemonic process" in result.output and "DASK_DISTRIBUTED__WORKER__DAEMON=False" in result.output
        return
    assert result.exit_code == 0, result.output
    with open_store(out) as store, open_store(reference) as expected:
        assert store.keys() == expected.keys() and store.provenance_hash == expected.provenance_hash
        for key in expected.keys():  # one thread per worker here: equal up to float16 rounding
            np.testing.assert_allclose(store.features(key), expected.features(key), rtol=1e-2, atol=1e-3)


def test_an_unreachable_scheduler_is_a_clear_error(hmdb, tmp_path):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = run_cli(*extract_args(hmdb, tmp_path / "shards", "--scheduler", "tcp://127.0.0.1:9"))
    assert result.exit_code == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.output


def test_without_dask_the_error_names_the_extra(hmdb, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if vidfeat[dist] were not installed
    monkeypatch.delitem(sys.modules, "vidfeat.pipelines.dask_extract", raising=False)
    monkeypatch.delattr(vidfeat.pipelines, "dask_extract", raising=False)  # imported by an earlier test
    result = run_cli(*extract_args(hmdb, tmp_path / "shards", "--cluster", "local:2"))
    assert result.exit_code == 1 and "pip install 'vidfeat[dist]'" in result.output, result.output


def test_a_shard_directory_needs_its_parent(hmdb, tmp_path):
    result = run_cli(*extract_args(hmdb, tmp_path / "no such folder" / "shards", "--shard", "1/2"))
    assert result.exit_code == 1 and "no such folder does not exist; create it" in result.output
    assert not (tmp_path / "no such folder").exists()


def test_dtype_auto_is_refused_where_shards_could_choose_differently(hmdb, tmp_path):
    result = run_cli(*extract_args(hmdb, tmp_path / "shards", "--shard", "1/2", "--dtype", "auto"))
    assert result.exit_code == 1 and "--dtype auto measures the first video in one process" in result.output
    assert not (tmp_path / "shards").exists()
