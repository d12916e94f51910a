"""Spatial grids (extract --spatial) and the heads over them (timesformer, eco): store, extraction, loaders, the
properties the heads promise, and predict on runs of both."""
import csv
import hashlib
import json
from functools import partial

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from videogen import make_video
from vidfeat.extract.backbones import create_backbone
from vidfeat.extract.device import Model, ModelSettings
from vidfeat.extract.spatial import SpatialGrid
from vidfeat.extract.video import Geometry, Sampling, VideoReader
from vidfeat.extract.windows import Windowing, window_rows
from vidfeat.features import ProvenanceMismatch, StoreError, StoreWriter, VideoRecord, open_store, write_store
from vidfeat.features import loaders, provenance_hash
from vidfeat.features.provenance import IDENTITY_FIELDS, LATER_FIELDS
from vidfeat.pipelines.cli import main
from vidfeat.temporal.data import SequenceDataset, SpatialSource, collate
from vidfeat.temporal.heads import create_head
from vidfeat.temporal.synthetic import synthetic_provenance

tiny = partial(make_video, size=(64, 48), fps=5, seconds=1)


def run_cli(*args):
    return CliRunner().invoke(main, [*map(str, args), "--no-progress"])


def spatial_provenance(dim: int, grid: int, spatial_dim: int, classes: list[str]) -> dict:
    layer = {"grid": grid, "cells": grid * grid, "layer": "last", "feature_dim": spatial_dim, "pooling": "avg"}
    return {**synthetic_provenance(dim, classes, 1, "float16", "grid"), "spatial": layer}


def grid_record(key: str, steps: int, dim: int, cells: int, spatial_dim: int, seed: int) -> VideoRecord:
    rng = np.random.default_rng(seed)
    return VideoRecord(
        key=key, features=rng.normal(size=(steps, dim)).astype(np.float16), timestamps=np.arange(steps) / 4.0,
        frame_indices=np.arange(steps), label="a", splits=("train",),
        spatial=rng.normal(size=(steps, cells, spatial_dim)).astype(np.float16),
    )


# The store ---------------------------------------------------------------------------------------------


def test_grids_round_trip_and_mixing_grids_is_refused(tmp_path):
    path = tmp_path / "g.h5"
    records = [grid_record("v1", 5, 8, 4, 6, 0), grid_record("v2", 3, 8, 4, 6, 1)]
    write_store(path, records, spatial_provenance(8, 2, 6, ["a"]))
    with open_store(path) as store:
        for record in records:
            np.testing.assert_array_equal(store.spatial(record.key), record.spatial)
            np.testing.assert_array_equal(store.record(record.key).spatial, record.spatial)
        assert store.spatial("v1").shape == (5, 4, 6) and store.attrs["spatial"]["grid"] == 2
        # a row: 8 fp16 features + 4 x 6 fp16 cells + timestamp + frame index
        assert store.row_nbytes() == {"features": 16, "spatial": 48, "timestamps": 8, "frame_indices": 8}
    with pytest.raises(ProvenanceMismatch, match="spatial"):
        StoreWriter(path, spatial_provenance(8, 3, 6, ["a"]))
    with pytest.raises(StoreError, match=r"spatial of shape None, expected \(5, 4, 6\)"):
        write_store(tmp_path / "bad.h5", [VideoRecord("v", records[0].features, records[0].timestamps,
                                                      records[0].frame_indices, "a", ("train",))],
                    spatial_provenance(8, 2, 6, ["a"]))
    # a store without a grid (or flow) keeps the provenance hash it had before grids existed
    plain = synthetic_provenance(8, ["a"], 1, "float16", "plain")
    before = {name: plain.get(name) for name in IDENTITY_FIELDS if name not in LATER_FIELDS}
    assert provenance_hash(plain) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()


