"""Region (RoI) features: grid, box files (nearest annotated frame, validation) and detectors, end to end."""
from functools import partial

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from videogen import make_video
from vidfeat.extract.backbones import create_backbone
from vidfeat.extract.rois import GridBoxes, pool_regions
from vidfeat.extract.video import Geometry, Sampling, VideoReader
from vidfeat.extract.windows import Windowing, window_rows
from vidfeat.features import open_store
from vidfeat.pipelines.cli import main

tiny = partial(make_video, size=(64, 48), fps=5, seconds=1)


def run_cli(*args):
    return CliRunner().invoke(main, [*map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("roi_videos")
    tiny(root / "a.mp4")
    tiny(root / "b.mp4", pattern="counter")
    return root


def test_grid_regions_are_stored_with_boxes_and_masks(videos, tmp_path):
    out = tmp_path / "grid.h5"
    result = run_cli("extract", videos, "--out", out, "--rois", "grid:2x2", "--roi-size", "96")
    assert result.exit_code == 0, result.output
    with open_store(out) as s:
        feats, boxes, mask = s.rois("a")
        assert feats.shape == (5, 5, 1280) and boxes.shape == (5, 5, 4) and mask.all()
        np.testing.assert_allclose(boxes[0, 0], [0, 0, 1, 1])
        np.testing.assert_allclose(boxes[0, 4], [0.5, 0.5, 1, 1])
        assert s.attrs["rois"]["source"] == "grid:2x2" and s.attrs["rois"]["max_rois"] == 5
        assert s.attrs["preprocessing"]["crop"] is None and s.attrs["preprocessing"]["resize"] == 96
        # the whole-frame region max-pools the map the global feature mean-pools
        assert (feats[:, 0].astype(np.float32) >= s.features("a").astype(np.float32) - 1e-2).all()


def test_box_file_takes_the_nearest_annotated_frame_and_pads(videos, tmp_path):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("video,frame,x1,y1,x2,y2,score,track\n"
                     "a,0,0,0,32,24,0.9,1\n"
                     "a,0,32,24,64,48,0.8,2\n"
                     "a,4,10,10,20,20,1.0,1\n")
    out = tmp_path / "file.h5"
    result = run_cli("extract", videos, "--out", out, "--rois", f"file:{boxes}", "--max-rois", "3")
    assert result.exit_code == 0, result.output
    with open_store(out) as s:
        _, b, mask = s.rois("a")
        assert mask.sum(1).tolist() == [2, 2, 2, 1, 1]  # frames 1-2 nearest 0, frames 3-4 nearest 4
        np.testing.assert_allclose(b[1, 0], [0, 0, 0.5, 0.5])
        np.testing.assert_allclose(b[4, 0], [10 / 64, 10 / 48, 20 / 64, 20 / 48])
        assert (b[4, 1:] == 0).all()
        _, _, none = s.rois("b")  # a video without any boxes keeps its rows, all slots masked
        assert not none.any()
        assert s.attrs["rois"]["sha256"]


def test_bad_box_files_give_clear_errors(videos, tmp_path):
    cases = {
        "video,frame,x1,y1,x2\na,0,0,0,1\n": "lacks column(s) y2",
        "video,frame,x1,y1,x2,y2\nnope,0,0,0,1,1\n": "not in this extraction, e.g. ['nope']",
        "video,frame,x1,y1,x2,y2\na,0,5,5,1,1\n": "invalid box",
        "video,frame,x1,y1,x2,y2\na,x,0,0,1,1\n": "frame must be an integer",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.csv"
        path.write_text(text)
        result = run_cli("extract", videos, "--out", tmp_path / f"o{i}.h5", "--rois", f"file:{path}")
        assert result.exit_code == 1 and message in result.output, result.output
    outside = tmp_path / "outside.csv"
    outside.write_text("video,frame,x1,y1,x2,y2\na,0,0,0,65,10\n")
    result = run_cli("extract", videos, "--out", tmp_path / "out.h5", "--rois", f"file:{outside}")
    assert result.exit_code == 1 and "outside the 64x48 frame" in result.output
    for spec, message in [("grid:axb", "two integers"), ("detector:yolo", "unknown detector"), ("rects", "unknown --rois")]:
        result = run_cli("extract", videos, "--out", tmp_path / "x.h5", "--rois", spec)
        assert result.exit_code == 1 and message in result.output


def test_detector_weights_follow_the_offline_rules(videos, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = run_cli("extract", videos / "a.mp4", "--out", tmp_path / "d.h5", "--rois",
                     "detector:fasterrcnn_mobilenet_v3_large_fpn")
    assert result.exit_code == 1 and "not in the torch cache" in result.output and "--weights" in result.output
    result = run_cli("extract", videos / "a.mp4", "--out", tmp_path / "d.h5", "--rois",
                     "detector:fasterrcnn_mobilenet_v3_large_fpn", "--detector-weights", "none",
                     "--roi-score-threshold", "0", "--max-rois", "4")
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "d.h5") as s:
        feats, boxes, mask = s.rois("a")
        assert feats.shape == (5, 4, 1280) and ((boxes >= 0) & (boxes <= 1)).all()
        assert s.attrs["rois"]["weights"] == "none"


def test_clip_regions_come_from_the_time_step_under_the_window_centre(tmp_path):
    """I3D (random init): a window's regions are roi_align on the output time step whose input span holds the
    window's centre frame, with that frame's boxes; recomputed here from the decoded windows."""
    make_video(tmp_path / "v.mp4", size=(64, 48), fps=25, seconds=1.2)
    make_video(tmp_path / "short.mp4", size=(64, 48), fps=25, seconds=0.4, pattern="counter")
    out = tmp_path / "clips.h5"
    result = run_cli("extract", tmp_path / "v.mp4", tmp_path / "short.mp4", "--out", out, "--backbone", "i3d",
                     "--weights", "none", "--clip-len", "16", "--rois", "grid:1x2", "--roi-size", "64")
    assert result.exit_code == 0, result.output
    extractor = create_backbone("i3d", "none").extractor
    with open_store(out) as s:
        assert s.attrs["rois"]["boxes_at"] == "the window's centre frame"
        geometry = Geometry(s.attrs["preprocessing"]["resize"], None, s.attrs["preprocessing"]["interpolation"])
        steps_seen = set()
        for key in ("v", "short"):
            feats, boxes, mask = s.rois(key)
            reader = VideoReader(tmp_path / f"{key}.mp4", Sampling.from_description(s.attrs["sampling"]), geometry)
            windows = list(window_rows(reader, Windowing(16, 8)))
            assert feats.shape == (len(windows), 3, 1024) and mask.all() and len(s.features(key)) == len(windows)
            np.testing.assert_array_equal(s.frame_indices(key), [w.index for w in windows])
            for window, stored, window_boxes in zip(windows, feats, boxes):
                with torch.inference_mode():
                    clip_map = extractor.feature_map(torch.from_numpy(window.pixels[None]))  # [1, D, 2, H', W']
                step = window.centre * clip_map.shape[2] // 16
                steps_seen.add(step)
                size, window_boxes = window.pixels.shape[1:3], torch.from_numpy(window_boxes[None])
                expected = pool_regions(clip_map[:, :, step], window_boxes, size)
                other = pool_regions(clip_map[:, :, 1 - step], window_boxes, size)
                np.testing.assert_allclose(stored.astype(np.float32), expected[0].numpy(), rtol=1e-2, atol=1e-2)
                assert not np.allclose(stored.astype(np.float32), other[0].numpy(), rtol=1e-2, atol=1e-2)
        assert steps_seen == {0, 1}  # full windows centre on step 1 of 2, the looped 10-frame video on step 0


def test_regions_are_refused_for_clip_backbones_that_need_a_fixed_crop(videos, tmp_path):
    result = run_cli("extract", videos / "a.mp4", "--out", tmp_path / "m.h5", "--backbone", "mvit_v2_s",
                     "--weights", "none", "--rois", "grid:1x2")
    assert result.exit_code == 1
    assert "mvit_v2_s only takes clips of exactly 16 frames of 224x224" in result.output and "i3d" in result.output
    assert not (tmp_path / "m.h5").exists()


def test_pool_regions_matches_a_hand_computed_max():
    feature_map = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]]] * 2)
    pooled = pool_regions(feature_map, boxes, (64, 64))
    assert pooled.shape == (2, 2, 3)
    assert torch.allclose(pooled[:, 0], feature_map.amax(dim=(2, 3)), atol=0.5)
    assert (pooled[:, 1] < pooled[:, 0]).all()
    assert GridBoxes(1, 2).boxes("k", np.arange(3), 10, 10, None)[0].shape == (3, 3, 4)


