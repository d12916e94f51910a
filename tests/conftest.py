"""Test-wide settings: never touch the network or the user's torch cache."""
import os
import sys
from pathlib import Path

import pytest

os.environ["VIDFEAT_OFFLINE"] = "1"
# Before torch is imported: the suite is dominated by small temporal heads (see pipelines/cli.py).
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
