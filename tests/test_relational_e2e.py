"""The relational benchmark end to end through the CLI: generate it, extract region features from its
ground-truth boxes with pretrained efficientnet_lite0, and train mean vs the GCN over RoIs."""
import json

import pytest
from click.testing import CliRunner

from vidfeat.features import open_store
from vidfeat.pipelines.cli import main


def cli(*args: str):
    result = CliRunner().invoke(main, [*map(str, args), "--no-progress"])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def relational_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("relational") / "data"
    out = root.parent / "rel.h5"
    cli("extract", "--dataset", "relational", "--data-root", root, "--fps", "4",
        "--rois", f"file:{root}/boxes.csv", "--max-rois", "4", "--out", out)
    return out


def test_gcn_over_extracted_regions_beats_mean(relational_store, tmp_path):
    with open_store(relational_store) as s:
        feats, boxes, mask = s.rois(s.keys()[0])
        assert feats.shape == (8, 4, 1280) and mask.sum(1).tolist() == [2] * 8
    top1 = {}
    for name, extra in (("mean", ()), ("gcn", ("-o", "appearance=false"))):
        cli("train-temporal", "--head", name, *extra, "--features", relational_store,
            "--out", tmp_path / name)
        top1[name] = json.loads((tmp_path / name / "metrics.json").read_text())["top1"]
    assert top1["mean"] <= 0.45  # 6 classes in reversal pairs: bags of frames cannot tell a pair apart
    assert top1["gcn"] >= top1["mean"] + 0.25

