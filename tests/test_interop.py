"""Caches made elsewhere: per-video files written the way video_features writes them (np.save / pickle.dump of
each key of its output dict to <video stem>_<key>.npy|.pkl) -> `features import` -> train -> `features export`."""
import csv
import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from vidfeat.features import open_store
from vidfeat.features.interop import read_labels
from vidfeat.pipelines.cli import main

FPS = 25.0


def cli(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def write_like_video_features(folder, stem, feats, ext="npy", fps=FPS, feature_type="resnet"):
    """video_features' action_on_extraction: one file per key of {feature_type, 'fps', 'timestamps_ms'}."""
    folder.mkdir(parents=True, exist_ok=True)
    output = {feature_type: feats, "fps": np.array(fps), "timestamps_ms": np.arange(len(feats)) / fps * 1000}
    for key, value in output.items():
        path = folder / f"{stem}_{key}.{ext}"
        if ext == "npy":
            np.save(path, value)
        else:
            with path.open("wb") as f:
                pickle.dump(value, f)


@pytest.fixture
def exported_elsewhere(tmp_path):
    """24 videos of ramps (up or down) as another tool would have left them, plus a labels CSV."""
    rng = np.random.default_rng(0)
    folder, rows, arrays = tmp_path / "vf_out", [], {}
    for i in range(24):
        label = ("down", "up")[i % 2]
        steps = np.linspace(-1, 1, 10 + i % 5)
        feats = (np.outer(steps if label == "up" else -steps, np.ones(16)) + 0.1 * rng.normal(size=(len(steps), 16)))
        stem = f"clip_{i:02d}_v"  # underscores in the stem, as in HMDB51 names
        arrays[stem] = feats.astype(np.float32)
        write_like_video_features(folder, stem, arrays[stem])
        rows.append({"video": stem, "label": label, "split": "test" if i % 4 == 0 else "train"})
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["video", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return folder, labels, arrays


def test_import_train_export_round_trip(exported_elsewhere, tmp_path):
    folder, labels, arrays = exported_elsewhere
    store_path = tmp_path / "imported.h5"
    cli("features", "import", folder, "--labels", labels, "--out", store_path)
    with open_store(store_path) as store:
        assert store.keys() == sorted(arrays) and store.classes == ["down", "up"] and store.n_folds == 1
        stem = "clip_05_v"
        np.testing.assert_array_equal(store.features(stem), arrays[stem].astype(np.float16))
        np.testing.assert_allclose(store.timestamps(stem), np.arange(len(arrays[stem])) / FPS)
        np.testing.assert_array_equal(store.frame_indices(stem), np.arange(len(arrays[stem])))
        assert store.label(stem) == "up" and store.split(stem) == "train"
        imported = store.attrs["imported"]
        assert imported["tool"] == "video_features" and imported["feature_type"] == "resnet"
        assert imported["folder"] == str(folder.resolve()) and imported["videos"] == 24
        assert store.attrs["backbone"] == "imported:resnet" and store.attrs["sampling"]["fps"] == FPS

    cli("train-temporal", "--head", "lstm", "-o", "hidden=16", "--features", store_path, "--out", tmp_path / "run",
        "--epochs", "3", "--no-progress")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["features"]["provenance"]["imported"]["folder"] == str(folder.resolve())
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n"] == 6

    out = tmp_path / "exported"
    cli("features", "export", store_path, "--out", out, "--format", "npy")
    assert sorted(p.name for p in out.glob("clip_05_v_*")) == [
        "clip_05_v_fps.npy", "clip_05_v_resnet.npy", "clip_05_v_timestamps_ms.npy"]
    for stem, feats in arrays.items():
        np.testing.assert_array_equal(np.load(out / f"{stem}_resnet.npy"), feats.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(np.load(out / f"{stem}_timestamps_ms.npy"), np.arange(len(feats)) / FPS * 1000)
        assert float(np.load(out / f"{stem}_fps.npy")) == FPS
    assert read_labels(out / "labels.csv") == read_labels(labels)

    again = tmp_path / "again.h5"  # what we export imports back to the same store contents
    cli("features", "import", out, "--labels", out / "labels.csv", "--out", again)
    with open_store(store_path) as first, open_store(again) as second:
        assert first.keys() == second.keys()
        for key in first.keys():
            np.testing.assert_array_equal(first.features(key), second.features(key))
            assert (first.label(key), first.split(key)) == (second.label(key), second.split(key))


def test_pickles_import_and_the_dataset_adapter_labels_by_stem(tmp_path):
    rng = np.random.default_rng(1)
    videos = tmp_path / "videos"
    rows = []
    for i, label in enumerate(["jump", "run", "jump"]):
        (videos / label).mkdir(parents=True, exist_ok=True)
        (videos / label / f"v{i}.mp4").write_bytes(b"")  # the adapter only needs the files to exist
        rows.append(f"{label}/v{i}.mp4,{label},{'test' if i == 2 else 'train'}")
        write_like_video_features(tmp_path / "pkl", f"v{i}", rng.normal(size=(4, 8)).astype(np.float32), ext="pkl")
    (videos / "list.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    cli("features", "import", tmp_path / "pkl", "--dataset", "list", "--list", videos / "list.csv",
        "--out", tmp_path / "s.h5")
    with open_store(tmp_path / "s.h5") as store:
        assert store.keys() == ["jump/v0", "jump/v2", "run/v1"] and store.split("jump/v2") == "test"
        assert store.attrs["imported"]["format"] == "pkl" and store.attrs["dataset"]["name"] == "list"


def test_ambiguous_or_unlabelled_folders_are_refused_clearly(exported_elsewhere, tmp_path):
    folder, labels, arrays = exported_elsewhere
    write_like_video_features(folder, "extra", np.ones((3, 16), np.float32), feature_type="r21d")
    result = CliRunner().invoke(main, ["features", "import", str(folder), "--out", str(tmp_path / "x.h5")])
    assert result.exit_code == 1 and "pass --feature-type" in result.output and "r21d" in result.output
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join(lines[:-1]) + "\n")  # the last video loses its label
    result = CliRunner().invoke(main, ["features", "import", str(folder), "--feature-type", "resnet", "--labels",
                                       str(labels), "--out", str(tmp_path / "y.h5")])
    assert result.exit_code == 1 and "have no row in the labels" in result.output
    assert not (tmp_path / "y.h5").exists()
