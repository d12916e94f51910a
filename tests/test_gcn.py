"""GCN over regions and the relational benchmark.

Graph construction is checked against hand-computed values, the head's masking and ablation flags by the
properties they promise (padding and slot order never matter; without the spatio-temporal graph the head is
blind to time order), and the whole region data path (store -> RegionSource -> SequenceDataset -> collate ->
head) by training on cached region features of the relational benchmark. The benchmark's videos are real
ffmpeg encodes, decoded back with the project's reader.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vidfeat.extract.video import VideoReader
from vidfeat.features import SequenceSource, VideoRecord, open_store, write_store
from vidfeat.pipelines import relational
from vidfeat.pipelines.cli import main
from vidfeat.pipelines.datasets import DatasetError, load_dataset
from vidfeat.pipelines.sample import encode_frames
from vidfeat.temporal.data import RegionSource, SequenceDataset, collate
from vidfeat.temporal.gcn import (
    GCNHead, box_iou, relation_graph, relative_geometry, similarity_graph, step_positions, temporal_graphs,
)
from vidfeat.temporal.heads import create_head, uses_regions
from vidfeat.temporal.runs import evaluate_run, load_run, predict_sequences, train_run
from vidfeat.temporal.synthetic import synthetic_provenance, write_ramp_store


pytestmark = pytest.mark.usefixtures("single_thread")


def small_head(**options) -> GCNHead:
    torch.manual_seed(0)
    return create_head("gcn", 6, 3, roi_dim=5, hidden=16, **options).eval()


def random_video(t: int, r: int, seed: int) -> dict:
    """One video's step features and regions (some region slots empty), as SequenceDataset items carry them."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(t, r, 2, generator=g) * 0.6
    boxes = torch.cat([corner, corner + 0.1 + 0.3 * torch.rand(t, r, 2, generator=g)], dim=-1)
    roi_mask = torch.rand(t, r, generator=g) > 0.3
    roi_mask[0, 0] = True
    return {
        "x": torch.randn(t, 6, generator=g),
        "rois": torch.randn(t, r, 5, generator=g),
        "boxes": boxes,
        "roi_mask": roi_mask,
        "y": 0,
    }


def run_alone(head: GCNHead, video: dict) -> torch.Tensor:
    return head(
        video["x"][None], torch.ones(1, len(video["x"]), dtype=torch.bool),
        rois=video["rois"][None], boxes=video["boxes"][None], roi_mask=video["roi_mask"][None],
    )[0]


# Graph construction -----------------------------------------------------------------------------------


