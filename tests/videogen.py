"""Real test videos, encoded with the ffmpeg binary vidfeat itself uses (no mocks).

Tests import this module directly (`from videogen import make_video`): tests/ has no __init__.py, so
pytest puts it on sys.path. Everything is deterministic: the same arguments give the same frames.

Patterns are drawn in *display* orientation; with `rotate` the frames are stored rotated the other
way and tagged with a display matrix, so a correct reader shows exactly the drawn pattern.
"""
from __future__ import annotations

import random
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np

from vidfeat.extract.ffmpeg import ffmpeg_binary

PATTERNS = ("testsrc", "counter", "corner")

_CODEC_ARGS = {
    "mpeg4": ["-c:v", "mpeg4", "-q:v", "2", "-pix_fmt", "yuv420p"],
    "libx264": ["-c:v", "libx264", "-preset", "veryfast", "-crf", "12", "-pix_fmt", "yuv420p"],
    "ffv1": ["-c:v", "ffv1"],
    "mjpeg": ["-c:v", "mjpeg", "-q:v", "2", "-pix_fmt", "yuvj420p"],
}
_ROTATABLE = {".mp4", ".mov", ".m4v", ".mkv"}
# Stored frames must be the display image turned back: rotate=90 means "turn 90 degrees clockwise
# to display", so the stored image is the display image turned 90 degrees counter-clockwise.
_UNDO_ROTATION = {90: "transpose=cclock", 180: "hflip,vflip", 270: "transpose=clock"}

# "counter" pattern: frame i shows level(i % 16) on its left half and level(i // 16 % 16) on its
# right half, so the source index survives lossy coding, resizing and centre cropping.
_LEVEL0, _LEVEL_STEP = 16, 14


def _level(k: int) -> int:
    return _LEVEL0 + _LEVEL_STEP * k


def n_frames(fps: float = 25, seconds: float = 2) -> int:
    """Number of frames make_video writes for these settings."""
    return int(round(fps * seconds))


def frame_times(*, fps: float = 25, seconds: float = 2, vfr: bool = False) -> list[float]:
    """Exact presentation times (s) make_video gives its frames.

    VFR: the first half of the frames are 1/fps apart, the second half 2/fps apart.
    """
    n = n_frames(fps, seconds)
    step = 1 / Fraction(fps)
    half = n // 2
    ticks = [i if (not vfr or i < half) else 2 * i - half for i in range(n)]
    return [float(t * step) for t in ticks]


