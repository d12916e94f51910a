"""The `vidfeat` command line: thin click commands over the library functions."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click
from click.core import ParameterSource

from vidfeat.extract.device import PRECISIONS
from vidfeat.extract.flow import DEFAULT_ENCODER, FLOW_ENCODERS, FLOW_METHODS
from vidfeat.extract.options import ExtractOptions
from vidfeat.extract.video import Sampling
from vidfeat.features import interop
from vidfeat.features.errors import UserError
from vidfeat.features.store import merge_stores, open_store, verify_store
from vidfeat.pipelines import stages
from vidfeat.pipelines.datasets import ADAPTERS
from vidfeat.pipelines.scaleout import ScaleOut
from vidfeat.temporal.heads import list_heads
from vidfeat.temporal.runs import (
    SWEEP_FILE, compare_runs, evaluate_run, format_comparison, format_ranking, rank_configurations, train_folds,
    train_run, write_comparison,
)
from vidfeat.temporal.sampling import SAMPLE_MODES
from vidfeat.temporal.streams import Streams
from vidfeat.temporal.sweep import SweepGrid, run_sweep

# Errors a user can act on: shown as one clear message, no traceback (every layer's own error types are UserErrors).
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError)


def _fail(exc: Exception) -> None:
    """One clear line; with ``vidfeat --debug`` the exception itself, traceback and all (for a bug report)."""
    if click.get_current_context().find_root().params.get("debug"):
        raise exc
    raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vidfeat")
@click.option("--debug", is_flag=True, help="Show errors with their full traceback.")
def main(debug: bool) -> None:
    """Cache video features once (extract), then train temporal heads on them in seconds."""


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Feature store (.h5) to create or resume.")
@click.option("--dataset", help="Dataset adapter (see `vidfeat datasets`) instead of INPUTS.")
@click.option("--data-root", type=click.Path(path_type=Path), help="Root directory of --dataset.")
@click.option("--list", "list_file", type=click.Path(path_type=Path), help="List/CSV file for the `list` dataset.")
@click.option("--backbone", default=stages.DEFAULT_BACKBONE, show_default=True)
@click.option("--weights", help="Weights file (state_dict), or `none` for random init. Default: pretrained.")
@click.option("--flow", type=click.Choice(FLOW_METHODS),
              help="Store optical flow between consecutive sampled frames instead of RGB features (a flow store).")
@click.option("--flow-encoder", type=click.Choice(FLOW_ENCODERS),
              help=f"With --flow: what a row holds: {DEFAULT_ENCODER} (default; no weights), a CNN on stacked flow "
                   "(resnet50, efficientnet_lite0, ...: ImageNet weights by TSN's cross-modality start) or i3d.")
@click.option("--flow-weights", help="With --flow raft_small/raft_large: RAFT's weights (a name, a state_dict file, "
              "or `none`). Default: the torch cache.")
@click.option("--fps", type=float, help="Resample to at most F frames/s. Default: every frame.")
@click.option("--every-n", type=int, help="Keep every N-th frame (instead of --fps).")
@click.option("--clip-len", type=int, help="Clip backbones: sampled frames per window (default: the weights').")
@click.option("--clip-stride", type=int, help="Clip backbones: frames between window starts (default: the backbone's).")
@click.option("--rois", help="Also store region features: file:BOXES.csv, grid:RxC or detector:NAME.")
@click.option("--max-rois", type=int, help="Region slots R per row (fewer boxes are padded and masked).")
@click.option("--roi-size", type=int, help="With --rois: short side of the whole (uncropped) frame, e.g. 320.")
@click.option("--roi-score-threshold", default=0.5, show_default=True, help="detector: minimum box score.")
@click.option("--roi-class", "roi_classes", multiple=True, help="detector: keep only these COCO classes.")
@click.option("--detector-weights", help="detector: a state_dict file, or `none`. Default: the torch cache.")
@click.option("--spatial", type=int, metavar="S",
              help="Also store the feature map average-pooled to an SxS grid per row ([N, S*S, D]).")
@click.option("--spatial-layer", metavar="NAME",
              help="Frame backbones: pool the grid from this trunk stage instead of the last map (ECO-style).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=int, help="Frames per batch, across video boundaries. Default: 8 on CPU, 128 on CUDA.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Decode processes. A crash in one costs only the video it held.  [default: cores - 1, at least 1]")
@click.option("--video-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Fail a video whose decoder produces nothing for this long (a hang on a damaged file or a "
                   "stalled filesystem). Default: no limit.")
@click.option("--commit-every", type=click.FloatRange(min=0), default=5.0, show_default=True, metavar="SECONDS",
              help="Commit finished videos at most this often (0: after every batch). A kill -9 redoes at most the "
                   "videos finished in the last SECONDS.")
@click.option("--eager", is_flag=True,
              help="CPU: run the model op by op instead of as a frozen, fused graph (the faster default).")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the backbone (tens of seconds of compiling first; pays off on long runs).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Autocast on CUDA (auto = fp16). CPU runs fp32, or bf16 on request where the CPU has it natively.")
@click.option("--dtype", type=click.Choice(["float16", "float32", "auto"]), default="float16", show_default=True,
              help="Stored feature dtype; auto: float32 when the first video's features come near float16's range.")
@click.option("--allow-failures", is_flag=True, help="Exit 0 even when some videos failed.")
@click.option("--skip-failed", is_flag=True, help="Do not retry videos that failed in an earlier run.")
@click.option("--strict", is_flag=True, help="Treat partially decodable (truncated) videos as failures.")
@click.option("--seed", default=0, show_default=True, help="Seed of the `folder` adapter's split.")
@click.option("--cluster", help="Extract on a local Dask cluster: `local` (one worker per GPU, or per core) or "
              "`local:N`. --out is then a directory of shards.")
@click.option("--scheduler", help="Extract on the running Dask cluster at this address (e.g. tcp://host:8786).")
@click.option("--shard", help="Be job I of an N-job array (I/N): extract that share of the videos into the "
              "directory --out, without Dask.")
@click.option("--merge", type=click.Path(path_type=Path),
              help="With --cluster/--scheduler: also merge the shards into this one file at the end.")
@click.option("--videos-per-task", type=int, help="With --cluster/--scheduler: videos per Dask task "
              "(default: about 8 tasks per worker, at most 256 videos).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def extract(inputs, out, dataset, data_root, list_file, backbone, weights, flow, flow_encoder, flow_weights, fps,
            every_n, clip_len, clip_stride, rois, max_rois, roi_size, roi_score_threshold, roi_classes,
            detector_weights, spatial, spatial_layer, device, batch_size, workers, video_timeout, commit_every, eager,
            compile_model, precision, dtype, allow_failures, skip_failed, strict, seed, cluster, scheduler, shard,
            merge, videos_per_task, no_progress) -> None:
    """Extract features of INPUT videos/directories, or of --dataset NAME --data-root DIR, into --out."""
    try:
        backbone_given = click.get_current_context().get_parameter_source("backbone") != ParameterSource.DEFAULT
        backbone = stages.choose_backbone(backbone, flow, flow_encoder, backbone_given)
        options = ExtractOptions(
            sampling=Sampling(fps=fps, every_n=every_n), clip_len=clip_len, clip_stride=clip_stride, rois=rois,
            max_rois=max_rois, roi_size=roi_size, roi_score_threshold=roi_score_threshold, roi_classes=roi_classes,
            detector_weights=detector_weights, flow_weights=flow_weights, spatial=spatial,
            spatial_layer=spatial_layer, device=device,
            batch_size=batch_size, workers=workers, video_timeout=video_timeout,
            commit_every=commit_every, eager=eager, compile=compile_model,
            precision=precision, dtype=dtype, strict=strict, skip_failed=skip_failed, progress=not no_progress,
        )
        what = dict(inputs=inputs, dataset=dataset, data_root=data_root, list_file=list_file, seed=seed,
                    backbone=backbone, weights=weights, options=options)
        if cluster or scheduler or shard:
            scaled = stages.extract_sharded(out, ScaleOut(cluster, scheduler, shard, merge, videos_per_task), **what)
            summary, report = scaled.summary, stages.format_scaled_summary(scaled)
        elif merge or videos_per_task:
            raise UserError("--merge and --videos-per-task apply to --cluster/--scheduler runs")
        else:
            summary = stages.extract(out, **what)
            report = stages.format_summary(summary)
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(report)
    if summary.interrupted:
        sys.exit(130)
    if summary.failures and not allow_failures:
        click.echo(f"{len(summary.failures)} video(s) failed; they are recorded in the store and retried on the "
                   "next run (pass --allow-failures to exit 0 anyway)", err=True)
        sys.exit(1)


@main.group()
def features() -> None:
    """Inspect, combine, import and export feature stores."""


@features.command("info")
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
def features_info(stores) -> None:
    """Provenance, counts, dims, splits, partial and failed videos of a store (several shards read as one)."""
    try:
        with open_store(list(stores)) as store:
            click.echo(stages.describe_store(store))
    except USER_ERRORS as exc:
        _fail(exc)


@features.command("verify")
@click.argument("store", type=click.Path(exists=True, path_type=Path))
def features_verify(store) -> None:
    """Read STORE (a file, or a directory of shards) once and check its index, shapes, dtypes, values and
    parts; exit status 1 on any problem."""
    result = verify_store(store)
    for note in result.notes:
        click.echo(f"note: {note}")
    for problem in result.problems:
        click.echo(f"PROBLEM: {problem}")
    click.echo(f"{'ok' if result.ok else 'NOT OK'}: {result.files} file(s), {result.videos} video(s), "
               f"{result.rows} row(s) checked, {len(result.problems)} problem(s)")
    if not result.ok:
        sys.exit(1)


@features.command("merge")
@click.argument("out", type=click.Path(path_type=Path))
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def features_merge(out, shards) -> None:
    """Merge shards written by different processes or machines (files, or directories of shards) into OUT
    (provenance must match)."""
    if out.exists():
        _fail(FileExistsError(f"{out} exists; merge into a new file"))
    try:
        n = merge_stores(list(shards), out)
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(f"merged {n} videos from {len(shards)} shard(s) into {out}")


@features.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Feature store (.h5) to create.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with header video,label[,split]; video is the file stem.")
@click.option("--dataset", help="Or label the videos with a dataset adapter (matched by file stem).")
@click.option("--data-root", type=click.Path(path_type=Path), help="Root directory of --dataset.")
@click.option("--list", "list_file", type=click.Path(path_type=Path), help="List/CSV file for the `list` dataset.")
@click.option("--feature-type", help="The <key> of <video>_<key>.npy to import (default: the only one there).")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Stored feature dtype.")
def features_import(folder, out, labels, dataset, data_root, list_file, feature_type, dtype) -> None:
    """Build a store from per-video .npy/.pkl feature files in video_features' layout (FOLDER/<video>_<key>.npy,
    with <video>_timestamps_ms and <video>_fps where present)."""
    try:
        summary = stages.import_features(folder, out, labels=labels, dataset=dataset, data_root=data_root,
                                         list_file=list_file, feature_type=feature_type, dtype=dtype)
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(f"imported {summary.videos} videos of {summary.feature_type!r} features ({summary.feature_dim}-d) "
               f"from {folder} into {out}")
    if summary.unmatched_labels:
        click.echo(f"{len(summary.unmatched_labels)} labelled video(s) have no feature file, e.g. "
                   f"{summary.unmatched_labels[0]!r}", err=True)


@features.command("export")
@click.argument("store", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write.")
@click.option("--format", "fmt", type=click.Choice(interop.FORMATS), default="npy", show_default=True)
@click.option("--feature-type", help="The <key> in <video>_<key>.npy (default: the imported type, else the backbone).")
def features_export(store, out, fmt, feature_type) -> None:
    """Write a store's features as per-video files in video_features' layout, plus labels.csv."""
    try:
        n = interop.export_features(store, out, feature_type=feature_type, fmt=fmt)
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(f"exported {n} videos from {store} to {out}")


@main.command()
def backbones() -> None:
    """Every backbone and its pretrained weights (--weights NAME), and whether each is available offline here."""
    click.echo(stages.describe_backbones())


@main.command()
def datasets() -> None:
    """List the dataset adapters and the layouts they expect."""
    for adapter in ADAPTERS.values():
        click.echo(f"{adapter.name}\n" + "\n".join(f"    {line}" for line in adapter.layout.strip().splitlines()) + "\n")


def _literal(value: str) -> object:
    """A JSON literal when it parses (2, 0.5, true), else the string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _parse_key_values(pairs: tuple[str, ...], option: str) -> dict:
    """KEY=VALUE pairs; values are JSON literals when they parse (2, 0.5, true), else strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        options[key.replace("-", "_")] = _literal(value)
    return options


def _stores(paths: tuple[Path, ...]) -> Path | Streams | None:
    """One --features store as itself, several as the streams of a multi-stream run (in the order given)."""
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else Streams(paths)


@main.command("train-temporal")
@click.option("--head", required=True, type=click.Choice(list_heads()), help="Temporal head to train.")
@click.option("--features", "features_path", required=True, multiple=True, type=click.Path(path_type=Path),
              help="Feature store (.h5) written by `vidfeat extract`; repeat it for a multi-stream run (e.g. RGB, "
                   "then flow), combined by -o fusion=late|concat|slowfast.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@click.option("--fold", default="1", show_default=True, help="Fold number, or `all` for the 3-fold protocol.")
@click.option("--segments", default=8, show_default=True, help="K segments sampled per video.")
@click.option("--sample-mode", type=click.Choice(SAMPLE_MODES), default="segments", show_default=True,
              help="Training sampling: TSN segments (a random position in each of K), a random contiguous window "
                   "of K steps, or all steps (padded and masked).")
@click.option("--eval-clips", default=1, show_default=True, help="Clips averaged per video at evaluation.")
@click.option("--epochs", type=int,
              help="Training epochs (default 60, gcn 120; early stopping on validation).")
@click.option("--lr", type=float, help="AdamW learning rate (default 1e-3, gcn 3e-3).")
@click.option("--batch-size", type=int, help="Videos per batch (default 32).")
@click.option("--mixup", type=float, help="Feature-level mixup alpha (default 0 = off).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", help="cpu, cuda or cuda:N (default: CUDA when available).")
@click.option("-o", "--head-option", "head_option", multiple=True, metavar="KEY=VALUE",
              help="Head option, e.g. -o hidden=256 -o bidirectional=true (see README).")
@click.option("-t", "--train-option", "train_option", multiple=True, metavar="KEY=VALUE",
              help="Training option, e.g. -t weight_decay=0.01 -t label_smoothing=0 -t fc_lr_mult=5 (see README).")
@click.option("--val-fraction", default=0.15, show_default=True,
              help="Share of train carved out (stratified, seeded) for validation when the dataset has no val split.")
@click.option("--no-progress", is_flag=True)
def train_temporal(head, features_path, out, fold, segments, sample_mode, eval_clips, epochs, lr, batch_size,
                   mixup, seed, device, head_option, train_option, val_fraction, no_progress) -> None:
    """Train a temporal head on cached features and write a run directory."""
    train_options = _parse_key_values(train_option, "--train-option")
    train_options.update({k: v for k, v in (("lr", lr), ("batch_size", batch_size), ("mixup", mixup)) if v is not None})
    kwargs = dict(segments=segments, sample_mode=sample_mode, eval_clips=eval_clips, epochs=epochs, seed=seed,
                  train_options=train_options, device=device, progress=not no_progress, val_fraction=val_fraction,
                  **_parse_key_values(head_option, "--head-option"))
    try:
        if fold == "all":
            train_folds(_stores(features_path), head, out, **kwargs)
        elif fold.isdigit():
            train_run(_stores(features_path), head, out, fold=int(fold), **kwargs)
        else:
            raise click.BadParameter(f"expected a fold number or `all`, got {fold!r}", param_hint="--fold")
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(format_comparison(compare_runs([out])))
    click.echo(f"run written to {out}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--features", "features_path", multiple=True, type=click.Path(path_type=Path),
              help="Score on this store instead of the run's (its provenance must match); a multi-stream run takes "
                   "one per stream, in the run's order.")
@click.option("--device", help="cpu, cuda or cuda:N.")
def evaluate(run_dir, features_path, device) -> None:
    """Re-score a trained run on its test split."""
    try:
        metrics = evaluate_run(run_dir, _stores(features_path), device=device)
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(f"{metrics['head']} fold {metrics['fold']} on {metrics['features']}: top1 {100 * metrics['top1']:.1f}  "
               f"top5 {100 * metrics['top5']:.1f}  mean-class {100 * metrics['mean_class_accuracy']:.1f}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("videos", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", default=5, show_default=True)
@click.option("--weights", multiple=True,
              help="The weights file the run's features were extracted with (for sha256 weights); a multi-stream run "
                   "takes it for each stream extracted with a file, or one --weights per stream (`-` for none).")
@click.option("--detector-weights", help="The detector weights file the run's regions were found with (for sha256 "
                                        "detector weights).")
@click.option("--flow-weights", help="The RAFT weights file the run's flow was computed with (for sha256 weights).")
@click.option("--device", default="auto", show_default=True)
def predict(run_dir, videos, top_k, weights, detector_weights, flow_weights, device) -> None:
    """Classify new videos: extract them exactly as the run's features were made, then apply the head."""
    try:
        given = None if not weights else weights[0] if len(weights) == 1 else list(weights)
        predictions = stages.predict(run_dir, videos, top_k=top_k, weights=given, device=device,
                                     detector_weights=detector_weights, flow_weights=flow_weights)
    except USER_ERRORS as exc:
        _fail(exc)
    failed = 0
    for prediction in predictions:
        click.echo(str(prediction.video))
        if prediction.error:
            failed += 1
            click.echo(f"  FAILED: {prediction.error}")
        for name, probability in prediction.top:
            click.echo(f"  {probability:6.1%}  {name}")
    if failed:
        sys.exit(1)