def test_iou_graphs_on_a_hand_made_example():
    # Step 0: a 4x4 box and a far away one. Step 1: two boxes that each overlap the first box by a third.
    # Step 2: one real box (identical to the first box of step 1) and a masked slot holding garbage.
    boxes = torch.tensor([[
        [[0, 0, 4, 4], [10, 10, 12, 12]],
        [[2, 0, 6, 4], [0, 2, 4, 6]],
        [[2, 0, 6, 4], [1, 1, 3, 3]],
    ]], dtype=torch.float32)
    valid = torch.tensor([[[True, True], [True, True], [True, False]]])
    iou = box_iou(boxes[0, 0], boxes[0, 1])
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 1 / 3], [0.0, 0.0]]))
    assert box_iou(boxes[0, 1], boxes[0, 2])[1, 0].item() == pytest.approx(4 / 28)  # 2x2 overlap of two 4x4

    forward, backward = temporal_graphs(boxes, valid)
    assert forward.shape == backward.shape == (1, 3, 2, 2)
    # Forward t -> t+1, rows normalised; a box with no overlapping successor sends nothing.
    torch.testing.assert_close(forward[0, 0], torch.tensor([[0.5, 0.5], [0.0, 0.0]]))
    # The masked slot of step 2 takes no part: its garbage box would overlap, but it is not a node.
    torch.testing.assert_close(forward[0, 1], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(forward[0, 2], torch.zeros(2, 2))  # the last step has no future
    # Backward t -> t-1 is normalised over the previous step's boxes, so it is not the forward transpose.
    torch.testing.assert_close(backward[0, 0], torch.zeros(2, 2))
    torch.testing.assert_close(backward[0, 1], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    torch.testing.assert_close(backward[0, 2], torch.tensor([[1 / (1 + 1 / 7), (1 / 7) / (1 + 1 / 7)], [0.0, 0.0]]))
    # Empty (zero-area) boxes have IoU 0, not NaN.
    assert box_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_edge_geometry_points_from_a_box_to_its_neighbour():
    a = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.6, 0.7]])
    b = torch.tensor([[0.1, 0.0, 0.3, 0.2]])
    edges = relative_geometry(a, b)  # [2, 1, 5]: from each box of a to the box of b
    torch.testing.assert_close(edges[0, 0], torch.tensor([0.1, 0.0, 0.0, 0.0, 0.1]) * 4)
    torch.testing.assert_close(edges[1, 0, :4], torch.tensor([-0.35, -0.5, 0.1, 0.0]) * 4)
    torch.testing.assert_close(edges[1, 0, 4], torch.tensor(0.35 ** 2 + 0.5 ** 2).sqrt() * 4)
    torch.testing.assert_close(relative_geometry(b, a)[0, :, :4], -edges[:, 0, :4])  # the way back: negated shift
    torch.testing.assert_close(relative_geometry(b, a)[0, :, 4], edges[:, 0, 4])  # ... but the same distance
    # The relation graph joins each region to the *other* valid regions of its step, evenly.
    valid = torch.tensor([[[True, True, False, True]]])
    torch.testing.assert_close(relation_graph(valid)[0, 0], torch.tensor(
        [[0, 0.5, 0, 0.5], [0.5, 0, 0, 0.5], [0, 0, 0, 0], [0.5, 0.5, 0, 0]]))
    # Step positions run from 0 at the first step to 1 at the last valid one, whatever the padding.
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    codes = step_positions(mask, 1)  # [sin(pi p), cos(pi p)]
    torch.testing.assert_close(codes[0, :3, 1], torch.tensor([1.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(codes[1, [0, 2, 4], 1], torch.tensor([1.0, 0.0, -1.0]), atol=1e-6, rtol=0)


def test_similarity_graph_is_a_softmax_over_valid_nodes_only():
    torch.manual_seed(0)
    theta, phi = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    valid = torch.tensor([[True, False, True, True, False]])
    graph = similarity_graph(theta, phi, valid)[0]
    keep = valid[0].nonzero().flatten()
    expected = torch.softmax(theta[0, keep] @ phi[0, keep].T / 2.0, dim=-1)  # sqrt(d) = 2
    torch.testing.assert_close(graph[keep][:, keep], expected)
    assert graph[~valid[0]].abs().sum() == 0 and graph[:, ~valid[0]].abs().sum() == 0
    torch.testing.assert_close(graph[keep].sum(-1), torch.ones(3))
    # A video without any valid node gets an all-zero graph instead of NaNs.
    assert similarity_graph(theta, phi, torch.zeros(1, 5, dtype=torch.bool)).abs().sum() == 0


# The head ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"similarity": False}, {"spatiotemporal": False}, {"global_branch": False}, {"appearance": False},
     {"box_embedding": False}, {"centred_boxes": False, "layers": 3}, {"relation": False, "edge_geometry": False},
     {"time_embedding": False, "similarity": False}],
)
def test_padding_and_region_slot_order_never_change_logits(options):
    head = small_head(**options)
    videos = [random_video(t, r, seed) for seed, (t, r) in enumerate([(5, 3), (2, 4), (7, 1), (1, 2)])]
    slots = max(len(v["roi_mask"][0]) for v in videos)

    def widen(v: dict) -> dict:
        # Extra region slots full of garbage (NaN features, random boxes), marked invalid.
        t, r = v["roi_mask"].shape
        extra = slots - r + 2
        return {
            **v,
            "rois": torch.cat([v["rois"], torch.full((t, extra, 5), float("nan"))], 1),
            "boxes": torch.cat([v["boxes"], torch.rand(t, extra, 4)], 1),
            "roi_mask": torch.cat([v["roi_mask"], torch.zeros(t, extra, dtype=torch.bool)], 1),
        }

    batch = collate([widen(v) for v in videos])
    assert batch.extras["roi_mask"].shape == (4, 7, slots + 2) and not batch.extras["roi_mask"][1, 2:].any()
    with torch.no_grad():
        together = head(batch.x, batch.mask, **batch.extras)
        for i, video in enumerate(videos):
            alone = run_alone(head, video)
            torch.testing.assert_close(together[i], alone, atol=1e-5, rtol=1e-5)
            # Padded steps filled with garbage instead of zeros must not matter either.
            t = len(video["x"])
            garbage = {k: torch.cat([v, v[:1].clone().fill_(3)]) for k, v in widen(video).items() if k != "y"}
            garbage["roi_mask"][-1] = True  # even "valid" regions of a padded step are ignored
            padded = head(garbage["x"][None], (torch.arange(t + 1) < t)[None], rois=garbage["rois"][None],
                          boxes=garbage["boxes"][None], roi_mask=garbage["roi_mask"][None])[0]
            torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
            # Regions are a set per step: the slot order (e.g. detector score order) is irrelevant.
            order = torch.randperm(video["roi_mask"].shape[1], generator=torch.Generator().manual_seed(i))
            shuffled = {**video, **{k: video[k][:, order] for k in ("rois", "boxes", "roi_mask")}}
            torch.testing.assert_close(run_alone(head, shuffled), alone, atol=1e-5, rtol=1e-5)
    assert together.shape == (4, 3) and torch.isfinite(together).all()


def reverse(video: dict) -> dict:
    return {k: (v.flip(0) if isinstance(v, torch.Tensor) else v) for k, v in video.items()}


def test_only_the_spatiotemporal_graph_and_the_time_embedding_know_which_way_time_runs():
    video = random_video(6, 3, seed=7)
    video["roi_mask"][:] = True
    with torch.no_grad():
        blind = {"spatiotemporal": False, "time_embedding": False}
        for options in (blind, {**blind, "global_branch": False}, {**blind, "relation": False}):
            head = small_head(**options)
            torch.testing.assert_close(run_alone(head, reverse(video)), run_alone(head, video), atol=1e-5, rtol=1e-5)
        for options in ({}, {"similarity": False}, {"appearance": False}, {"box_embedding": False},
                        {"spatiotemporal": False}, {"time_embedding": False}, {"time_embedding": False,
                                                                              "edge_geometry": False}):
            head = small_head(**options)
            assert not torch.allclose(run_alone(head, reverse(video)), run_alone(head, video), atol=1e-4)


def test_ablation_flags_remove_their_parts():
    names = lambda head: {part for name, _ in head.named_parameters() for part in name.split(".")}  # noqa: E731
    full = small_head()
    parts = {"theta", "phi", "w_sim", "w_forward", "w_backward", "w_relation", "reduce", "geometry", "time", "edges"}
    assert parts <= names(full)
    assert {"u_forward", "u_backward", "u_relation"} <= names(full)
    assert full.fc.in_features == 16 + 6  # node mean + global mean
    assert full.reduce[0].out_features == 32  # the appearance bottleneck
    assert not {"theta", "phi", "w_sim"} & names(small_head(similarity=False))
    assert not {"w_forward", "w_backward", "u_forward", "u_backward"} & names(small_head(spatiotemporal=False))
    assert not {"w_relation", "u_relation"} & names(small_head(relation=False))
    assert not {"edges", "u_forward", "u_relation"} & names(small_head(edge_geometry=False))
    assert "time" not in names(small_head(time_embedding=False))
    assert "reduce" not in names(small_head(appearance=False))
    assert "geometry" not in names(small_head(box_embedding=False))
    assert small_head(global_branch=False).fc.in_features == 16
    assert len(small_head(layers=3).layers) == 3
    with pytest.raises(ValueError, match="at least one graph"):
        small_head(similarity=False, spatiotemporal=False, relation=False)
    with pytest.raises(ValueError, match="drop_appearance is a probability"):
        small_head(drop_appearance=1.0)
    with pytest.raises(ValueError, match="appearance=true .* or box_embedding=true"):
        small_head(appearance=False, box_embedding=False)


def test_missing_or_misshapen_regions_are_explained():
    head = small_head()
    video = random_video(4, 2, seed=1)
    x, mask = video["x"][None], torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"needs region features.*vidfeat extract \.\.\. --rois"):
        head(x, mask)
    with pytest.raises(ValueError, match=r"rois must be \[B, T, R, 5\]"):
        head(x, mask, rois=torch.zeros(1, 4, 2, 7), boxes=video["boxes"][None], roi_mask=video["roi_mask"][None])
    with pytest.raises(ValueError, match="boxes must be"):
        head(x, mask, rois=video["rois"][None], boxes=torch.zeros(1, 4, 3, 4), roi_mask=video["roi_mask"][None])
    with pytest.raises(ValueError, match="roi_mask must be bool"):
        head(x, mask, rois=video["rois"][None], boxes=video["boxes"][None], roi_mask=video["roi_mask"][None].float())
    assert uses_regions("gcn") and not uses_regions("lstm")
    assert create_head("gcn", 12, 2).roi_dim == 12  # RoIs pooled from the same map as the frame features


