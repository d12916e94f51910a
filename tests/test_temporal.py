"""Temporal heads on cached features: sampling, heads, training, run directories.

Stores are built with the real HDF5 writer. The ramp store's classes differ only in temporal order,
so order-blind heads must stay near chance while sequence heads must solve it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vidfeat.features import ProvenanceMismatch, SequenceSource, VideoRecord, open_store, write_store
from vidfeat.temporal.data import (
    SequenceDataset,
    carve_validation,
    class_indices,
    collate,
    fold_split,
)
from vidfeat.temporal.heads import create_head, head_defaults
from vidfeat.temporal.logreg import fit_logreg, pool_sequences
from vidfeat.temporal.runs import (
    RunError,
    compare_runs,
    evaluate_run,
    format_comparison,
    load_run,
    predict_sequences,
    train_folds,
    train_run,
)
from vidfeat.temporal.sampling import sample_indices, segment_indices, window_indices
from vidfeat.temporal.synthetic import synthetic_provenance, write_ramp_store
from vidfeat.temporal.training import TrainConfig, metrics_from_proba, predict_proba

SMALL = {
    "mean": {},
    "logreg": {},
    "lstm": {"hidden": 32},
    "tcn": {"channels": 32, "levels": 3},
    "transformer": {"d_model": 32, "layers": 1, "heads": 2},
}
FAST = {"batch_size": 16}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ramp_store(tmp_path_factory) -> Path:
    return write_ramp_store(tmp_path_factory.mktemp("ramp") / "ramp.h5", videos=160, dim=8)


@pytest.fixture(scope="module")
def ramp_runs(ramp_store, tmp_path_factory) -> dict[str, dict]:
    """Every head trained once on the ramp store (shared by the accuracy and run-dir tests)."""
    root = tmp_path_factory.mktemp("runs")
    return {
        head: train_run(ramp_store, head, root / head, epochs=30, progress=False, train_options=FAST, **SMALL[head])
        for head in SMALL  # the frame heads; region heads are tested in test_gcn.py
    }


# Sampling ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [3, 8, 13, 100])
def test_segment_eval_indices_are_ordered_complete_and_time_symmetric(length):
    idx = segment_indices(length, 8)
    assert len(idx) == 8 and np.all(np.diff(idx) >= 0)
    assert idx.min() >= 0 and idx.max() < length
    # The reversed video gives the reversed steps, so the sampling itself leaks no direction.
    np.testing.assert_array_equal(idx + idx[::-1], length - 1)
    if length < 8:  # shorter than K: steps are repeated in order, every one of them used
        assert set(idx.tolist()) == set(range(length))


def test_segment_training_draws_one_step_per_segment_uniformly():
    rng = np.random.default_rng(0)
    counts = np.zeros(13)
    for _ in range(4000):
        idx = segment_indices(13, 8, rng=rng)
        bounds = np.arange(9) * 13 / 8
        assert np.all((idx >= np.floor(bounds[:-1])) & (idx < np.ceil(bounds[1:])))
        np.add.at(counts, idx, 1)
    assert np.allclose(counts / counts.sum() * 13, 1.0, atol=0.08)


def test_multi_clip_segments_and_windows():
    clips = [segment_indices(40, 4, clip=c, num_clips=3) for c in range(3)]
    np.testing.assert_array_equal(clips[0], [1, 11, 21, 31])
    np.testing.assert_array_equal(clips[2], [8, 18, 28, 38])
    assert [window_indices(20, 5, clip=c, num_clips=3)[0] for c in range(3)] == [0, 7, 15]
    np.testing.assert_array_equal(window_indices(20, 5), np.arange(7, 12))
    start = window_indices(20, 5, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(np.diff(start), 1)
    # Shorter than the window: every step, never cut; the collate pads and masks.
    np.testing.assert_array_equal(window_indices(3, 5), [0, 1, 2])
    np.testing.assert_array_equal(sample_indices(6, 2, "all"), np.arange(6))


def test_sampling_errors_say_what_to_do():
    with pytest.raises(ValueError, match="unknown sample mode 'tsn'; choose one of segments, window, all"):
        sample_indices(5, 2, "tsn")
    with pytest.raises(ValueError, match="empty sequence"):
        segment_indices(0, 4)


# Heads ------------------------------------------------------------------------------------------------

HEAD_VARIANTS = [
    ("mean", {}),
    ("logreg", {}),
    ("lstm", {"hidden": 16}),
    ("lstm", {"hidden": 16, "bidirectional": True, "layers": 2}),
    ("lstm", {"hidden": 16, "readout": "mean"}),
    ("tcn", {"channels": 16, "levels": 2}),
    ("tcn", {"channels": 16, "levels": 2, "causal": True}),
    ("transformer", {"d_model": 16, "heads": 2}),
    ("transformer", {"d_model": 16, "heads": 2, "positional": "sinusoidal", "readout": "mean"}),
]


@pytest.mark.parametrize("name,options", HEAD_VARIANTS)
def test_padding_never_changes_logits(name, options):
    torch.manual_seed(0)
    head = create_head(name, 6, 3, **options).eval()
    sequences = [torch.randn(n, 6) for n in (5, 9, 2)]
    batch = collate([{"x": s, "y": 0} for s in sequences])
    assert batch.mask.tolist()[2] == [True, True] + [False] * 7
    with torch.no_grad():
        together = head(batch.x, batch.mask)
        for i, s in enumerate(sequences):
            alone = head(s[None], torch.ones(1, len(s), dtype=torch.bool))
            # Extra padding filled with garbage instead of zeros must not matter either.
            padded = torch.cat([s, torch.full((4, 6), 7.0)])[None]
            longer = head(padded, torch.arange(len(s) + 4)[None] < len(s))
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(longer[0], alone[0], atol=1e-5, rtol=1e-5)
    assert together.shape == (3, 3)


def test_causal_tcn_never_sees_the_future():
    torch.manual_seed(0)
    head = create_head("tcn", 4, 2, channels=8, levels=2, causal=True).eval()
    x = torch.randn(1, 10, 4)
    changed = x.clone()
    changed[0, 6:] += 5.0
    keep = torch.ones(1, 10, dtype=torch.bool)
    with torch.no_grad():
        h1, h2 = head.proj(x), head.proj(changed)
        for block in head.blocks:
            h1, h2 = block(h1, keep[..., None].float()), block(h2, keep[..., None].float())
    torch.testing.assert_close(h1[0, :6], h2[0, :6])
    assert not torch.allclose(h1[0, 6:], h2[0, 6:])
    assert create_head("tcn", 4, 2, kernel_size=3, levels=5).receptive_field == 125


def test_head_errors_name_the_choices():
    with pytest.raises(ValueError, match="unknown head 'gru'; available heads: mean, logreg, lstm, tcn, transformer"):
        create_head("gru", 8, 2)
    with pytest.raises(ValueError, match=r"unknown option\(s\) hiden for head 'lstm'; its options are: hidden=256"):
        create_head("lstm", 8, 2, hiden=3)
    head = create_head("lstm", 4, 2, hidden=8)
    with pytest.raises(ValueError, match="prefix"):
        head(torch.randn(1, 3, 4), torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match=r"region features \[B, T, R, D\] need a region head"):
        head(torch.randn(1, 3, 5, 4), torch.ones(1, 3, dtype=torch.bool))
    learned = create_head("transformer", 4, 2, d_model=8, heads=2, max_len=4)
    with pytest.raises(ValueError, match="longer than the learned positions"):
        learned(torch.randn(1, 5, 4), torch.ones(1, 5, dtype=torch.bool))
    sinusoidal = create_head("transformer", 4, 2, d_model=8, heads=2, max_len=4, positional="sinusoidal")
    assert sinusoidal(torch.randn(1, 9, 4), torch.ones(1, 9, dtype=torch.bool)).shape == (1, 2)
    assert head_defaults("transformer")["readout"] == "cls"


def test_collate_pads_per_step_extras_like_features():
    items = [
        {"x": torch.ones(2, 3), "boxes": torch.ones(2, 4, 4), "y": 1},
        {"x": torch.ones(4, 3), "boxes": torch.ones(4, 4, 4), "y": 0},
    ]
    batch = collate(items)
    assert batch.x.shape == (2, 4, 3) and batch.extras["boxes"].shape == (2, 4, 4, 4)
    assert batch.extras["boxes"][0, 2:].abs().sum() == 0 and batch.x[0, 2:].abs().sum() == 0
    assert batch.mask.sum(1).tolist() == [2, 4] and batch.y.tolist() == [1, 0]


# logreg -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3])
def test_logreg_head_reproduces_the_sklearn_pipeline(classes):
    rng = np.random.default_rng(0)
    sequences = [rng.standard_normal((int(rng.integers(3, 9)), 5)) + (i % classes) for i in range(60)]
    labels = np.arange(60) % classes
    head, report = fit_logreg(sequences, labels, classes, C=0.5)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=1000, random_state=0))
    expected = reference.fit(pool_sequences(sequences), labels).predict_proba(pool_sequences(sequences))
    batch = collate([{"x": torch.tensor(s, dtype=torch.float32), "y": 0} for s in sequences])
    with torch.no_grad():
        got = torch.softmax(head(batch.x, batch.mask).double(), 1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert report["C"] == 0.5 and report["converged"]


def test_logreg_picks_c_on_validation():
    rng = np.random.default_rng(1)
    sequences = [rng.standard_normal((4, 3)) + (i % 2) * 0.3 for i in range(40)]
    labels = np.arange(40) % 2
    _, report = fit_logreg(sequences[:30], labels[:30], 2, val_sequences=sequences[30:], val_labels=labels[30:])
    assert set(report["val_accuracy_by_C"]) == {"0.01", "0.1", "1.0", "10.0"}
    assert report["val_accuracy_by_C"][str(report["C"])] == max(report["val_accuracy_by_C"].values())


# Data -------------------------------------------------------------------------------------------------


def _records(n: int, dim: int, splits: list[tuple[str | None, ...]], classes: list[str]) -> list[VideoRecord]:
    rng = np.random.default_rng(0)
    return [
        VideoRecord(
            key=f"v{i:03d}",
            features=rng.standard_normal((4 + i % 3, dim)).astype(np.float32),
            timestamps=np.arange(4 + i % 3, dtype=float),
            frame_indices=np.arange(4 + i % 3),
            label=classes[i % len(classes)],
            splits=splits[i],
        )
        for i in range(n)
    ]


def test_validation_comes_from_the_dataset_or_is_carved_stratified(tmp_path):
    classes = ["a", "b", "c"]
    splits = [("val",) if i < 6 else ("test",) if i < 12 else ("train",) for i in range(60)]
    path = tmp_path / "with_val.h5"
    write_store(path, _records(60, 4, splits, classes), synthetic_provenance(4, classes, 1, "float32", "x"))
    with open_store(path) as store:
        split = fold_split(store, 1, val_fraction=0.2, seed=3)
        assert split.val_source == "dataset" and len(split.val) == 6 and len(split.train) == 48

    keys = [f"k{i}" for i in range(50)]
    labels = [0] * 30 + [1] * 15 + [2] * 5
    train, val = carve_validation(keys, labels, 0.2, seed=7)
    assert (train, val) == carve_validation(keys, labels, 0.2, seed=7)
    assert carve_validation(keys, labels, 0.2, seed=8)[1] != val
    assert sorted(train + val) == sorted(keys) and not set(train) & set(val)
    per_class = [sum(labels[keys.index(k)] == c for k in val) for c in range(3)]
    assert per_class == [6, 3, 1]
    # A class with a single video stays in training.
    assert carve_validation(["x", "y", "z"], [0, 0, 1], 0.5, seed=0)[1] in (["x"], ["y"])


def test_store_without_splits_is_refused_clearly(tmp_path):
    path = tmp_path / "nosplit.h5"
    write_store(path, _records(4, 3, [()] * 4, ["a", "b"]), synthetic_provenance(3, ["a", "b"], 0, "float32", "x"))
    with open_store(path) as store, pytest.raises(ValueError, match=r"no train/test splits \(n_folds=0\)"):
        fold_split(store)


def test_lazy_reading_with_workers_matches_memory(ramp_store):
    with open_store(ramp_store) as store:
        keys = store.keys()[:20]
        labels = class_indices(store, keys)
    lazy = SequenceSource.from_store(ramp_store, keys, in_memory=False)
    eager = SequenceSource.from_store(ramp_store, keys, in_memory=True)
    assert not lazy.in_memory and eager.in_memory
    torch.manual_seed(0)
    head = create_head("lstm", 8, 2, hidden=8)
    probs = [
        predict_proba(head, SequenceDataset(src, labels, segments=5, mode="segments", train=False), device="cpu")
        for src in (lazy, eager)
    ]
    np.testing.assert_array_equal(probs[0], probs[1])


# Training and run directories ---------------------------------------------------------------------------


def test_order_only_classes_need_a_temporal_head(ramp_runs):
    """``up`` vs ``down`` ramps have identical value distributions: only order tells them apart."""
    # Order-blind heads score chance plus binomial noise on the 40 test videos (sd 0.08): 0.75 is chance + 3 sd.
    # Set from a 10-seed sweep (train seeds 0-9): worst (highest) mean 0.6 (seed 0), logreg 0.425;
    # on 4 other ramp stores at most 0.625.
    for head in ("mean", "logreg"):
        assert ramp_runs[head]["top1"] <= 0.75, (head, ramp_runs[head]["top1"])
    # Set from a 10-seed sweep (train seeds 0-9, plus 4 other stores): worst seed 1.0 for lstm, tcn and transformer.
    for head in ("lstm", "tcn", "transformer"):
        assert ramp_runs[head]["top1"] >= 0.9, (head, ramp_runs[head]["top1"])


def test_run_directory_contents(ramp_runs, ramp_store):
    run_dir = Path(ramp_runs["lstm"]["run_dir"])
    assert {p.name for p in run_dir.iterdir()} == {
        "config.json", "model.pt", "train_log.csv", "curves.png", "confusion.png", "metrics.json",
    }
    config = json.loads((run_dir / "config.json").read_text())
    with open_store(ramp_store) as store:
        assert config["features"]["provenance_hash"] == store.provenance_hash
        assert config["features"]["provenance"]["backbone"] == "synthetic"
    assert config["features"]["path"] == str(ramp_store.resolve())
    assert config["head_options"] == {**head_defaults("lstm"), "hidden": 32}
    assert config["sampling"] == {"mode": "segments", "segments": 8, "eval_clips": 1}
    assert config["training"]["batch_size"] == 16 and config["training"]["seed"] == 0
    assert config["split_sizes"] == {"train": 102, "val": 18, "test": 40} and config["val_source"] == "carved"

    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert state["fc.weight"].shape == (2, 32)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"top1", "top5", "mean_class_accuracy", "per_class", "confusion"} <= set(metrics)
    assert set(metrics["per_class"]) == {"down", "up"} and np.sum(metrics["confusion"]) == 40
    with (run_dir / "train_log.csv").open() as f:
        log = list(csv.DictReader(f))
    assert list(log[0]) == ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "time_s"]
    assert 1 <= len(log) <= 30 and metrics["best_epoch"] <= len(log)
    for png in ("curves.png", "confusion.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # logreg lives in the same scheme: a plain state_dict, its C search as the log.
    logreg_dir = Path(ramp_runs["logreg"]["run_dir"])
    assert set(torch.load(logreg_dir / "model.pt", weights_only=True)) == {"center", "scale", "fc.weight", "fc.bias"}
    assert json.loads((logreg_dir / "config.json").read_text())["sampling"]["mode"] == "all"


def test_reload_rescore_and_predict(ramp_runs, ramp_store):
    for head in ("logreg", "transformer"):
        run_dir = Path(ramp_runs[head]["run_dir"])
        saved = json.loads((run_dir / "metrics.json").read_text())
        again = evaluate_run(run_dir)
        assert again["top1"] == saved["top1"] and again["confusion"] == saved["confusion"]
        model, config = load_run(run_dir)
        with open_store(ramp_store) as store:
            test_keys = [k for k in store.keys() if store.split(k, 1) == "test"]
            sequences = store.load_all(test_keys)
            truth = class_indices(store, test_keys)
        proba = predict_sequences(model, config, sequences)
        assert proba.shape == (40, 2)
        np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
        assert np.mean(proba.argmax(1) == truth) == saved["top1"]


def test_compare_rows(ramp_runs):
    rows = compare_runs([r["run_dir"] for r in ramp_runs.values()])
    assert [r["head"] for r in rows] == list(SMALL)
    assert rows[0]["params"] == 2 * 8 + 2  # mean: one linear layer 8 -> 2
    assert all(r["train_time_s"] > 0 for r in rows)
    table = format_comparison(rows)
    header = ["run", "head", "fold", "seed", "top1", "top5", "mean-class", "params", "train", "s"]
    assert table.splitlines()[0].split() == header
    assert len(table.splitlines()) == 6


def test_training_is_deterministic_for_a_seed(ramp_store, tmp_path):
    def run(name: str, seed: int, **extra) -> dict:
        train_run(ramp_store, "tcn", tmp_path / name, epochs=4, seed=seed, progress=False,
                  train_options={**FAST, **extra}, channels=16, levels=2)
        return torch.load(tmp_path / name / "model.pt", weights_only=True)

    first, second, other = run("a", 0), run("b", 0), run("c", 1)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["fc.weight"], other["fc.weight"])
    mixed = run("d", 0, mixup=0.4, fc_lr_mult=5.0)
    assert not torch.equal(first["fc.weight"], mixed["fc.weight"])
    mixed_again = run("e", 0, mixup=0.4, fc_lr_mult=5.0)
    assert all(torch.equal(mixed[k], mixed_again[k]) for k in mixed)


def test_provenance_mismatch_is_refused_naming_fields(ramp_runs, ramp_store, tmp_path):
    with open_store(ramp_store) as store:
        records = [store.record(k) for k in store.keys()]
        attrs = dict(store.attrs)
    other = tmp_path / "other.h5"
    write_store(other, records, {**attrs, "backbone": "resnet18", "sampling": {"mode": "fps", "fps": 5}})
    run_dir = ramp_runs["mean"]["run_dir"]
    with pytest.raises(ProvenanceMismatch) as err:
        evaluate_run(run_dir, other)
    message = str(err.value)
    assert 'backbone: run "synthetic" vs store "resnet18"' in message
    assert '"mode": "fps"' in message and "feature_dim" not in message and "Evaluate with the run's store" in message
    # The same features stored as float16 are the same representation and are accepted.
    half = tmp_path / "half.h5"
    write_store(half, records, {**attrs, "dtype": "float16"})
    assert evaluate_run(run_dir, half)["n"] == 40


def test_fold_all_summarises_three_folds(tmp_path):
    store = write_ramp_store(tmp_path / "folds.h5", videos=60, dim=4, n_folds=3)
    summary = train_folds(store, "mean", tmp_path / "all", epochs=3, progress=False, train_options=FAST)
    assert [r["fold"] for r in summary["folds"]] == [1, 2, 3]
    top1 = [json.loads((tmp_path / "all" / f"fold{f}" / "metrics.json").read_text())["top1"] for f in (1, 2, 3)]
    assert summary["mean"]["top1"] == pytest.approx(np.mean(top1))
    assert summary["std"]["top1"] == pytest.approx(np.std(top1, ddof=1))
    assert json.loads((tmp_path / "all" / "summary.json").read_text())["mean"] == summary["mean"]
    configs = [json.loads((tmp_path / "all" / f"fold{f}" / "config.json").read_text()) for f in (1, 2, 3)]
    assert [c["split_sizes"]["test"] for c in configs] == [20, 20, 20]
    row = compare_runs([tmp_path / "all"])[0]
    assert row["fold"] == "all" and row["top1_std"] == summary["std"]["top1"]
    assert "±" in format_comparison([row])


def test_run_options_are_checked_before_training(ramp_store, tmp_path):
    with pytest.raises(ValueError, match="unknown training option\\(s\\) learning_rate; valid options: epochs"):
        train_run(ramp_store, "mean", tmp_path / "x", train_options={"learning_rate": 1.0})
    with pytest.raises(ValueError, match="unknown option\\(s\\) depth for head 'tcn'"):
        train_run(ramp_store, "tcn", tmp_path / "y", depth=3)
    train_run(ramp_store, "mean", tmp_path / "z", epochs=1, progress=False)
    with pytest.raises(RunError, match="already holds a run; choose another output directory"):
        train_run(ramp_store, "mean", tmp_path / "z", epochs=1, progress=False)
    assert TrainConfig.from_options({"lr": 0.1}).lr == 0.1


def test_metrics_from_known_probabilities():
    proba = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    metrics = metrics_from_proba(proba, np.array([0, 2, 2, 2]), ["a", "b", "c"])
    assert metrics["top1"] == 0.5
    assert metrics["top5"] == 1.0 and metrics["top5_k"] == 3
    assert metrics["per_class"] == {"a": 1.0, "b": None, "c": 1 / 3}
    assert metrics["mean_class_accuracy"] == pytest.approx(2 / 3)
    assert metrics["confusion"] == [[1, 0, 0], [0, 0, 0], [1, 1, 1]]


def test_sampling_options_are_checked_before_anything_is_written(ramp_store, tmp_path):
    with pytest.raises(ValueError, match="unknown sample mode 'tsn'"):
        train_run(ramp_store, "lstm", tmp_path / "bad", sample_mode="tsn")
    assert not (tmp_path / "bad").exists()


# A 6-step window sees a short stretch of the ramp and learns slower than the whole sequence: after 20 epochs
# its top-1 ranged 0.625-1.0 over seeds 0-9 (still rising), after 40 epochs 1.0 on every seed.
@pytest.mark.parametrize("mode,segments,epochs", [("window", 6, 40), ("all", 8, 20)])
def test_window_and_whole_sequence_modes_learn_order(ramp_store, tmp_path, mode, segments, epochs):
    """Variable-length sequences (12-24 steps) go through padding + mask in training and evaluation."""
    row = train_run(ramp_store, "lstm", tmp_path / mode, sample_mode=mode, segments=segments, eval_clips=3,
                    epochs=epochs, progress=False, train_options=FAST, hidden=16)
    # Set from a 10-seed sweep (seeds 0-9): worst seed 1.0 for both modes here; worst 0.95 (window) on 4 other stores.
    assert row["top1"] >= 0.85, (mode, row["top1"])
    config = json.loads((tmp_path / mode / "config.json").read_text())
    assert config["sampling"] == {"mode": mode, "segments": segments, "eval_clips": 3}


def test_multi_clip_evaluation_averages_clip_probabilities(ramp_store):
    with open_store(ramp_store) as store:
        keys = store.keys()[:10]
        labels = class_indices(store, keys)
        sequences = store.load_all(keys)
    torch.manual_seed(0)
    head = create_head("transformer", 8, 2, d_model=8, heads=2).eval()
    dataset = SequenceDataset(SequenceSource.from_store(ramp_store, keys), labels, segments=4, mode="segments",
                              train=False, num_clips=3)
    per_clip = []
    with torch.no_grad():
        for clip in range(3):
            x = torch.tensor(np.stack([s[segment_indices(len(s), 4, clip=clip, num_clips=3)] for s in sequences]))
            per_clip.append(torch.softmax(head(x, torch.ones(10, 4, dtype=torch.bool)), 1).numpy())
    np.testing.assert_allclose(predict_proba(head, dataset, device="cpu"), np.mean(per_clip, axis=0), atol=1e-6)
    assert not np.allclose(per_clip[0], per_clip[2])


def test_optimiser_groups_fc_multiplier_and_no_decay_on_positions():
    from vidfeat.temporal.training import param_groups

    head = create_head("transformer", 8, 3, d_model=8, heads=2)
    groups = param_groups(head, TrainConfig(lr=0.01, weight_decay=0.1, fc_lr_mult=10.0))
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(head.fc.weight)]["lr"] == pytest.approx(0.1)
    assert by_param[id(head.fc.weight)]["weight_decay"] == 0.1 and by_param[id(head.fc.bias)]["weight_decay"] == 0.0
    assert by_param[id(head.proj.weight)]["lr"] == 0.01
    assert by_param[id(head.pos)]["weight_decay"] == 0.0 and by_param[id(head.cls)]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(head.parameters()))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keeps_the_expectation_and_is_seeded(p):
    from vidfeat.temporal.layers import dropout

    x = torch.ones(400, 1000)
    torch.manual_seed(0)
    dropped = dropout(x, p, training=True)
    assert dropped.shape == x.shape
    assert torch.equal(torch.unique(dropped), torch.tensor([0.0, 65536 / (65536 - round(p * 65536))]))
    assert abs(float((dropped == 0).float().mean()) - p) < 0.005  # 400k draws: sd of the share is under 0.0008
    assert abs(float(dropped.mean()) - 1.0) < 0.02
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, training=True), dropped)
    assert dropout(x, p, training=False) is x
    assert all(dropout(torch.ones(3, 5), q, True).eq(0).all() for q in (1.0, 0.999995))  # rounds to 1: all dropped


def test_self_attention_matches_torch_multihead_attention():
    from vidfeat.temporal.layers import SelfAttention

    torch.manual_seed(3)
    reference = torch.nn.MultiheadAttention(16, 4, dropout=0.1, batch_first=True)
    torch.manual_seed(3)
    ours = SelfAttention(16, 4, dropout=0.1)
    state = reference.state_dict()
    assert state.keys() == ours.state_dict().keys()
    assert all(torch.equal(value, ours.state_dict()[name]) for name, value in state.items())  # same seeded init
    reference.eval(), ours.eval()
    x = torch.randn(5, 7, 16)
    padding = torch.zeros(5, 7, dtype=torch.bool)
    padding[1, 4:], padding[3, 1:] = True, True
    expected = reference(x, x, x, key_padding_mask=padding, need_weights=False)[0]
    torch.testing.assert_close(ours(x, padding), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours(x), reference(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-6)


def test_tcn_whose_taps_all_read_padding_still_runs():
    """kernel 2 dilated by 16 reaches 8 steps either side: on 8 steps every tap of the last level is padding."""
    torch.manual_seed(0)
    head = create_head("tcn", 8, 3, channels=8, levels=5, kernel_size=2)
    logits = head(torch.randn(2, 8, 8), torch.ones(2, 8, dtype=torch.bool))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_to_float32_is_numpys_conversion_bit_for_bit_except_nan_payloads():
    from vidfeat.features.loaders import to_float32

    every_half = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(256, 256)  # subnormals, inf, nan too
    for values in (every_half, every_half[:, ::3], every_half.astype(">f2"), every_half.astype(np.float64)):
        with np.errstate(invalid="ignore"):  # numpy warns casting float64 NaNs
            converted, expected = to_float32(values), values.astype(np.float32)
        assert converted.dtype == np.float32 and converted.shape == values.shape
        numbers = ~np.isnan(expected)  # torch quietens signalling NaNs; NaN stays NaN
        np.testing.assert_array_equal(converted[numbers].view(np.uint32), expected[numbers].view(np.uint32))
        assert np.isnan(converted[~numbers]).all() and (~numbers).any()
    ready = np.ones(3, np.float32)
    assert to_float32(ready) is ready