@pytest.mark.parametrize("backbone", [[], ["--backbone", "i3d", "--weights", "none", "--clip-len", "4"]],
                         ids=["frames", "clips"])
def test_predict_with_a_region_run_extracts_regions_the_same_way(tmp_path, backbone):
    """A gcn run on a grid-RoI store (frames, or I3D windows) classifies new videos: predict re-extracts the
    same regions, windows included."""
    import csv

    from videogen import make_video

    rows = []
    for label, pattern in (("plain", "testsrc"), ("counter", "counter")):
        for i in range(4):
            path = tmp_path / label / f"{i}.mp4"
            path.parent.mkdir(exist_ok=True)
            make_video(path, size=(48, 48), fps=8, seconds=1, pattern=pattern)
            rows.append([f"{label}/{i}.mp4", label, "train" if i < 2 else "test"])
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *rows])
    store = tmp_path / "g.h5"
    assert run_cli("extract", "--dataset", "list", "--list", tmp_path / "list.csv", "--out", store,
                   "--rois", "grid:1x2", "--roi-size", "64", *backbone).exit_code == 0
    trained = run_cli("train-temporal", "--head", "gcn", "--features", store, "--out", tmp_path / "run",
                      "--epochs", "3", "-o", "hidden=32")
    assert trained.exit_code == 0, trained.output
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), str(tmp_path / "plain" / "3.mp4")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("3.mp4") and {lines[1].split()[-1], lines[2].split()[-1]} == {"plain", "counter"}