def test_the_loader_streams_grids_when_the_cache_does_not_fit(tmp_path, monkeypatch):
    path = tmp_path / "g.h5"
    write_store(path, [grid_record(f"v{i}", 4 + i, 8, 4, 6, i) for i in range(3)], spatial_provenance(8, 2, 6, ["a"]))
    keys = ["v0", "v1", "v2"]
    with open_store(path) as store:
        rows = 4 + 5 + 6
        # the features alone fit a budget of exactly their bytes, features and grid together do not
        monkeypatch.setattr(loaders.os, "sysconf", lambda name: 1)
        monkeypatch.setattr(loaders, "MEMORY_FRACTION", rows * 16)
        assert loaders.fits_in_memory(store, keys) and not loaders.fits_in_memory(store, keys, ("features", "spatial"))
    loaded = SpatialSource.from_store(path, keys, in_memory=True)
    streamed = SpatialSource.from_store(path, keys)
    assert loaded.in_memory and not streamed.in_memory
    for i in range(3):
        np.testing.assert_array_equal(streamed.get(i), loaded.get(i))
    source = loaders.SequenceSource.from_store(path, keys, in_memory=False)
    dataset = SequenceDataset(source, [0, 0, 0], segments=3, mode="segments", train=False, spatial=streamed)
    assert not dataset.in_memory
    batch = collate([dataset[i] for i in range(3)])
    assert batch.extras["spatial"].shape == (3, 3, 4, 6) and batch.extras["spatial"].dtype == torch.float32


# Extraction --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("spatial_videos")
    tiny(root / "a.mp4")
    tiny(root / "b.mp4", pattern="counter")
    return root


def decoded(path, attrs) -> np.ndarray:
    pre = attrs["preprocessing"]
    reader = VideoReader(path, Sampling.from_description(attrs["sampling"]),
                         Geometry(pre["resize"], pre["crop"], pre["interpolation"]))
    return np.stack([frame.rgb for frame in reader])


def test_stored_grids_are_the_backbone_map_average_pooled(videos, tmp_path):
    """lite0 (its real weights), extracted by its frozen CPU graph: the grid equals a direct forward's last map (or
    stage 10's) adaptive-avg-pooled, cells row-major; the global vector stays the map's mean."""
    extractor = create_backbone("efficientnet_lite0").extractor
    for layer, size in ((None, 2), ("10", 3)):
        out = tmp_path / f"{layer}.h5"
        result = run_cli("extract", videos, "--out", out, "--spatial", size,
                         *(["--spatial-layer", layer] if layer else []))
        assert result.exit_code == 0, result.output
        with open_store(out) as store:
            frames = decoded(videos / "b.mp4", store.attrs)
            with torch.inference_mode():
                last, chosen = extractor.feature_maps(torch.from_numpy(frames), layer or "last")
            expected = torch.nn.functional.adaptive_avg_pool2d(chosen, size)  # [T, D, S, S]
            grid = store.spatial("b").astype(np.float32)
            assert grid.shape == (5, size * size, chosen.shape[1])
            assert store.attrs["spatial"] == SpatialGrid(size, layer or "last", chosen.shape[1]).describe(False)
            np.testing.assert_allclose(grid[:, 1], expected[:, :, 0, 1].numpy(), rtol=1e-2, atol=1e-2)  # row 0, col 1
            np.testing.assert_allclose(grid.reshape(5, size, size, -1).transpose(0, 3, 1, 2), expected.numpy(),
                                       rtol=1e-2, atol=1e-2)
            np.testing.assert_allclose(store.features("b").astype(np.float32), last.mean((2, 3)).numpy(),
                                       rtol=1e-2, atol=1e-2)
    info = CliRunner().invoke(main, ["features", "info", str(tmp_path / "None.h5")])
    assert "disk per frame: 12.5 KB (spatial 10.0, features 2.5" in info.output, info.output


