"""Sweeps on the sample dataset through the CLI: a grid of 5 heads x 3 seeds in 2 processes on one shared cache,
resumed after an interruption, then ranked by `compare`."""
import csv
import json
import pickle

import numpy as np

import pytest
from click.testing import CliRunner

from vidfeat.features import FeatureStore
from vidfeat.pipelines.cli import main
from vidfeat.temporal import runs
from vidfeat.temporal.sweep import SweepGrid

HEADS = ("mean", "logreg", "lstm", "tcn", "transformer")
GRID = {
    "heads": list(HEADS),
    # Small heads and few epochs: this tests the sweep machinery, not accuracy.
    "head_options": {"lstm.hidden": 32, "tcn.channels": 32, "tcn.levels": 2, "transformer.d_model": 32,
                     "transformer.layers": 1, "transformer.heads": 2, "logreg.C": 1.0},
    "seeds": [0, 1, 2],
    "settings": {"epochs": 4},
}


def cli(*args: str):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    out = root / "sample.h5"
    cli("extract", "--dataset", "sample", "--data-root", root / "data" / "sample", "--fps", "4", "--out", out,
        "--no-progress")
    return out


@pytest.fixture(scope="module")
def swept(sample_store, tmp_path_factory):
    """The grid swept with --jobs 2; counts the store's bulk reads, and moves the store away once its rows are
    shared, so a run that opened the store itself would fail."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    grid_file = out.parent / "grid.json"
    grid_file.write_text(json.dumps(GRID))
    loads = []
    original_load, original_share = FeatureStore.load_rows, runs.RunData.share

    def counting_load(self, *args, **kwargs):
        loads.append(args)
        return original_load(self, *args, **kwargs)

    def share_then_hide_store(self, directory):
        shared = original_share(self, directory)
        sample_store.rename(sample_store.with_suffix(".hidden"))
        return shared

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureStore, "load_rows", counting_load)
        mp.setattr(runs.RunData, "share", share_then_hide_store)
        try:
            result = cli("sweep", "--features", sample_store, "--grid", grid_file, "--jobs", "2", "--out", out)
        finally:
            sample_store.with_suffix(".hidden").rename(sample_store)
    return {"out": out, "grid_file": grid_file, "loads": loads, "output": result.output}


def run_dirs(out):
    return sorted(p.parent for p in out.glob("*/*/config.json"))


def test_sweep_trains_every_cell_from_one_load_of_the_cache(swept):
    assert len(swept["loads"]) == 1  # the features, read once for all 15 runs (no regions in this grid)
    dirs = run_dirs(swept["out"])
    assert len(dirs) == 15 and {d.name for d in dirs} == {"seed0-fold1", "seed1-fold1", "seed2-fold1"}
    # Each run directory is exactly what train-temporal writes.
    expected = {runs.CONFIG, runs.CHECKPOINT, runs.LOG, runs.CURVES, runs.CONFUSION, runs.METRICS}
    for d in dirs:
        assert {p.name for p in d.iterdir()} == expected
        config = json.loads((d / runs.CONFIG).read_text())
        assert f"seed{config['seed']}-fold{config['fold']}" == d.name and d.parent.name.startswith(config["head"])
    assert "15 run(s) trained, 0 already finished" in swept["output"]


def test_rerun_redoes_only_the_unfinished_runs(swept, sample_store):
    out = swept["out"]
    dirs = run_dirs(out)
    lost_metrics, partial = dirs[0], dirs[7]
    (lost_metrics / runs.METRICS).unlink()  # a run without its metrics is not finished
    (partial / runs.CONFIG).unlink()
    (partial / runs.METRICS).unlink()  # as if killed mid-run: only the checkpoint and plots were written
    before = {d: (d / runs.CONFIG).stat().st_mtime_ns for d in dirs if d not in (lost_metrics, partial)}
    result = cli("sweep", "--features", sample_store, "--grid", swept["grid_file"], "--jobs", "2", "--out", out)
    assert "2 run(s) trained, 13 already finished" in result.output
    assert all(runs.run_finished(d) for d in dirs)
    assert {d: (d / runs.CONFIG).stat().st_mtime_ns for d in before} == before  # the others were left alone


def test_compare_ranks_configurations_and_writes_the_table_and_plot(swept, tmp_path):
    result = cli("compare", swept["out"])
    ranking = (swept["out"] / runs.COMPARISON_CSV).read_text()
    rows = list(csv.DictReader(ranking.splitlines()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5] and all(r["runs"] == "3" for r in rows)
    top1 = [float(r["top1"]) for r in rows]
    assert top1 == sorted(top1, reverse=True) and {r["head"] for r in rows} == set(HEADS)
    assert all(float(r["top1_std"]) >= 0 for r in rows)
    assert "±" in result.output and rows[0]["configuration"] in result.output
    assert (swept["out"] / runs.COMPARISON_PLOT).stat().st_size > 10_000
    cli("compare", *run_dirs(swept["out"])[:2], "--out", tmp_path / "two")
    assert (tmp_path / "two" / runs.COMPARISON_CSV).exists()


def test_shared_rows_travel_to_workers_as_a_file_name(sample_store, tmp_path):
    data = runs.RunData.load(sample_store, [1], in_memory=True)
    shared = data.share(tmp_path)
    blob = pickle.dumps(shared)
    rows_bytes = sum(data.source.get(i).nbytes for i in range(len(data.source)))
    assert len(blob) < rows_bytes / 20  # what a worker receives is the metadata and a file name, not the rows
    received = pickle.loads(blob)
    assert isinstance(received.source.get(3), np.memmap)
    np.testing.assert_array_equal(received.source.get(3), data.source.get(3))


def test_a_directory_swept_with_another_grid_is_refused(swept, sample_store):
    result = CliRunner().invoke(main, ["sweep", "--features", str(sample_store), "--head", "mean",
                                       "--out", str(swept["out"])])
    assert result.exit_code == 1 and "another grid" in result.output


def test_grid_options_are_scoped_and_checked(tmp_path):
    grid = SweepGrid.from_dict({"heads": ["lstm", "tcn"], "head_options": {"dropout": [0.1, 0.5], "lstm.hidden": 8},
                                "train_options": {"lr": [1e-3, 3e-3]}, "seeds": [0, 1]})
    cells = grid.runs()
    assert len(cells) == 2 * 2 * 2 * 2  # two heads, each x 2 dropouts x 2 lr x 2 seeds
    assert {c.configuration for c in cells if c.head == "lstm"} >= {"lstm_dropout=0.1_hidden=8_lr=0.001"}
    with pytest.raises(ValueError, match="no head in the grid .* has an option 'channels'"):
        SweepGrid.from_dict({"heads": ["lstm"], "head_options": {"channels": [8]}})
    with pytest.raises(ValueError, match="for head 'tcn', which the grid does not sweep"):
        SweepGrid.from_dict({"heads": ["lstm"], "head_options": {"tcn.levels": [2]}})
    with pytest.raises(ValueError, match="unknown training option"):
        SweepGrid.from_dict({"heads": ["lstm"], "train_options": {"learning_rate": [1]}})
    bad = tmp_path / "grid.json"
    bad.write_text("heads: [lstm]")
    with pytest.raises(ValueError, match="not valid JSON"):
        SweepGrid.from_file(bad)
