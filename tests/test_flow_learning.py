"""Issue 12's known answers for the flow stream, with the order-blind ``mean`` head (TSN consensus):

* random_dots: each ``left`` video is a ``right`` one reversed, so RGB ``mean`` is exactly at chance, while the
  flow store (Farnebäck + HOF/MBH) sees the direction at every step;
* kind_motion: RGB ``mean`` gets only the kind, flow only the direction, the two streams together (late fusion)
  both.

Thresholds come from 5-seed sweeps at these sizes (see the README's Optical flow section for the per-seed table).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.features.store import open_store
from vidfeat.pipelines.cli import main
from vidfeat.pipelines.motion import LIST_CSV, STEPS
from vidfeat.temporal.runs import train_run
from vidfeat.temporal.streams import Streams


@pytest.fixture(scope="module")
def flow_store(motion_rgb_store, tmp_path_factory):
    """``flow_store(task)``: the flow store of exactly the videos of ``motion_rgb_store(task)``."""
    stores = {}

    def store(task: str) -> tuple[Path, Path]:
        if task not in stores:
            rgb = motion_rgb_store(task)
            with open_store(rgb) as opened:
                root = Path(opened.attrs["dataset_root"])
            out = tmp_path_factory.mktemp("flow") / f"{task}_flow.h5"
            result = CliRunner().invoke(main, ["extract", "--dataset", "list", "--list", str(root / LIST_CSV),
                                               "--out", str(out), "--flow", "farneback", "--no-progress"])
            assert result.exit_code == 0, result.output
            stores[task] = rgb, out
        return stores[task]

    return store


def top1(features, out: Path, **options) -> float:
    return train_run(features, "mean", out, segments=STEPS, progress=False, **options)["top1"]


RECIPE = {"epochs": 20, "train_options": {"lr": 1e-2}}


def test_flow_mean_solves_random_dots_where_rgb_mean_is_at_chance(flow_store, tmp_path, single_thread):
    """Seeds 0-4: flow 1.0 on every seed (6 test videos; 0.8 allows one miss); RGB exactly 0.5, by construction
    (tests/test_motion_datasets.py checks it on the same store)."""
    rgb, flow = flow_store("random_dots")
    with open_store(rgb) as a, open_store(flow) as b:
        assert sorted(a.keys()) == sorted(b.keys()) and a.attrs["classes"] == b.attrs["classes"]
        assert all(len(b.features(k)) == len(a.features(k)) - 1 for k in a.keys())
    assert top1(flow, tmp_path / "flow", **RECIPE) >= 0.8


def _kind_and_direction(run: Path) -> tuple[float, float]:
    confusion = np.array(json.loads((run / "metrics.json").read_text())["confusion"])
    # classes: cyclist_left, cyclist_right, face_left, face_right
    kind = (confusion[:2, :2].sum() + confusion[2:, 2:].sum()) / confusion.sum()
    direction = (confusion[0::2, 0::2].sum() + confusion[1::2, 1::2].sum()) / confusion.sum()
    return float(kind), float(direction)


def test_two_streams_get_kind_and_direction_where_each_stream_gets_one(flow_store, tmp_path, single_thread):
    """Seeds 0-4 (20 test videos): RGB 0.5 (kind 1.0, direction 0.5), flow 0.5-0.55 (direction 1.0), late fusion
    1.0 on every seed, 0.45-0.5 above the better stream."""
    rgb, flow = flow_store("kind_motion")
    scores = {name: top1(features, tmp_path / name, **RECIPE)
              for name, features in (("rgb", rgb), ("flow", flow), ("both", Streams([rgb, flow])))}
    rgb_kind, rgb_direction = _kind_and_direction(tmp_path / "rgb")
    _, flow_direction = _kind_and_direction(tmp_path / "flow")
    assert rgb_direction == 0.5 and rgb_kind >= 0.8  # a reversed pair holds the same bag of frames
    assert flow_direction >= 0.8
    assert scores["both"] >= 0.85 and scores["both"] - max(scores["rgb"], scores["flow"]) >= 0.25