def _grid_values(pairs: tuple[str, ...], option: str) -> dict[str, list]:
    """KEY=V1,V2,... pairs: the values to sweep, each a JSON literal when it parses, else a string."""
    grid = {}
    for pair in pairs:
        key, sep, values = pair.partition("=")
        if not sep or not key or not values:
            raise click.BadParameter(f"expected KEY=V1,V2,..., got {pair!r}", param_hint=option)
        grid[key.replace("-", "_")] = [_literal(v) for v in values.split(",")]
    return grid


@main.command()
@click.option("--features", "features_path", required=True, type=click.Path(path_type=Path),
              help="Feature store (.h5), or several shards read as one (repeat the option).", multiple=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Sweep directory (created, or resumed).")
@click.option("--grid", "grid_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Grid file (.json, or .yaml with PyYAML installed); the options below add to it.")
@click.option("--head", "heads", multiple=True, type=click.Choice(list_heads()), help="Head to sweep (repeatable).")
@click.option("-o", "--head-option", "head_option", multiple=True, metavar="KEY=V1,V2",
              help="Head option values, e.g. -o hidden=64,256 (every head with that option) or -o lstm.layers=1,2.")
@click.option("-t", "--train-option", "train_option", multiple=True, metavar="KEY=V1,V2",
              help="Training option values, e.g. -t lr=0.001,0.003.")
@click.option("--seeds", help="Comma-separated seeds, e.g. 0,1,2 (default 0).")
@click.option("--folds", help="Comma-separated folds, e.g. 1,2,3 (default 1).")
@click.option("--epochs", type=int, help="Epochs of every run (default: each head's).")
@click.option("--segments", type=int, help="K segments sampled per video (default 8).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1), help="Runs trained in parallel.")
@click.option("--device", help="cpu, cuda or cuda:N (default: CUDA when available).")
def sweep(features_path, out, grid_file, heads, head_option, train_option, seeds, folds, epochs, segments, jobs,
          device) -> None:
    """Train a grid of heads x options x seeds x folds on one store, the cache loaded once and shared; a rerun
    skips finished runs. Prints the ranking and writes comparison.csv and comparison.png into --out."""
    try:
        spec = asdict(SweepGrid.from_file(grid_file)) if grid_file else {"heads": []}
        spec["heads"] = list(spec["heads"]) + [h for h in heads if h not in spec["heads"]]
        spec["head_options"] = {**spec.get("head_options", {}), **_grid_values(head_option, "--head-option")}
        spec["train_options"] = {**spec.get("train_options", {}), **_grid_values(train_option, "--train-option")}
        for name, value in (("seeds", seeds), ("folds", folds)):
            if value:
                spec[name] = [int(v) for v in value.split(",")]
        settings = {k: v for k, v in (("epochs", epochs), ("segments", segments)) if v is not None}
        spec["settings"] = {**spec.get("settings", {}), **settings}
        paths = features_path[0] if len(features_path) == 1 else list(features_path)
        result = run_sweep(paths, SweepGrid.from_dict(spec), out, jobs=jobs, device=device)
        ranking = rank_configurations(compare_runs([out]))
        table, plot = write_comparison(ranking, out)
    except USER_ERRORS as exc:
        _fail(exc)
    click.echo(format_ranking(ranking))
    click.echo(f"{result.trained} run(s) trained, {result.skipped} already finished, in {result.wall_s:.1f} s; "
               f"ranking in {table}, plot in {plot}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write comparison.csv and comparison.png here (default: into the sweep directory, if one is given).")
def compare(run_dirs, out) -> None:
    """Table of runs (head, top1, top5, mean-class accuracy, parameters, training time); with a sweep directory or
    --out also the configurations ranked by mean ± std over seeds and folds, as a CSV file and a plot."""
    sweeps = [d for d in run_dirs if (d / SWEEP_FILE).exists()]
    try:
        rows = compare_runs(run_dirs)
        click.echo(format_comparison(rows))
        out = out if out is not None else (sweeps[0] if len(sweeps) == 1 else None)
        if out is not None:
            ranking = rank_configurations(rows)
            table, plot = write_comparison(ranking, out)
            click.echo("\n" + format_ranking(ranking) + f"\nranking in {table}, plot in {plot}")
    except USER_ERRORS as exc:
        _fail(exc)


if __name__ == "__main__":
    main()