@pytest.mark.parametrize("layer", ["last", "10"])
def test_the_frozen_cpu_graph_gives_the_eager_grids(layer):
    """Extraction with a grid runs lite0 as a frozen graph that also pools the grid (the CPU default): global vectors
    and cells within 1e-4 of the eager model's (BN folded into the convolutions), on a full and a short batch."""
    backbone = create_backbone("efficientnet_lite0")
    grid = SpatialGrid(3, layer, 1280 if layer == "last" else 80)
    eager = Model(backbone, torch.device("cpu"), ModelSettings("fp32"))
    frozen = Model(backbone, torch.device("cpu"), ModelSettings("fp32", "frozen", (4, 224, 224, 3), grid))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    for rows in (4, 3):
        want, got = (m.with_maps(pixels[:rows], np.zeros(rows, int), None, grid) for m in (eager, frozen))
        assert got.spatial.shape == want.spatial.shape == (rows, 9, grid.feature_dim) and got.regions is None
        for name in ("features", "spatial"):
            expected = getattr(want, name)
            np.testing.assert_allclose(getattr(got, name), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_clip_grids_come_from_the_time_step_under_the_window_centre(tmp_path):
    make_video(tmp_path / "v.mp4", size=(64, 48), fps=25, seconds=1.2)
    out = tmp_path / "clips.h5"
    result = run_cli("extract", tmp_path / "v.mp4", "--out", out, "--backbone", "i3d", "--weights", "none",
                     "--clip-len", "16", "--spatial", "2")
    assert result.exit_code == 0, result.output
    extractor = create_backbone("i3d", "none").extractor
    with open_store(out) as store:
        assert store.attrs["spatial"]["time_step"].startswith("the output time step")
        pre = store.attrs["preprocessing"]
        reader = VideoReader(tmp_path / "v.mp4", Sampling.from_description(store.attrs["sampling"]),
                             Geometry(pre["resize"], pre["crop"], pre["interpolation"]))
        windows = list(window_rows(reader, Windowing(16, 8)))
        grid = store.spatial("v").astype(np.float32)
        assert grid.shape == (len(windows), 4, 1024)
        for window, stored in zip(windows, grid):
            with torch.inference_mode():
                clip_map = extractor.feature_map(torch.from_numpy(window.pixels[None]))
            step = window.centre * clip_map.shape[2] // 16
            expected = SpatialGrid(2, "last", 1024).pool(clip_map[:, :, step])[0]
            np.testing.assert_allclose(stored, expected.numpy(), rtol=1e-2, atol=1e-2)


def test_bad_grid_requests_give_clear_errors(videos, tmp_path):
    cases = [
        (["--spatial", "0"], "grid size S >= 1"),
        (["--spatial-layer", "3"], "only applies with --spatial S"),
        (["--spatial", "2", "--spatial-layer", "stage9"], "trunk stages are: 0 (32-d)"),
        (["--spatial", "2", "--spatial-layer", "3", "--backbone", "i3d", "--weights", "none"],
         "--spatial-layer applies to frame backbones"),
    ]
    for i, (args, message) in enumerate(cases):
        result = run_cli("extract", videos / "a.mp4", "--out", tmp_path / f"x{i}.h5", *args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert not (tmp_path / f"x{i}.h5").exists()


# The heads ---------------------------------------------------------------------------------------------

DIM, GRID, SPATIAL_DIM = 10, 3, 12


def spatial_head(name: str, **options):
    torch.manual_seed(0)
    return create_head(name, DIM, 4, spatial_dim=SPATIAL_DIM, grid=GRID, **options).eval()


def random_inputs(batch: int, steps: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(batch, steps, DIM, generator=g), "mask": torch.ones(batch, steps, dtype=torch.bool),
            "spatial": torch.randn(batch, steps, GRID * GRID, SPATIAL_DIM, generator=g)}


def logits(head, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return head(inputs["x"], inputs["mask"], spatial=inputs["spatial"])


HEAD_VARIANTS = [("timesformer", {}), ("timesformer", {"attention": "joint"}), ("timesformer", {"attention": "space"}),
                 ("timesformer", {"space_positions": False, "depth": 1}), ("eco", {}), ("eco", {"global_branch": False})]


@pytest.mark.parametrize("name,options", HEAD_VARIANTS)
def test_padding_steps_never_change_the_logits(name, options):
    head = spatial_head(name, **options)
    lengths = [5, 2, 7]
    alone = [logits(head, random_inputs(1, t, seed)) for seed, t in enumerate(lengths)]
    padded = {"x": torch.full((3, 9, DIM), 7.0), "mask": torch.zeros(3, 9, dtype=torch.bool),
              "spatial": torch.full((3, 9, GRID * GRID, SPATIAL_DIM), -5.0)}  # padding full of garbage
    for i, (t, seed) in enumerate(zip(lengths, range(3))):
        video = random_inputs(1, t, seed)
        padded["x"][i, :t], padded["spatial"][i, :t], padded["mask"][i, :t] = video["x"][0], video["spatial"][0], True
    together = logits(head, padded)
    for i in range(3):
        torch.testing.assert_close(together[i], alone[i][0], atol=1e-5, rtol=1e-5)


def reversed_steps(inputs: dict) -> dict:
    return {k: v.flip(1) for k, v in inputs.items()}


def test_space_only_attention_is_order_blind_and_the_others_see_time():
    inputs = random_inputs(2, 6)
    space = spatial_head("timesformer", attention="space")
    torch.testing.assert_close(logits(space, reversed_steps(inputs)), logits(space, inputs), atol=1e-6, rtol=1e-6)
    for name, options in (("timesformer", {}), ("timesformer", {"attention": "joint"}), ("eco", {})):
        head = spatial_head(name, **options)
        change = (logits(head, reversed_steps(inputs)) - logits(head, inputs)).abs().max()
        assert change > 1e-3, (name, options, change)  # ECO's 3D branch (and time attention) see the order


def test_without_space_positions_permuting_the_cells_changes_nothing():
    inputs = random_inputs(2, 5)
    order = torch.randperm(GRID * GRID, generator=torch.Generator().manual_seed(1))
    permuted = {**inputs, "spatial": inputs["spatial"][:, :, order]}
    for attention in ("divided", "joint"):
        blind = spatial_head("timesformer", attention=attention, space_positions=False)
        torch.testing.assert_close(logits(blind, permuted), logits(blind, inputs), atol=1e-5, rtol=1e-5)
        seeing = spatial_head("timesformer", attention=attention)
        assert (logits(seeing, permuted) - logits(seeing, inputs)).abs().max() > 1e-3


def test_spatial_heads_explain_what_they_need():
    head = spatial_head("eco")
    inputs = random_inputs(1, 3)
    with pytest.raises(ValueError, match="extracted with `vidfeat extract --spatial S`"):
        head(inputs["x"], inputs["mask"])
    with pytest.raises(ValueError, match=r"spatial must be \[B, T, 9, 12\]"):
        head(inputs["x"], inputs["mask"], spatial=inputs["spatial"][:, :, :4])
    with pytest.raises(ValueError, match="needs spatial_dim and grid"):
        create_head("timesformer", DIM, 2)
    with pytest.raises(ValueError, match="attention must be one of divided, joint, space"):
        spatial_head("timesformer", attention="axial")


# Runs and predict --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spatial_list_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("spatial_list")
    rows = []
    for label, pattern in (("plain", "testsrc"), ("counter", "counter")):
        (root / label).mkdir()
        for i in range(4):
            make_video(root / label / f"{i}.mp4", size=(48, 48), fps=8, seconds=1, pattern=pattern)
            rows.append([f"{label}/{i}.mp4", label, "train" if i < 2 else "test"])
    with open(root / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *rows])
    store = root / "s.h5"
    result = run_cli("extract", "--dataset", "list", "--list", root / "list.csv", "--out", store, "--fps", "4",
                     "--spatial", "2", "--spatial-layer", "18")
    assert result.exit_code == 0, result.output
    return root, store


@pytest.mark.parametrize("head", ["timesformer", "eco"])
def test_predict_with_a_spatial_run_extracts_the_grid_the_same_way(spatial_list_store, tmp_path, head):
    root, store = spatial_list_store
    options = ["-o", "width=32", "-o", "depth=1"] if head == "timesformer" else ["-o", "reduce=16"]
    trained = run_cli("train-temporal", "--head", head, "--features", store, "--out", tmp_path / "run",
                      "--epochs", "2", "--segments", "3", *options)
    assert trained.exit_code == 0, trained.output
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), str(root / "plain" / "3.mp4")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("3.mp4") and {lines[1].split()[-1], lines[2].split()[-1]} == {"plain", "counter"}
    evaluated = CliRunner().invoke(main, ["evaluate", str(tmp_path / "run")])
    assert evaluated.exit_code == 0, evaluated.output


def test_a_store_without_a_grid_is_refused_naming_the_spatial_option(videos, tmp_path):
    from vidfeat.temporal.synthetic import write_ramp_store

    store = write_ramp_store(tmp_path / "ramp.h5", videos=8)
    result = CliRunner().invoke(main, ["train-temporal", "--head", "eco", "--features", str(store),
                                       "--out", str(tmp_path / "r"), "--epochs", "1"])
    assert result.exit_code == 1 and "vidfeat extract ... --spatial S" in result.output, result.output