# Region data path -------------------------------------------------------------------------------------


def region_provenance(dim: int, roi_dim: int, slots: int, classes: list[str]) -> dict:
    provenance = synthetic_provenance(dim, classes, 1, "float32", "relational")
    provenance["rois"] = {"source": "file:boxes.csv", "max_rois": slots, "feature_dim": roi_dim}
    return provenance


def test_datasets_carry_regions_at_the_sampled_steps(tmp_path):
    """Rows encode their own step index, so every field of an item can be checked against the sampled steps."""
    records = []
    for v, length in enumerate([5, 11, 3]):
        steps = np.arange(length, dtype=np.float32)
        records.append(VideoRecord(
            key=f"v{v}", features=np.stack([steps, np.full(length, v)], 1).astype(np.float32),
            timestamps=steps.astype(np.float64), frame_indices=np.arange(length), label="a", splits=("train",),
            roi_features=np.broadcast_to(steps[:, None, None], (length, 3, 2)).astype(np.float32),
            boxes=np.broadcast_to((steps / 20)[:, None, None], (length, 3, 4)).astype(np.float32),
            roi_mask=np.tile([True, True, False], (length, 1)),
        ))
    path = tmp_path / "regions.h5"
    write_store(path, records, region_provenance(2, 2, 3, ["a"]))
    keys = ["v1", "v0", "v2"]
    for in_memory in (True, False):
        source = SequenceSource.from_store(path, keys, in_memory=in_memory)
        regions = RegionSource.from_store(path, keys, in_memory=in_memory)
        dataset = SequenceDataset(source, [0, 0, 0], segments=4, mode="segments", train=True, seed=3, regions=regions)
        for index in range(3):
            item = dataset[index]
            steps = item["x"][:, 0]
            assert item["rois"].shape == (4, 3, 2) and item["roi_mask"].dtype == torch.bool
            torch.testing.assert_close(item["rois"][:, 0, 0], steps)
            torch.testing.assert_close(item["boxes"][:, 1, 3], steps / 20)
            assert item["roi_mask"][:, :2].all() and not item["roi_mask"][:, 2].any()
        window = SequenceDataset(source, [0, 0, 0], segments=8, mode="window", train=False, regions=regions)
        batch = collate([window[i] for i in range(3)])
        assert batch.extras["rois"].shape == (3, 8, 3, 2) and batch.mask.sum(1).tolist() == [8, 5, 3]
        assert not batch.extras["roi_mask"][2, 3:].any()  # padded steps hold no regions
    with pytest.raises(ValueError, match="same videos, in the same order"):
        SequenceDataset(source, [0, 0, 0], segments=4, mode="segments", train=False, regions=regions.subset(keys[::-1]))


