"""The `vidfeat` console script's entry point, kept free of heavy imports.

Spawned processes (the decode pool's workers) re-run the parent's main script before they start; with the click
app as that script, every worker would import torch first, which costs seconds and hundreds of MB per worker.
"""
from __future__ import annotations

import gc


def main() -> None:
    from vidfeat.pipelines.cli import main as cli

    try:
        cli()
    finally:
        # Every store is closed and every worker joined by now (context managers; temporary directories are
        # removed by atexit, which runs first). The interpreter's last garbage collections walk the hundreds of
        # thousands of objects that importing torch and torchvision creates: 0.8-1.4 s of every command here.
        # Frozen objects are left out of them; the memory goes back to the system all the same.
        gc.freeze()
