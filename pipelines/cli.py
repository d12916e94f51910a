"""The `vidfeat` command line: thin click commands over the library functions."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from vidfeat.extract.runner import PRECISIONS, ExtractOptions
from vidfeat.extract.video import Sampling
from vidfeat.features.store import StoreError, merge_stores, open_store
from vidfeat.pipelines import stages
from vidfeat.pipelines.datasets import ADAPTERS, DatasetError

# Errors a user can act on: shown as one clear message, no traceback.
USER_ERRORS = (StoreError, DatasetError, ValueError, FileNotFoundError, RuntimeError)


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vidfeat")
def main() -> None:
    """Cache video features once (extract), then train temporal heads on them in seconds."""


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Feature store (.h5) to create or resume.")
@click.option("--dataset", help="Dataset adapter (see `vidfeat datasets`) instead of INPUTS.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Root directory of --dataset.")
@click.option("--list", "list_file", type=click.Path(path_type=Path), help="List/CSV file for the `list` dataset.")
@click.option("--backbone", default=stages.DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", help="Weights file (state_dict), or `none` for random init. Default: pretrained.")
@click.option("--fps", type=float, help="Resample to at most F frames/s. Default: every frame.")
@click.option("--every-n", type=int, help="Keep every N-th frame (instead of --fps).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, help="Frames per batch, across video boundaries. Default: 8 on CPU, 128 on CUDA.")
@click.option("--workers", default=2, show_default=True, help="Background decode threads.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Autocast on CUDA (auto = fp16); CPU runs fp32.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Stored feature dtype.")
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some videos failed.")
@click.option("--skip-failed", is_flag=True, help="Do not retry videos that failed in an earlier run.")
@click.option("--strict", is_flag=True, help="Treat partially decodable (truncated) videos as failures.")
@click.option("--seed", default=0, show_default=True, help="Seed of the `folder` adapter's split.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def extract(inputs, out, dataset, data_root, list_file, backbone, weights, fps, every_n, device, batch_size,
            workers, precision, dtype, allow_failures, skip_failed, strict, seed, no_progress) -> None:
    """Extract features of INPUT videos/directories, or of --dataset NAME --data-root DIR, into --out."""
    try:
        options = ExtractOptions(
            sampling=Sampling(fps=fps, every_n=every_n), device=device, batch_size=batch_size, workers=workers,
            precision=precision, dtype=dtype, strict=strict, skip_failed=skip_failed, progress=not no_progress,
        )
        summary = stages.extract(
            out, inputs=inputs, dataset=dataset, data_root=data_root, list_file=list_file,
            backbone=backbone, weights=weights, options=options, seed=seed,
        )
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(stages.format_summary(summary))
    if summary.interrupted:
        sys.exit(130)
    if summary.failures and not allow_failures:
        click.echo(f"{len(summary.failures)} video(s) failed; they are recorded in the store and retried on the "
                   "next run (pass --allow-failures to exit 0 anyway)", err=True)
        sys.exit(1)


@main.group()
def features() -> None:
    """Inspect and combine feature stores."""


@features.command("info")
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
def features_info(stores) -> None:
    """Provenance, counts, dims, splits, partial and failed videos of a store (several shards read as one)."""
    try:
        with open_store(list(stores)) as store:
            click.echo(stages.describe_store(store))
    except USER_ERRORS as exc:
        _fail(exc)


@features.command("merge")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def features_merge(out, shards) -> None:
    """Merge shards written by different processes or machines into OUT (provenance must match)."""
    if out.exists():
        _fail(FileExistsError(f"{out} exists; merge into a new file"))
    try:
        n = merge_stores(list(shards), out)
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(f"merged {n} videos from {len(shards)} shard(s) into {out}")


@main.command()
def datasets() -> None:
    """List the dataset adapters and the layouts they expect."""
    for adapter in ADAPTERS.values():
        click.echo(f"{adapter.name}\n" + "\n".join(f"    {line}" for line in adapter.layout.strip().splitlines()) + "\n")


if __name__ == "__main__":
    main()
