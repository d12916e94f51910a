"""Multi-stream runs: two feature stores of the same videos, aligned by key, fused late, by concatenation or as
SlowFast's two pathways; evaluate, compare and predict on them.

The synthetic pair splits the label between the streams: the class is (a, b), the first store's steps carry bit a
and the second's bit b (with one row fewer per video, as a flow store has), so each stream alone can tell at most
half the classes apart and only a fusion of both can solve the task.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vidfeat.features import ProvenanceMismatch, SequenceSource, UserError, VideoRecord, open_store, write_store
from vidfeat.pipelines.cli import main
from vidfeat.temporal.data import SequenceDataset, fold_split
from vidfeat.temporal.fusion import LateFusionHead
from vidfeat.temporal.heads import create_head
from vidfeat.temporal.runs import compare_runs, evaluate_run, load_run, predict_sequences, train_run
from vidfeat.temporal.sampling import map_steps
from vidfeat.temporal.streams import JoinedSource, Streams
from vidfeat.temporal.synthetic import synthetic_provenance
from vidfeat.temporal.training import TrainConfig, train

CLASSES = ["a0b0", "a0b1", "a1b0", "a1b1"]
RGB_DIM, FLOW_DIM = 8, 6
FAST = {"batch_size": 16}

pytestmark = pytest.mark.usefixtures("single_thread")


def split_records(videos: int = 64, seed: int = 0, noise: float = 1.0) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """The two streams' records: class (a, b); stream 1 carries a, stream 2 (one row fewer) carries b. Rounds of the
    four classes cycle through test, val, train, train."""
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal(RGB_DIM), rng.standard_normal(FLOW_DIM)
    u, v = u / np.linalg.norm(u), v / np.linalg.norm(v)
    first, second = [], []
    for i in range(videos):
        label = CLASSES[i % 4]
        a, b = int(label[1]), int(label[3])
        steps = int(rng.integers(8, 16))
        split = (("test", "val", "train", "train")[(i // 4) % 4],)
        for records, direction, bit, rows, dim in ((first, u, a, steps, RGB_DIM), (second, v, b, steps - 1, FLOW_DIM)):
            features = 3 * (2 * bit - 1) * direction + noise * rng.standard_normal((rows, dim))
            records.append(VideoRecord(key=f"{label}/v{i:03d}", features=features.astype(np.float32),
                                       timestamps=np.arange(rows) / 10.0, frame_indices=np.arange(rows),
                                       label=label, splits=split))
    return first, second


def write(path: Path, records: list[VideoRecord], classes: list[str] = CLASSES) -> Path:
    write_store(path, records, synthetic_provenance(records[0].features.shape[1], classes, 1, "float32", "split"))
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pair")
    first, second = split_records()
    return write(root / "rgb.h5", first), write(root / "flow.h5", second)


@pytest.fixture(scope="module")
def late_run(pair, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("late") / "run"
    train_run(Streams(pair), "mean", out, epochs=30, progress=False, train_options=FAST)
    return out


# Alignment -------------------------------------------------------------------------------------------------


def test_streams_with_other_videos_are_refused_naming_some_and_the_count(pair, tmp_path):
    first, second = split_records()
    fewer = write(tmp_path / "fewer.h5", second[:-5])
    expected = (f"stores {pair[0]} and {fewer} hold different videos: 5 of {pair[0]}'s are not in {fewer} "
                f"('a0b0/v060', 'a0b1/v061', 'a1b0/v062', ...), 0 of {fewer}'s are not in {pair[0]}; extract every "
                "stream from the same videos (a video that failed in one store is retried by rerunning that "
                "extraction)")
    with pytest.raises(UserError, match=f"^{re.escape(expected)}$"):
        train_run(Streams([pair[0], fewer]), "mean", tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_streams_with_other_classes_are_refused(pair, tmp_path):
    _, second = split_records()
    renamed = [replace(r, label=r.label.upper()) for r in second]
    other = write(tmp_path / "other.h5", renamed, [c.upper() for c in CLASSES])
    expected = (f"stores {pair[0]} and {other} have different classes ({CLASSES} vs {[c.upper() for c in CLASSES]}); "
                "the streams of a run must be extracted from the same dataset")
    with pytest.raises(UserError, match=f"^{re.escape(expected)}$"):
        train_run(Streams([pair[0], other]), "mean", tmp_path / "run", progress=False)


def test_streams_with_another_fold_assignment_are_refused(pair, tmp_path):
    _, second = split_records()
    moved = [replace(r, splits=("train",)) if r.key == "a0b0/v000" else r for r in second]
    other = write(tmp_path / "moved.h5", moved)
    expected = (f"1 video(s) have another label or fold assignment in {other} than in {pair[0]} ('a0b0/v000'); "
                f"e.g. 'a0b0/v000': label a0b0, splits test in {pair[0]}, label a0b0, splits train in {other}. "
                "Extract every stream from the same dataset and split files")
    with pytest.raises(UserError, match=f"^{re.escape(expected)}$"):
        train_run(Streams([pair[0], other]), "mean", tmp_path / "run", progress=False)


@pytest.mark.parametrize("streams, head, options, message", [
    (1, "mean", {"fusion": "late"}, "fusion and fusion_weights combine several streams; give one --features per "
                                    "stream (e.g. --features rgb.h5 --features flow.h5), or drop them for one store"),
    (2, "mean", {"fusion": "sum"}, "unknown fusion 'sum'; choose one of late, concat, slowfast"),
    (2, "mean", {"fusion_weights": "1,2,3"}, "fusion_weights must be 2 non-negative numbers (one per --features "
                                             "store, in order) with a positive sum, e.g. 1,1.5; got '1,2,3'"),
    (2, "mean", {"fusion": "concat", "fusion_weights": "1,1"}, "fusion_weights weigh the streams' scores in late "
                                                               "fusion; fusion=concat has none"),
    (2, "logreg", {}, "logreg is fitted, not trained on a loss, so late fusion cannot train it; use -o fusion=concat "
                      "(one model on both streams' features)"),
    (2, "lstm", {"fusion": "slowfast"}, "fusion=slowfast feeds the two pathways of --head slowfast from two stores "
                                        "(the slow one first); got head 'lstm' on 2 stores"),
    (2, "gcn", {}, "head 'gcn' reads regions or spatial grids, which a multi-stream run does not join; train it on "
                   "one store, or train a frame head (mean, lstm, tcn, transformer, slowfast, logreg) on the streams"),
])
def test_fusion_options_are_checked_before_anything_is_read(pair, tmp_path, streams, head, options, message):
    path = Streams(pair) if streams == 2 else pair[0]
    with pytest.raises(UserError, match=f"^{re.escape(message)}$"):
        train_run(path, head, tmp_path / "run", progress=False, **options)


def test_slowfast_fusion_wants_the_low_rate_store_first(pair, tmp_path):
    with pytest.raises(UserError, match=re.escape(f"but {pair[0]} has more rows (")):
        train_run(Streams(pair), "slowfast", tmp_path / "run", fusion="slowfast", progress=False)


# Joined rows -----------------------------------------------------------------------------------------------


def test_map_steps_reads_the_same_relative_positions():
    np.testing.assert_array_equal(map_steps(np.arange(10), 10, 10), np.arange(10))
    np.testing.assert_array_equal(map_steps(np.arange(10), 10, 9), [0, 1, 2, 3, 4, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(map_steps(np.arange(8), 8, 4), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(map_steps(np.array([0, 3]), 4, 8), [1, 7])


def test_joined_rows_are_each_stream_s_rows_side_by_side(pair):
    with open_store(pair[0]) as rgb, open_store(pair[1]) as flow:
        keys = rgb.keys()[:3]
        joined = JoinedSource([SequenceSource.from_store(p, keys) for p in pair])
        np.testing.assert_array_equal(joined.lengths, [len(rgb.features(k)) for k in keys])  # the longer stream's
        steps = [np.array([0, 2, 5]), np.arange(int(joined.lengths[1]))]
        rows = joined.gather([0, 1], steps)
        for part, (video, picked) in zip(np.split(rows, [3]), zip([0, 1], steps)):
            key, length = keys[video], int(joined.lengths[video])
            np.testing.assert_array_equal(part[:, :RGB_DIM], rgb.features(key)[picked])
            np.testing.assert_array_equal(part[:, RGB_DIM:], flow.features(key)[map_steps(picked, length, length - 1)])
        np.testing.assert_array_equal(joined.get(1), rows[3:])


# One store: as before -----------------------------------------------------------------------------------------


def test_a_one_store_run_is_the_head_trained_alone_as_before(pair, tmp_path):
    """The one-store path builds the head itself (no fusion wrapper) and trains it on the store's own sequences:
    the same history and weights as the primitives give. (Against main's train_run, before multi-stream runs,
    histories and weights of mean, lstm, slowfast and logreg runs were compared bit for bit as well.)"""
    train_run(pair[0], "lstm", tmp_path / "run", epochs=3, seed=1, progress=False, train_options=FAST, hidden=16)
    model, config = load_run(tmp_path / "run")
    assert "fusion" not in config and isinstance(config["features"], dict) and config["input_dim"] == RGB_DIM
    with open_store(pair[0]) as store:
        split = fold_split(store, 1, 0.15, 1)
        labels = {k: CLASSES.index(store.label(k)) for k in store.keys()}
    sets = [SequenceDataset(SequenceSource.from_store(pair[0], keys), [labels[k] for k in keys], segments=8,
                            mode="segments", train=is_train, seed=1) for keys, is_train in ((split.train, True),
                                                                                          (split.val, False))]
    torch.manual_seed(1)
    alone = create_head("lstm", RGB_DIM, 4, hidden=16)
    result = train(alone, *sets, TrainConfig(epochs=3, seed=1, **FAST), device="cpu", progress=False)
    with open(tmp_path / "run" / "train_log.csv") as f:
        logged = [{k: float(v) for k, v in row.items() if k != "time_s"} for row in csv.DictReader(f)]
    assert logged == [{k: float(v) for k, v in row.items() if k != "time_s"} for row in result.history]
    for name, value in alone.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


# Late fusion, concat, slowfast -------------------------------------------------------------------------------


def test_a_late_fusion_run_records_both_stores_and_averages_the_streams_scores(pair, late_run):
    model, config = load_run(late_run)
    assert isinstance(model, LateFusionHead) and len(model.streams) == 2
    assert config["fusion"] == {"mode": "late", "weights": [0.4, 0.6], "input_dims": [RGB_DIM, FLOW_DIM]}
    assert config["input_dim"] == RGB_DIM + FLOW_DIM
    for record, path in zip(config["features"], pair):
        with open_store(path) as store:
            assert record["path"] == str(path.resolve()) and record["provenance_hash"] == store.provenance_hash
            assert record["provenance"]["feature_dim"] == store.feature_dim
    with open_store(pair[0]) as rgb, open_store(pair[1]) as flow:
        keys = rgb.keys()[:6]
        streams = [[rgb.features(k) for k in keys], [flow.features(k) for k in keys]]
    proba = predict_sequences(model, config, streams)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-6)
    dataset = SequenceDataset(JoinedSource.from_arrays(streams), [0] * 6, segments=8, mode="segments", train=False)
    x = torch.from_numpy(dataset.source.gather(range(6), [dataset._steps(i) for i in range(6)])).view(6, 8, -1)
    mask = torch.ones(6, 8, dtype=torch.bool)
    with torch.no_grad():
        scores = [torch.softmax(head(part, mask), 1) for head, part in
                  zip(model.streams, (x[..., :RGB_DIM], x[..., RGB_DIM:]))]
    np.testing.assert_allclose(proba, (0.4 * scores[0] + 0.6 * scores[1]).numpy(), atol=1e-6)


def test_evaluate_and_compare_handle_a_two_stream_run(pair, late_run, tmp_path):
    metrics = json.loads((late_run / "metrics.json").read_text())
    again = evaluate_run(late_run)
    assert again["top1"] == metrics["top1"] and again["features"] == [str(p.resolve()) for p in pair]
    assert evaluate_run(late_run, Streams(pair))["confusion"] == metrics["confusion"]
    with pytest.raises(UserError, match=re.escape("give one --features per stream, in that order, not 1")):
        evaluate_run(late_run, pair[0])
    with pytest.raises(ProvenanceMismatch, match="feature_dim"):
        evaluate_run(late_run, Streams([pair[1], pair[0]]))  # the streams swapped
    row = compare_runs([late_run])[0]
    assert row["configuration"] == "mean fusion=late epochs=30 batch_size=16" and row["top1"] == metrics["top1"]


def test_concat_and_slowfast_fusion_train_one_head_on_both_stores(pair, tmp_path):
    train_run(Streams(pair), "lstm", tmp_path / "concat", fusion="concat", epochs=2, progress=False,
              train_options=FAST, hidden=16)
    model, config = load_run(tmp_path / "concat")
    assert model.lstm.input_size == RGB_DIM + FLOW_DIM and config["fusion"]["weights"] is None
    assert evaluate_run(tmp_path / "concat")["top1"] == json.loads((tmp_path / "concat" / "metrics.json").read_text())["top1"]
    # The low-rate store first: its part of each joined step feeds the slow pathway.
    train_run(Streams([pair[1], pair[0]]), "slowfast", tmp_path / "sf", fusion="slowfast", epochs=2,
              progress=False, train_options=FAST, width=16, alpha=2)
    model, config = load_run(tmp_path / "sf")
    assert model.split == FLOW_DIM and model.slow_proj.in_features == FLOW_DIM
    assert model.fast_proj.in_features == RGB_DIM
    assert compare_runs([tmp_path / "sf"])[0]["configuration"] == "slowfast alpha=2 width=16 fusion=slowfast epochs=2 batch_size=16"


def test_late_fusion_solves_what_each_stream_half_knows(tmp_path):
    """Each stream holds one bit of the 4-class label (0.5 expected alone); late fusion combines them. mean head,
    lr 0.01, 30 epochs, 96 videos (24 test), test top-1 over seeds 0-4 (store and run seeded alike): first stream
    0.375 0.542 0.333 0.5 0.417, second 0.5 0.625 0.5 0.458 0.5, late 1.0 1.0 1.0 1.0 0.958."""
    first, second = split_records(videos=96, seed=0)
    stores = write(tmp_path / "a.h5", first), write(tmp_path / "b.h5", second)
    top1 = {name: train_run(path, "mean", tmp_path / name, epochs=30, progress=False,
                            train_options={**FAST, "lr": 0.01})["top1"]
            for name, path in (("first", stores[0]), ("second", stores[1]), ("late", Streams(stores)))}
    assert top1["late"] >= 0.85 and top1["late"] >= max(top1["first"], top1["second"]) + 0.25, top1


# Real videos through the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def video_pair(tmp_path_factory):
    """A tiny list dataset extracted twice: lite0 at 4 fps (the slow, low-rate store) and a random-init resnet18
    at every frame (8 fps)."""
    from videogen import make_video

    root = tmp_path_factory.mktemp("two_stream_videos")
    rows = []
    for label, pattern in (("plain", "testsrc"), ("counter", "counter")):
        for i in range(3):
            path = root / label / f"{i}.mp4"
            path.parent.mkdir(exist_ok=True)
            make_video(path, size=(48, 48), fps=8, seconds=1, pattern=pattern)
            rows.append([f"{label}/{i}.mp4", label, ("train", "val", "test")[i]])
    with open(root / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *rows])
    stores = root / "rgb_fps4.h5", root / "resnet18.h5"
    for out, flags in zip(stores, (["--fps", "4"], ["--backbone", "resnet18", "--weights", "none"])):
        result = CliRunner().invoke(main, ["extract", "--dataset", "list", "--list", str(root / "list.csv"),
                                           "--out", str(out), "--no-progress", *flags])
        assert result.exit_code == 0, result.output
    return root, stores


def test_train_evaluate_compare_and_predict_a_two_stream_run_through_the_cli(video_pair, tmp_path):
    root, (slow, fast) = video_pair
    features = ["--features", str(slow), "--features", str(fast)]
    run = tmp_path / "two_stream"
    trained = CliRunner().invoke(main, ["train-temporal", "--head", "mean", *features, "--out", str(run),
                                        "--epochs", "3", "-o", "fusion_weights=1,1", "--no-progress"])
    assert trained.exit_code == 0, trained.output
    config = json.loads((run / "config.json").read_text())
    assert config["fusion"] == {"mode": "late", "weights": [0.5, 0.5], "input_dims": [1280, 512]}
    assert [r["provenance"]["backbone"] for r in config["features"]] == ["efficientnet_lite0", "resnet18"]
    evaluated = CliRunner().invoke(main, ["evaluate", str(run)])
    assert evaluated.exit_code == 0 and f"on {[str(slow.resolve()), str(fast.resolve())]}" in evaluated.output
    swapped = CliRunner().invoke(main, ["evaluate", str(run), "--features", str(fast), "--features", str(slow)])
    assert swapped.exit_code == 1 and "does not hold the features this run was trained on" in swapped.output
    compared = CliRunner().invoke(main, ["compare", str(run)])
    assert compared.exit_code == 0 and re.search(r"^two_stream +mean +1 +0 ", compared.output, re.M), compared.output
    (root / "broken.mp4").write_bytes(b"\0" * 100)
    predicted = CliRunner().invoke(main, ["predict", str(run), str(root / "plain" / "2.mp4"), str(root / "broken.mp4"),
                                          "--top-k", "2"])
    assert predicted.exit_code == 1, predicted.output  # the broken file is reported, the other one classified
    lines = predicted.output.splitlines()
    assert lines[0].endswith("2.mp4") and {lines[1].split()[-1], lines[2].split()[-1]} == {"plain", "counter"}
    assert lines[3].endswith("broken.mp4") and "FAILED" in lines[4]
    model, _ = load_run(run)
    with open_store(slow) as a, open_store(fast) as b:
        key = "plain/2"
        stored = predict_sequences(model, config, [[a.features(key)], [b.features(key)]])[0]
    shown = {line.split()[-1]: float(line.split()[0].rstrip("%")) / 100 for line in lines[1:3]}
    for name, probability in shown.items():  # new features of the same file: the stored run's scores
        assert probability == pytest.approx(stored[config["classes"].index(name)], abs=2e-3)
    slowfast = CliRunner().invoke(main, ["train-temporal", "--head", "slowfast", *features, "--out",
                                         str(tmp_path / "sf"), "--epochs", "2", "-o", "fusion=slowfast",
                                         "-o", "width=16", "-o", "alpha=2", "--no-progress"])
    assert slowfast.exit_code == 0, slowfast.output


def test_a_sweep_on_two_stores_sweeps_the_fusion_like_a_head_option(pair, tmp_path):
    from vidfeat.temporal.runs import rank_configurations
    from vidfeat.temporal.sweep import SweepGrid, run_sweep

    grid = SweepGrid(heads=["mean"], head_options={"fusion": ["late", "concat"]}, settings={"epochs": 2})
    result = run_sweep(Streams(pair), grid, tmp_path / "sweep")
    assert (result.runs, result.trained) == (2, 2)
    recorded = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["features"]
    assert recorded == [str(p.resolve()) for p in pair]
    names = {entry["configuration"] for entry in rank_configurations(compare_runs([tmp_path / "sweep"]))}
    assert names == {"mean fusion=late epochs=2", "mean fusion=concat epochs=2"}


def test_compare_ranks_the_same_head_on_different_stores_apart(pair, tmp_path):
    """An RGB and a flow store (here: the pair's two stores, one re-labelled as sampled at 4 fps) trained with the
    same head are two configurations, not repeats of one."""
    from vidfeat.temporal.runs import rank_configurations

    first, second = split_records()
    provenance = synthetic_provenance(FLOW_DIM, CLASSES, 1, "float32", "split")
    write_store(tmp_path / "b.h5", second, {**provenance, "sampling": {"mode": "fps", "fps": 4.0}})
    runs = [tmp_path / "a", tmp_path / "b"]
    for store, run in zip((pair[0], tmp_path / "b.h5"), runs):
        train_run(store, "mean", run, epochs=1, progress=False, train_options=FAST)
    ranking = rank_configurations(compare_runs(runs))
    label = "mean epochs=1 batch_size=16"
    assert sorted(e["configuration"] for e in ranking) == [f"{label} on synthetic", f"{label} on synthetic@4.0fps"]
    assert [e["configuration"] for e in rank_configurations(compare_runs(runs[:1]))] == [label]
