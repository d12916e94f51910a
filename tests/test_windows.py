"""Sliding clip windows: regular windows, looped short videos, a covered tail, exact frame ranges."""
import numpy as np
import pytest

from vidfeat.extract.video import Frame
from vidfeat.extract.windows import Windowing, frame_rows, window_rows


def frames(n: int) -> list[Frame]:
    return [Frame(np.full((2, 2, 3), i, np.uint8), i / 10, i) for i in range(n)]


def test_regular_windows_and_the_tail_is_covered():
    rows = list(window_rows(frames(10), Windowing(clip_len=4, stride=3)))
    assert [(r.first, r.last) for r in rows] == [(0, 3), (3, 6), (6, 9)]
    rows = list(window_rows(frames(11), Windowing(clip_len=4, stride=3)))
    assert [(r.first, r.last) for r in rows] == [(0, 3), (3, 6), (6, 9), (7, 10)]
    window = rows[1]
    assert window.pixels.shape == (4, 2, 2, 3) and window.pixels[:, 0, 0, 0].tolist() == [3, 4, 5, 6]
    assert window.timestamp == pytest.approx(0.45) and window.index == 5
    assert window.pixels[window.centre, 0, 0, 0] == window.index  # where the centre frame sits in the window


def test_short_videos_are_looped_to_a_full_window():
    (row,) = window_rows(frames(3), Windowing(clip_len=8, stride=4))
    assert row.pixels[:, 0, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert (row.first, row.last, row.index) == (0, 2, 1) and row.timestamp == pytest.approx(0.1)
    assert row.pixels[row.centre, 0, 0, 0] == row.index
    assert list(window_rows([], Windowing(4, 2))) == []


def test_frame_rows_are_the_frames_themselves():
    rows = list(frame_rows(frames(3)))
    assert [(r.index, r.first, r.last, r.timestamp) for r in rows] == [(i, i, i, i / 10) for i in range(3)]


def test_bad_window_config_is_refused():
    with pytest.raises(ValueError, match="--clip-len and --clip-stride must be >= 1"):
        Windowing(0, 1)


def test_clip_backbone_extraction_stores_windows(tmp_path):
    """r2plus1d_18 (random init) end to end: one row per window, centre timestamps, frame ranges, window provenance."""
    from click.testing import CliRunner

    from videogen import make_video
    from vidfeat.extract.video import Sampling
    from vidfeat.features import open_store
    from vidfeat.pipelines.cli import main
    from vidfeat.extract.provenance import reproducing_options

    make_video(tmp_path / "v.mp4", size=(80, 60), fps=15, seconds=2)
    make_video(tmp_path / "short.mp4", size=(80, 60), fps=15, seconds=0.4)
    out = tmp_path / "clips.h5"
    result = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), str(tmp_path / "short.mp4"), "--out",
                                       str(out), "--backbone", "r2plus1d_18", "--weights", "none", "--clip-len", "8",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    with open_store(out) as s:
        assert s.attrs["kind"] == "clip" and s.attrs["window"]["clip_len"] == 8 and s.attrs["window"]["stride"] == 4
        assert s.attrs["sampling"] == {"mode": "fps", "fps": 15.0}  # the weights' own frame rate by default
        assert s.frame_ranges("v").tolist() == [[0, 7], [4, 11], [8, 15], [12, 19], [16, 23], [20, 27], [22, 29]]
        assert s.features("v").shape == (7, 512)
        np.testing.assert_allclose(s.timestamps("v")[0], 3.5 / 15)
        assert s.frame_ranges("short").tolist() == [[0, 5]] and len(s.features("short")) == 1  # looped
        reproduced = reproducing_options(dict(s.attrs))  # what predict extracts new videos with
        assert (reproduced.clip_len, reproduced.clip_stride, reproduced.sampling) == (8, 4, Sampling(fps=15.0))
    refused = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "--out", str(tmp_path / "x.h5"),
                                        "--clip-len", "8", "--no-progress"])
    assert refused.exit_code == 1 and "apply to clip backbones" in refused.output