def pattern_frame(pattern: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] RGB display image of frame `index` (not for "testsrc", which ffmpeg draws)."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    if pattern == "counter":
        img[:, : w // 2] = _level(index % 16)
        img[:, w // 2 :] = _level(index // 16 % 16)
    elif pattern == "corner":
        img[:] = 32
        bh, bw = max(h // 3, 1), max(w // 3, 1)
        img[:bh, :bw] = (255, 255, 255)  # white block top-left
        img[:bh, w - bw :] = (0, 0, 255)  # blue block top-right: catches mirroring and BGR mix-ups
    else:
        raise ValueError(f"unknown pattern {pattern!r}; use one of {PATTERNS}")
    return img


def counter_value(rgb: np.ndarray) -> int:
    """Decode the frame index shown by the "counter" pattern (mod 256)."""
    h, w = rgb.shape[:2]
    rows = slice(h // 4, max(3 * h // 4, h // 4 + 1))
    left = rgb[rows, max(w // 10, 0) : max(4 * w // 10, 1)].mean()
    right = rgb[rows, 6 * w // 10 : max(9 * w // 10, 6 * w // 10 + 1)].mean()
    lo = int(round((left - _LEVEL0) / _LEVEL_STEP))
    hi = int(round((right - _LEVEL0) / _LEVEL_STEP))
    return hi * 16 + lo


def _ffmpeg(args: list[str], stdin: bytes | None = None) -> None:
    cmd = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y"]
    cmd += ["-nostdin", *args] if stdin is None else args
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({' '.join(cmd)}): {proc.stderr.decode(errors='replace')[-2000:]}")


def make_video(
    path: str | Path,
    *,
    size: tuple[int, int] = (64, 48),
    fps: float = 25,
    seconds: float = 2,
    codec: str = "mpeg4",
    vfr: bool = False,
    rotate: int | None = None,
    mirror: bool = False,
    pattern: str = "testsrc",
    faststart: bool = False,
    start: float = 0,
) -> Path:
    """Encode a small real video; the container follows the suffix of `path`.

    size is the *display* size (w, h); rotate (90/180/270, degrees clockwise a player must turn the
    stored frames) stores the frames turned back and writes a display matrix (mp4/mov/mkv only);
    mirror=True (without rotate) stores them mirrored with a horizontally flipping display matrix.
    vfr=True gives the timestamps of frame_times(vfr=True) (use .mkv or .mp4, not .avi).
    start shifts all timestamps in the file (the stream then starts at `start` seconds).
    """
    path = Path(path)
    w, h = size
    n = n_frames(fps, seconds)
    if rotate not in (None, 0, 90, 180, 270):
        raise ValueError(f"rotate must be 0, 90, 180 or 270, got {rotate}")
    if mirror and rotate:
        raise ValueError("make_video supports rotate or mirror, not both")
    if (rotate or mirror) and path.suffix.lower() not in _ROTATABLE:
        raise ValueError(f"display matrices need one of {sorted(_ROTATABLE)}, not {path.suffix}")

    stdin = None
    if pattern == "testsrc":
        source = ["-f", "lavfi", "-i", f"testsrc=size={w}x{h}:rate={fps}:duration={seconds}"]
    else:
        frames = [pattern_frame(pattern, i, size) for i in range(n)]
        stdin = b"".join(f.tobytes() for f in frames)
        source = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", str(fps), "-i", "-"]

    filters = []
    if rotate:
        filters.append(_UNDO_ROTATION[rotate])
    if mirror:
        filters.append("hflip")
    if vfr:
        half = n // 2
        filters.append(f"setpts='round(if(lt(N,{half}),N,2*N-{half})/({fps})/TB)'")
    args = [*source, "-frames:v", str(n)]
    if filters:
        args += ["-vf", ",".join(filters)]
    if vfr:
        args += ["-fps_mode", "passthrough"]
    args += _CODEC_ARGS.get(codec, ["-c:v", codec])
    mov_flags = ["-movflags", "+faststart"] if faststart and path.suffix.lower() in {".mp4", ".mov", ".m4v"} else []
    if start:
        mov_flags += ["-output_ts_offset", str(start)]

    if not (rotate or mirror):
        _ffmpeg([*args, *mov_flags, str(path)], stdin)
        return path
    # ffmpeg applies (rather than copies) an input display matrix when re-encoding, so tag by remuxing.
    plain = path.with_name(f".{path.stem}.unrotated{path.suffix}")
    try:
        _ffmpeg([*args, str(plain)], stdin)
        # -display_rotation is counter-clockwise; `rotate` is clockwise.
        matrix = ["-display_hflip:v:0"] if mirror else ["-display_rotation:v:0", str(-rotate)]
        _ffmpeg([*matrix, "-i", str(plain), "-c", "copy", *mov_flags, str(path)])
    finally:
        plain.unlink(missing_ok=True)
    return path


def make_truncated(src: str | Path, dst: str | Path, fraction: float) -> Path:
    """Copy only the first `fraction` of the bytes of src, like an interrupted download."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def make_corrupt(src: str | Path, dst: str | Path, *, offset: int = 0, length: int = 64, seed: int = 0) -> Path:
    """Copy src with `length` bytes from `offset` overwritten by seeded random bytes."""
    data = bytearray(Path(src).read_bytes())
    rng = random.Random(seed)
    for i in range(offset, min(offset + length, len(data))):
        data[i] = rng.randrange(256)
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def make_audio_only(path: str | Path, seconds: float = 1, cover: bool = False) -> Path:
    """A real audio file with no video stream (.m4a/.mp4 get AAC, .wav gets PCM).

    cover=True adds album art (a PNG stream marked attached_pic), which is not a video track.
    """
    path = Path(path)
    codec = ["-c:a", "pcm_s16le"] if path.suffix.lower() == ".wav" else ["-c:a", "aac"]
    audio = ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    if not cover:
        _ffmpeg([*audio, *codec, str(path)])
        return path
    png = path.with_name(f".{path.stem}.cover.png")
    try:
        _ffmpeg(["-f", "lavfi", "-i", "testsrc=size=32x32", "-frames:v", "1", str(png)])
        _ffmpeg([*audio, "-i", str(png), "-map", "0", "-map", "1", *codec, "-c:v", "copy",
                 "-disposition:v:0", "attached_pic", str(path)])
    finally:
        png.unlink(missing_ok=True)
    return path


def make_text_file(path: str | Path, text: str = "this is not a video\n") -> Path:
    """A text file, typically given a video suffix to pose as one."""
    path = Path(path)
    path.write_text(text)
    return path


def ffmpeg_decode(path: str | Path, size: tuple[int, int], vf: str | None = None) -> np.ndarray:
    """Reference decode by the ffmpeg command line (autorotate on): uint8 [N, h, w, 3] RGB.

    size is the (w, h) the frames come out at, after `vf`.
    """
    cmd = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path)]
    if vf:
        cmd += ["-vf", vf]
    cmd += ["-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({' '.join(cmd)}): {proc.stderr.decode(errors='replace')[-2000:]}")
    w, h = size
    return np.frombuffer(proc.stdout, np.uint8).reshape(-1, h, w, 3)
