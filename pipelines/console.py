"""The `vidfeat` console script's entry point, kept free of heavy imports.

Spawned processes (the decode pool's workers) re-run the parent's main script before they start; with the click
app as that script, every worker would import torch first, which costs seconds and hundreds of MB per worker.
"""
from __future__ import annotations


def main() -> None:
    from vidfeat.pipelines.cli import main as cli

    cli()
