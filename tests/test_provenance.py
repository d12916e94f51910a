"""One rule for "the same features" (vidfeat.features.provenance), used by stores, runs and predict; and the CLI's
split between user errors (one line) and bugs (traceback)."""
import pytest
from click.testing import CliRunner

from vidfeat.extract.backbones import create_backbone
from vidfeat.extract.options import ExtractOptions, input_geometry
from vidfeat.extract.provenance import build_provenance
from vidfeat.extract.video import Sampling
from vidfeat.features import ProvenanceMismatch, StoreError, UserError, check_compatible, provenance_hash
from vidfeat.features.provenance import IDENTITY_FIELDS, REPRESENTATION_FIELDS, differences
from vidfeat.pipelines import stages
from vidfeat.pipelines.cli import main
from vidfeat.pipelines.datasets import DatasetError
from vidfeat.pipelines.scaleout import ClusterError, MissingDependency
from vidfeat.extract.provenance import backbone_for, reproducing_options
from vidfeat.temporal.runs import RunError, check_provenance
from vidfeat.temporal.synthetic import synthetic_provenance, write_random_store

CLASSES = ["a", "b"]


def _provenance(**changes) -> dict:
    return {**synthetic_provenance(4, CLASSES, 1, "float16", "toy"), "preprocessing": {"mean": [0.5, 0.5, 0.5]},
            **changes}


def _run_config(provenance: dict) -> dict:
    return {"features": {"provenance": provenance, "path": "train.h5"}, "classes": CLASSES}


def test_stores_and_runs_compare_by_the_same_canonical_rule():
    stored = _provenance()
    same = _provenance(preprocessing={"mean": (0.5, 0.5, 0.5)}, sampling={"mode": "all"})  # tuple, not list
    check_compatible(stored, same, "x")
    check_provenance(_run_config(stored), same, CLASSES, "store y")
    assert provenance_hash(stored) == provenance_hash(same)
    other = _provenance(preprocessing={"mean": [0.4, 0.5, 0.5]})
    with pytest.raises(ProvenanceMismatch, match=r"refusing to mix them:\n  preprocessing: "):
        check_compatible(stored, other, "x")
    with pytest.raises(ProvenanceMismatch, match=r'store y does not hold .*\n  preprocessing: run \{"mean": \[0.5'):
        check_provenance(_run_config(stored), other, CLASSES, "store y")


def test_runs_ignore_what_does_not_change_what_a_feature_means():
    stored = _provenance()
    copy = _provenance(dtype="float32", dataset={"name": "elsewhere"}, n_folds=3)  # an fp32 copy, other folds
    assert set(differences(stored, copy, IDENTITY_FIELDS)) and not differences(stored, copy, REPRESENTATION_FIELDS)
    check_provenance(_run_config(stored), copy, CLASSES, "store y")
    check_provenance(_run_config(stored), copy, None, "predict's store")  # unlabelled videos: no class list
    with pytest.raises(ProvenanceMismatch, match="classes: run has 2"):
        check_provenance(_run_config(stored), copy, ["a", "c"], "store y")


@pytest.mark.parametrize("rois", [None, "grid:2x2"])
def test_predict_rebuilds_the_preprocessing_the_runner_recorded(rois):
    backbone = create_backbone("resnet18", "none")
    options = ExtractOptions(sampling=Sampling(fps=2), rois=rois, roi_size=160 if rois else None)
    geometry = input_geometry(backbone, options)
    recorded = build_provenance(backbone, options, None, None, geometry, {"name": "toy"}, CLASSES, 1)
    if rois:  # what build_provenance records for regions (the box source itself is not needed here)
        recorded["rois"] = {"source": rois, "max_rois": 5, "feature_dim": 512}
    reproduced = reproducing_options(recorded)
    assert backbone_for(recorded, reproduced).name == "resnet18"
    tampered = {**recorded, "preprocessing": {**recorded["preprocessing"], "resize": 999}}
    with pytest.raises(ProvenanceMismatch, match=r"cannot reproduce .*\n  preprocessing: recorded .*999"):
        backbone_for(tampered, reproducing_options(tampered) if not rois else reproduced)


def test_every_layer_raises_user_errors():
    for kind in (StoreError, ProvenanceMismatch, DatasetError, ClusterError, MissingDependency, RunError):
        assert issubclass(kind, UserError) and issubclass(kind, ValueError)
    assert issubclass(MissingDependency, ImportError)


def test_the_cli_shows_user_errors_in_one_line_and_bugs_with_their_traceback(tmp_path, monkeypatch):
    def broken(store):
        raise ValueError("an internal invariant broke")

    user = CliRunner().invoke(main, ["features", "info", str(tmp_path / "none.h5")])
    assert user.exit_code == 1 and user.output.startswith("Error: no feature store at"), user.output
    store = write_random_store(tmp_path / "s.h5", videos=4, steps=2, dim=4, classes=2)
    monkeypatch.setattr(stages, "describe_store", broken)
    bug = CliRunner().invoke(main, ["features", "info", str(store)])
    assert isinstance(bug.exception, ValueError) and not isinstance(bug.exception, UserError)
    assert "Error:" not in bug.output and bug.exc_info[2] is not None