def test_a_store_without_regions_is_refused_naming_the_rois_option(tmp_path):
    store = write_ramp_store(tmp_path / "ramp.h5", videos=16, dim=4)
    with pytest.raises(ValueError, match=r"has none; extract one with `vidfeat extract \.\.\. --rois SOURCE`"):
        train_run(store, "gcn", tmp_path / "run", epochs=1, progress=False)
    result = CliRunner().invoke(main, ["train-temporal", "--head", "gcn", "--features", str(store),
                                       "--out", str(tmp_path / "cli-run"), "--no-progress"])
    assert result.exit_code == 1 and "--rois SOURCE" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "cli-run").exists()


# Learning relations -----------------------------------------------------------------------------------

SLOTS = 3


def relational_record(
    benchmark: relational.Benchmark, cls: str, index: int, rng: np.random.Generator
) -> VideoRecord:
    """Cached-RoI-style rows of one benchmark video, sampled at 4 fps as `make demo-relational` extracts them,
    built from its ground-truth boxes.

    Region features say what each object looks like (its shape as a one-hot and its colour), with noise as between
    crops of real frames, and nothing about where it is; frame features hold the mean box centre of each frame plus
    noise. Regions come in a random slot order with an empty slot, as a detector would give them.
    """
    scene = benchmark.scene(cls, index)
    boxes = (scene.boxes()[::2] / relational.SIZE).astype(np.float32)
    steps = len(boxes)
    looks = np.zeros((2, 6), np.float32)
    looks[[0, 1], [relational.SHAPES.index(s) for s in scene.shapes]] = 1.0
    looks[:, 3:] = scene.colours
    rois = np.zeros((steps, SLOTS, 6), np.float32)
    slot_boxes = np.zeros((steps, SLOTS, 4), np.float32)
    roi_mask = np.zeros((steps, SLOTS), bool)
    for t in range(steps):
        slots = rng.permutation(SLOTS)[:2]
        rois[t, slots] = looks + 0.3 * rng.normal(size=looks.shape)
        slot_boxes[t, slots], roi_mask[t, slots] = boxes[t], True
    centres = (boxes[..., :2] + boxes[..., 2:]).mean(1) / 2
    features = np.concatenate([centres, rng.normal(size=6) + 0.1 * rng.normal(size=(steps, 6))], 1)
    return VideoRecord(
        key=f"{cls}/{cls}_{index:02d}", features=features.astype(np.float32), timestamps=np.arange(steps) / 4.0,
        frame_indices=np.arange(0, 2 * steps, 2), label=cls, splits=(benchmark.split_of_index[index],),
        roi_features=rois, boxes=slot_boxes, roi_mask=roi_mask,
    )