DETECTOR = "fasterrcnn_mobilenet_v3_large_fpn"


def _detector_provenance(weights: str) -> dict:
    return {"sampling": {"mode": "all"}, "dtype": "float16", "window": None, "preprocessing": {"resize": 256},
            "rois": {"source": f"detector:{DETECTOR}", "weights": weights, "max_rois": 4, "score_threshold": 0.3,
                     "classes": [1, 3]}}


def test_predict_reproduces_a_detector_store_s_classes_threshold_and_weights():
    from vidfeat.extract.provenance import reproducing_options

    with pytest.raises(ValueError, match=r"detector weights file \(sha256:ab\); pass that file with --detector-weights"):
        reproducing_options(_detector_provenance("sha256:ab"))
    given = reproducing_options(_detector_provenance("sha256:ab"), detector_weights="mine.pt")
    assert (given.rois, given.max_rois, given.roi_score_threshold) == (f"detector:{DETECTOR}", 4, 0.3)
    assert given.roi_classes == ("person", "car") and given.detector_weights == "mine.pt"
    assert reproducing_options(_detector_provenance("none")).detector_weights == "none"
    assert reproducing_options(_detector_provenance("FasterRCNN_Weights.COCO_V1")).detector_weights is None


def test_predict_refuses_boxes_from_another_detector(tmp_path):
    """A run trained on one detector's boxes, asked to predict with other detector weights: refused, naming
    the regions' provenance, instead of classifying on different boxes."""
    import csv

    from vidfeat.extract.backbones import load_detector

    rows = []
    for label, pattern in (("plain", "testsrc"), ("counter", "counter")):
        (tmp_path / label).mkdir()
        for i in range(2):
            make_video(tmp_path / label / f"{i}.mp4", size=(48, 48), fps=4, seconds=1, pattern=pattern)
            rows.append([f"{label}/{i}.mp4", label, "train" if i == 0 else "test"])
    with open(tmp_path / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *rows])
    store, run = tmp_path / "d.h5", tmp_path / "run"
    extracted = run_cli("extract", "--dataset", "list", "--list", tmp_path / "list.csv", "--out", store, "--fps", "2",
                        "--rois", f"detector:{DETECTOR}", "--detector-weights", "none", "--roi-class", "person",
                        "--max-rois", "2", "--roi-size", "64")
    assert extracted.exit_code == 0, extracted.output
    assert run_cli("train-temporal", "--head", "gcn", "--features", store, "--out", run, "--epochs", "1",
                   "-o", "hidden=16").exit_code == 0
    video = str(tmp_path / "plain" / "1.mp4")
    same = CliRunner().invoke(main, ["predict", str(run), video])
    assert same.exit_code == 0, same.output
    net = load_detector(DETECTOR, "none")[0]
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    torch.save(net.state_dict(), tmp_path / "other.pt")
    other = CliRunner().invoke(main, ["predict", str(run), video, "--detector-weights", str(tmp_path / "other.pt")])
    assert other.exit_code == 1
    assert "the store extracted for prediction does not hold the features this run was trained on" in other.output
    assert "rois:" in other.output and "sha256:" in other.output
