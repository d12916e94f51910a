"""The relational benchmarks end to end through the CLI: generate them, extract region features from their
ground-truth boxes with pretrained efficientnet_lite0, and train mean, the default GCN over RoIs and its box-only
ablation, as `make demo-relational` does.

Thresholds come from a 5-seed sweep of exactly these runs (`--seed 0..4`; the closing note of issue 8 and the
README's GCN table hold the per-seed figures), each with a clear margin below the worst seed.
"""
import json

import pytest
from click.testing import CliRunner

from vidfeat.features import open_store
from vidfeat.pipelines.cli import main

BOX_ONLY = ("-o", "appearance=false", "-o", "global_branch=false")


def cli(*args: str):
    result = CliRunner().invoke(main, [*map(str, args), "--no-progress"])
    assert result.exit_code == 0, result.output
    return result


def extract(tmp_path_factory, dataset: str):
    root = tmp_path_factory.mktemp(dataset) / "data"
    out = root.parent / f"{dataset}.h5"
    cli("extract", "--dataset", dataset, "--data-root", root, "--fps", "4",
        "--rois", f"file:{root}/boxes.csv", "--max-rois", "4", "--out", out)
    return out


def train(store, tmp_path, runs: dict[str, tuple[str, ...]]) -> dict[str, float]:
    top1 = {}
    for name, args in runs.items():
        cli("train-temporal", *args, "--features", store, "--out", tmp_path / name)
        top1[name] = json.loads((tmp_path / name / "metrics.json").read_text())["top1"]
    return top1


@pytest.fixture(scope="module")
def geometry_store(tmp_path_factory):
    return extract(tmp_path_factory, "relational")


@pytest.fixture(scope="module")
def roles_store(tmp_path_factory):
    return extract(tmp_path_factory, "relational_roles")


def test_gcn_learns_relations_when_appearance_is_a_distractor(geometry_store, tmp_path):
    with open_store(geometry_store) as s:
        feats, boxes, mask = s.rois(s.keys()[0])
        assert feats.shape == (8, 4, 1280) and mask.sum(1).tolist() == [2] * 8
    top1 = train(geometry_store, tmp_path, {"mean": ("--head", "mean"), "gcn": ("--head", "gcn")})
    # 6 classes in reversal pairs: bags of frames cannot tell a pair apart. Sweep: mean 0.17-0.28.
    assert top1["mean"] <= 0.45, top1
    # Sweep: default gcn 0.97-1.0.
    assert top1["gcn"] >= 0.8, top1


def test_gcn_ties_who_moves_to_what_it_is(roles_store, tmp_path):
    top1 = train(roles_store, tmp_path, {
        "mean": ("--head", "mean"), "gcn": ("--head", "gcn"), "gcn_boxes": ("--head", "gcn", *BOX_ONLY),
    })
    # Reversal twins (approaches/leaves) defeat a bag of frames; identical boxes for both kinds defeat box-only:
    # each is right about half of the test set at best. Sweep: mean 0.35-0.44, box-only 0.5 on every seed.
    assert top1["mean"] <= 0.55 and top1["gcn_boxes"] <= 0.55, top1
    # Sweep: default gcn 1.0 on every seed.
    assert top1["gcn"] >= 0.85, top1