def write_relational_store(benchmark: relational.Benchmark, path: Path) -> Path:
    rng = np.random.default_rng(0)
    records = [relational_record(benchmark, c, i, rng) for c in benchmark.classes
               for i in range(benchmark.videos_per_class)]
    write_store(path, records, region_provenance(8, 6, SLOTS, benchmark.classes))
    return path


@pytest.fixture(scope="module")
def relational_stores(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("relational")
    return {name: write_relational_store(b, folder / f"{name}.h5") for name, b in relational.BENCHMARKS.items()}


# Box-only: the nodes see boxes and nothing else (no RoI features, no frame features).
RELATIONAL_HEADS = {
    "mean": ("mean", {}), "gcn": ("gcn", {}), "gcn_boxes": ("gcn", {"appearance": False, "global_branch": False}),
}


def train_relational(store: Path, out: Path, seed: int) -> dict[str, float]:
    """Test top-1 of mean, the default gcn and the box-only gcn, each with its default training recipe."""
    return {
        name: train_run(store, head, out / name, seed=seed, progress=False, **options)["top1"]
        for name, (head, options) in RELATIONAL_HEADS.items()
    }


def test_gcn_learns_relations_from_geometry_and_who_does_what_from_appearance(relational_stores, tmp_path):
    """Thresholds from a sweep of seeds 0-4 (train_relational with each seed): relational: mean 0.11-0.19,
    gcn 0.94-1.0, box-only 0.94-1.0, gcn minus box-only at worst -0.06; relational_roles: mean 0.21-0.35, gcn 1.0
    on every seed, box-only 0.5 on every seed."""
    geometry = train_relational(relational_stores["relational"], tmp_path / "geometry", seed=0)
    roles = train_relational(relational_stores["relational_roles"], tmp_path / "roles", seed=0)
    # Each class has a time-reversed twin with the same frames, so an order-blind head is at best right about the
    # pair: 50% (and 25% for chance in relational_roles).
    assert geometry["mean"] <= 0.5 and roles["mean"] <= 0.5, (geometry, roles)
    # Geometry decides: the gcn learns it with appearance on, not far from its box-only ablation.
    assert geometry["gcn"] >= 0.8 and geometry["gcn"] >= geometry["gcn_boxes"] - 0.2, geometry
    # Appearance decides who moves: boxes alone are identical for both kinds, so box-only is at most 50%.
    assert roles["gcn_boxes"] <= 0.55 and roles["gcn"] >= 0.8, roles
    store, run = relational_stores["relational"], tmp_path / "geometry" / "gcn"

    # The run records the region feature size, re-scores identically and predicts from regions.
    model, config = load_run(run)
    assert config["head_options"]["roi_dim"] == 6 and config["features"]["provenance"]["rois"]["max_rois"] == SLOTS
    assert config["training"]["lr"] == GCNHead.train_defaults["lr"]  # the head's own recipe, recorded
    assert evaluate_run(run)["top1"] == geometry["gcn"]
    with open_store(store) as cached:
        keys = [k for k in cached.keys() if cached.split(k) == "test"]
        proba = predict_sequences(model, config, [cached.features(k) for k in keys], [cached.rois(k) for k in keys])
        truth = [config["classes"].index(cached.label(k)) for k in keys]
    assert np.mean(proba.argmax(1) == truth) == pytest.approx(geometry["gcn"])
    with pytest.raises(ValueError, match="needs the region features"):
        predict_sequences(model, config, [np.zeros((4, 8), np.float32)])
    with pytest.raises(ValueError, match="roi_dim=3 was given, but the store records roi_dim=6"):
        train_run(store, "gcn", tmp_path / "bad", epochs=1, progress=False, roi_dim=3)
    with pytest.raises(ValueError, match="mixup"):
        train_run(store, "gcn", tmp_path / "bad", epochs=1, progress=False, train_options={"mixup": 0.2})


# The relational benchmark -----------------------------------------------------------------------------


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def test_scenes_follow_their_relation_and_pairs_are_time_reversals():
    for index in range(40):
        for forward, backward in relational.GEOMETRY.pairs:
            a, b = relational.GEOMETRY.scene(forward, index), relational.GEOMETRY.scene(backward, index)
            np.testing.assert_array_equal(b.centres, a.centres[::-1])
            np.testing.assert_array_equal(b.boxes(), a.boxes()[::-1])
            boxes = a.boxes()
            assert boxes.min() >= 0 and boxes.max() <= relational.SIZE
            sides = np.broadcast_to(2 * a.radii[:, None], (relational.N_FRAMES, 2, 2))
            np.testing.assert_allclose(boxes[..., 2:] - boxes[..., :2], sides)
        gap = lambda s: np.linalg.norm(s.centres[:, 0] - s.centres[:, 1], axis=-1)  # noqa: E731
        approach = relational.GEOMETRY.scene("approach", index)
        assert np.all(np.diff(gap(approach)) < 1e-9) and gap(approach)[0] > gap(approach)[-1] + 20
        # pass_left: the object that travels (the longer path) has the other on its right-hand side (image y
        # points down, so "right" is a positive cross product), and that side never changes while it passes.
        passing = relational.GEOMETRY.scene("pass_left", index)
        travel = np.linalg.norm(passing.centres[-1] - passing.centres[0], axis=-1)
        mover = int(np.argmax(travel))
        heading = passing.centres[-1, mover] - passing.centres[0, mover]
        assert np.all(cross(heading, passing.centres[:, 1 - mover] - passing.centres[:, mover]) > 0)
        # orbit_cw: the line between the objects turns clockwise on screen (positive angle with y down).
        orbit = relational.GEOMETRY.scene("orbit_cw", index)
        line = orbit.centres[:, 1] - orbit.centres[:, 0]
        assert np.all(cross(line[:-1], line[1:]) > 0) and gap(orbit).std() < 1e-6


def test_rendered_boxes_are_where_the_objects_are_drawn():
    for cls in relational.GEOMETRY.classes:
        video = relational.GEOMETRY.render(cls, 3)
        assert video.frames.shape == (16, 128, 128, 3) and video.frames.dtype == np.uint8
        for t in range(0, 16, 5):
            for obj in range(2):
                ys, xs = np.nonzero(video.masks[t, obj])
                drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                assert np.abs(drawn - video.boxes[t, obj]).max() <= 1.0, (cls, t, obj)
        # Object 1 is drawn last, so never hidden: inside its anti-aliased rim it is one solid colour.
        mask = video.masks[:, 1]
        inner = mask[:, 1:-1, 1:-1] & mask[:, :-2, 1:-1] & mask[:, 2:, 1:-1] & mask[:, 1:-1, :-2] & mask[:, 1:-1, 2:]
        colours = video.frames[:, 1:-1, 1:-1][inner]
        assert np.abs(colours.astype(int) - np.median(colours, axis=0)).max() <= 1
    forward, backward = relational.GEOMETRY.render("orbit_cw", 5), relational.GEOMETRY.render("orbit_ccw", 5)
    np.testing.assert_array_equal(backward.frames, forward.frames[::-1])


def test_roles_pairs_share_their_boxes_and_differ_only_in_which_kind_moves():
    roles = relational.ROLES
    assert roles.classes == ["ball_approaches_block", "ball_leaves_block", "block_approaches_ball", "block_leaves_ball"]
    for index in range(40):
        ball, block = roles.scene("ball_approaches_block", index), roles.scene("block_approaches_ball", index)
        # Boxes alone cannot tell who moves: the two kind assignments have the very same boxes.
        np.testing.assert_array_equal(ball.boxes(), block.boxes())
        np.testing.assert_array_equal(roles.scene("ball_leaves_block", index).centres, ball.centres[::-1])
        travel = np.linalg.norm(ball.centres[-1] - ball.centres[0], axis=-1)
        mover = int(np.argmax(travel))
        assert travel[mover] > 3 * travel[1 - mover]  # one object does the moving, the other barely drifts
        gap = np.linalg.norm(ball.centres[:, 0] - ball.centres[:, 1], axis=-1)
        assert np.all(np.diff(gap) < 1e-9) and gap[0] > gap[-1] + 20
        assert (ball.shapes[mover], block.shapes[mover]) == ("disk", "square")
        assert set(ball.shapes) == {"disk", "square"} and sorted(ball.colours.tolist()) == sorted(block.colours.tolist())
        warm, cool = ball.colours[ball.shapes.index("disk")], ball.colours[ball.shapes.index("square")]
        assert warm[0] >= 0.85 and warm[2] <= 0.15 and cool[2] >= 0.85 and cool[0] <= 0.15
    # Rendered: the same backdrop, and the kind-swapped video differs only inside the objects.
    a, b = roles.render("ball_approaches_block", 3), roles.render("block_approaches_ball", 3)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    yy, xx = np.mgrid[0:relational.SIZE, 0:relational.SIZE] + 0.5
    box = a.boxes[:, :, None, None, :]
    inside = (xx >= box[..., 0] - 1) & (xx <= box[..., 2] + 1) & (yy >= box[..., 1] - 1) & (yy <= box[..., 3] + 1)
    outside = ~inside.any(1)
    assert np.array_equal(a.frames[outside], b.frames[outside]) and not np.array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(roles.render("block_leaves_ball", 3).frames, b.frames[::-1])


@pytest.fixture(scope="module")
def relational_root(tmp_path_factory) -> Path:
    return relational.GEOMETRY.ensure(tmp_path_factory.mktemp("data") / "relational")


def test_generated_dataset_layout_csvs_and_determinism(relational_root, tmp_path):
    root = relational_root
    dataset = load_dataset("list", root, list_file=root / relational.LIST_CSV)
    assert dataset.classes == relational.GEOMETRY.classes and len(dataset.items) == 6 * relational.GEOMETRY.videos_per_class
    splits = [item.splits[0] for item in dataset.items if item.label == "pass_right"]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (20, 6, 6)

    with open(root / relational.BOXES_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["video", "frame", "x1", "y1", "x2", "y2", "score", "track"]
    assert len(rows) == len(dataset.items) * relational.N_FRAMES * 2
    assert {r["video"] for r in rows} == {item.key for item in dataset.items}
    key = "pass_left/pass_left_07"
    video = relational.GEOMETRY.render("pass_left", 7)
    mine = [r for r in rows if r["video"] == key]
    for r in mine:
        expected = video.boxes[int(r["frame"]), int(r["track"])]
        np.testing.assert_allclose([float(r[c]) for c in ("x1", "y1", "x2", "y2")], expected, atol=0.006)
    assert sorted({int(r["frame"]) for r in mine}) == list(range(relational.N_FRAMES))

    # The file holds the drawn frames in order (frame i of the CSV is decoded frame i), nearly losslessly.
    decoded = np.stack([frame.rgb for frame in VideoReader(root / f"{key}.mp4")])
    assert decoded.shape == video.frames.shape
    assert np.abs(decoded.astype(int) - video.frames).mean() < 2.0
    # Same frames -> same bytes: the generator is deterministic.
    encode_frames(video.frames, tmp_path / "again.mp4", fps=relational.FPS)
    assert (tmp_path / "again.mp4").read_bytes() == (root / f"{key}.mp4").read_bytes()


def test_generation_is_idempotent_and_never_overwrites_foreign_folders(relational_root, tmp_path):
    stamp = (relational_root / relational.BOXES_CSV).stat().st_mtime_ns
    assert relational.GEOMETRY.ensure(relational_root) == relational_root
    assert (relational_root / relational.BOXES_CSV).stat().st_mtime_ns == stamp
    assert not list(relational_root.parent.glob(".relational.tmp-*"))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty and holds no vidfeat relational dataset"):
        relational.GEOMETRY.ensure(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
