"""Test-wide settings: never touch the network or the user's torch cache."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["VIDFEAT_OFFLINE"] = "1"
# Before torch is imported: the suite runs decode workers, Dask clusters and CLI subprocesses beside the
# in-process heads, and spin-waiting OpenMP threads starve them (README, Training speed: how OpenMP threads wait).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def single_thread():
    """Tiny heads run fastest on one thread (multi-threaded kernels on tiny tensors are pure overhead)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(name, options)`` mounts a small tmpfs at tmp_path/name (needs root; skips cleanly without);
    every mount is undone at the end."""
    mounted = []

    def mount(name: str, options: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", str(point)], check=True)


MOTION_TEST_SIZES = {"random_dots": (3, 1, 3), "kind_motion": (10, 2, 5)}  # train, val, test videos per class


@pytest.fixture(scope="session")
def motion_rgb_store(tmp_path_factory):
    """``motion_rgb_store(task)``: the generated motion task (``vidfeat.pipelines.motion``) at MOTION_TEST_SIZES,
    extracted with the default backbone (every frame a row) once per session, for every test that needs it."""
    from click.testing import CliRunner

    from vidfeat.pipelines.cli import main
    from vidfeat.pipelines.motion import write_motion_task

    root, stores = tmp_path_factory.mktemp("motion"), {}

    def store(task: str) -> Path:
        if task not in stores:
            listing = write_motion_task(root / task, task, *MOTION_TEST_SIZES[task])
            out = root / f"{task}_rgb.h5"
            result = CliRunner().invoke(main, ["extract", "--dataset", "list", "--list", str(listing), "--out",
                                               str(out), "--no-progress"])
            assert result.exit_code == 0, result.output
            stores[task] = out
        return stores[task]

    return store
