"""Decode one video into sampled, upright, resized RGB frames with exact source timestamps.

Why it is built this way:

* Streaming. Packets are demuxed and decoded one at a time (PyAV, `thread_type="AUTO"`) and each
  kept frame is converted and yielded before the next packet is read, so memory does not grow
  with the length of the video (only the first 8 decoded frames are held back, to settle timing).
* Exact time and index. A frame's timestamp is its own `pts * time_base` (exact `Fraction`
  arithmetic) relative to the first decoded frame, so variable-frame-rate files keep their real
  timing; where a file's pts are not presentation times (H.264 with B-frames in AVI) the dts are
  used instead, choosing between them as libav's best_effort_timestamp does (see _Clock). Its
  index counts every decoded frame in presentation order.
* Sampling is decided in Python from those timestamps, before any pixel work, and only kept frames
  enter the filter graph. A libav `select` filter would need its own notion of frame numbers and
  would hide which source frame survived; deciding here keeps `Frame.index` exact and skips the
  conversion cost of dropped frames.
* Geometry runs in one libavfilter graph: buffer -> transpose / hflip / vflip from the display
  matrix -> scale (libswscale, straight to rgb24) -> crop -> buffersink. The upright step picks
  the same filters as the ffmpeg command line's autorotate (mirrored matrices included) and comes
  first, as there, so the output is bit-identical to `ffmpeg -i f -vf scale=..,format=rgb24,crop=..`
  and an iPhone portrait clip comes out upright at its display size. Resize and crop sizes follow
  torchvision's rules (short side -> `resize`, long side `int(resize * long / short)`; crop
  offsets `round((size - crop) / 2)`), so inputs match models trained with torchvision transforms.
  Measured on bigbuckbunny.mp4 (1280x720 h264, 132 frames, 2 CPU cores), resize 256 / crop 224:
  decode + graph ~600 frames/s (~1.1 ms CPU per frame on top of decoding) against ~360 frames/s
  (~1.7 ms) for `VideoFrame.reformat` plus numpy cropping; decoding alone ~800-900 frames/s.
* Damage is reported, not hidden: a video that decodes at least one frame is kept, but marked
  `partial` (with the reason) when decoding hit errors or corrupt frames after the first frame,
  or ended clearly short of what the container declares.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.filter
import numpy as np

from vidfeat.features.errors import UserError

__all__ = [
    "VideoError",
    "Sampling",
    "Geometry",
    "VideoInfo",
    "Frame",
    "VideoReader",
    "probe_video",
    "backend_versions",
]

INTERPOLATIONS = ("bilinear", "bicubic", "area")
# Stop decoding after this many packets in a row fail: the rest of the file is garbage.
_MAX_CONSECUTIVE_ERRORS = 50
# Hold this many frames at the start so the timestamp source (pts or dts) is settled before the
# first frame is timed (see _Clock).
_PTS_LOOKAHEAD = 8
# The partial rule: decoded < 0.9 * expected and at least this many frames short.
_SHORT_RATIO, _SHORT_MIN = 0.9, 2


class VideoError(Exception):
    """A video that cannot be decoded at all.

    str() is the reason plus what to do about it (without the path, which is in `.path`).
    """

    def __init__(self, reason: str, path: str | Path | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else str(path)


@dataclass(frozen=True)
class Sampling:
    """Which decoded frames to keep: all (default), at most `fps` per second, or every n-th."""

    fps: float | None = None
    every_n: int | None = None

    def __post_init__(self) -> None:
        if self.fps is not None and self.every_n is not None:
            raise UserError("Sampling takes fps or every_n, not both")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise UserError(f"Sampling fps must be a positive number, got {self.fps}")
        if self.every_n is not None and (isinstance(self.every_n, bool) or not isinstance(self.every_n, int) or self.every_n < 1):
            raise UserError(f"Sampling every_n must be an integer >= 1, got {self.every_n!r}")

    @classmethod
    def from_description(cls, description: dict) -> "Sampling":
        """Inverse of describe(): rebuild the rule recorded in a store's provenance."""
        mode = description.get("mode")
        if mode == "fps":
            return cls(fps=description["fps"])
        if mode == "every_n":
            return cls(every_n=description["n"])
        if mode == "all":
            return cls()
        raise UserError(f"unknown sampling mode {mode!r} in {description}")

    def describe(self) -> dict:
        """Provenance record of the sampling rule."""
        if self.fps is not None:
            return {"mode": "fps", "fps": self.fps}
        if self.every_n is not None:
            return {"mode": "every_n", "n": self.every_n}
        return {"mode": "all"}


class _Sampler:
    """Stateful keep/drop decision for one pass over a video."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.next_tick: float | None = None

    def keep(self, index: int, t: float) -> bool:
        fps, n = self.sampling.fps, self.sampling.every_n
        if n is not None:
            return index % n == 0
        if fps is None:
            return True
        # Tick-aligned: keep the first frame at or after each 1/fps tick, never a frame twice.
        if self.next_tick is not None and t + 1e-9 < self.next_tick:
            return False
        self.next_tick = (math.floor(t * fps + 1e-6) + 1) / fps
        return True


@dataclass(frozen=True)
class Geometry:
    """Resize (short side, aspect kept) and optional centre square crop, done in libswscale."""

    resize: int
    crop: int | None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if isinstance(self.resize, bool) or not isinstance(self.resize, int) or self.resize < 1:
            raise UserError(f"Geometry resize must be a positive integer, got {self.resize!r}")
        if self.crop is not None and (
            isinstance(self.crop, bool) or not isinstance(self.crop, int) or not 1 <= self.crop <= self.resize
        ):
            raise UserError(f"Geometry crop must be an integer in 1..resize ({self.resize}) or None, got {self.crop!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"Geometry interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) after the short-side resize, with torchvision's rounding of the long side."""
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) of the frames produced from a display image of width x height."""
        if self.crop is not None:
            return self.crop, self.crop
        return self.resized_size(width, height)

    def describe(self) -> dict:
        """Provenance record of the geometric preprocessing."""
        return {
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "resize_rule": "short side to resize, long side int(resize*long/short)",
            "crop_rule": "centre, offset round((size-crop)/2)",
            "scaler": f"libswscale {'.'.join(map(str, av.library_versions['libswscale']))}",
        }


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video stream, with size in display orientation."""

    path: str
    width: int
    height: int
    rotation: int  # degrees clockwise the stored frames are turned for display: 0, 90, 180, 270
    avg_fps: float | None
    duration: float | None
    expected_frames: int | None
    mirrored: bool = False  # the display matrix also mirrors (display = mirror(rotate(stored)))
    frames_declared: bool = False  # expected_frames is the container's own count, not duration * fps
    codec: str | None = None
    container: str | None = None
    display_filters: tuple[str, ...] = ()  # libavfilter filters that make the frames upright


@dataclass
class Frame:
    """One kept frame: uint8 [H, W, 3] RGB, C-contiguous, upright, after resize and crop."""

    rgb: np.ndarray
    timestamp: float
    index: int


def backend_versions() -> dict:
    """PyAV and libav versions, for provenance records."""
    versions = {"pyav": av.__version__}
    versions.update({lib: ".".join(map(str, v)) for lib, v in av.library_versions.items()})
    return versions


# -- opening and decoding ----------------------------------------------------------------------


def _open(path: str | Path) -> av.container.InputContainer:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise VideoError("file not found; check the path", p) from None
    except PermissionError:
        raise VideoError("permission denied: cannot access the file; fix the permissions of it or its folder", p) from None
    except OSError as exc:
        raise VideoError(f"cannot access the file: {exc.strerror or exc}", p) from None
    if p.is_dir():
        raise VideoError("is a directory, not a video file; pass a video file (or give the folder to a dataset loader)", p)
    if st.st_size == 0:
        raise VideoError("file is empty (0 bytes); copy or download it again", p)
    if not os.access(p, os.R_OK):
        raise VideoError("permission denied: cannot read the file; make it readable (chmod a+r) or run as its owner", p)
    try:
        return av.open(str(p), mode="r", metadata_errors="ignore")
    except PermissionError:
        raise VideoError("permission denied: cannot read the file; make it readable (chmod a+r) or run as its owner", p) from None
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(
            f"not a video or unsupported container: {_av_reason(exc)}; the file is damaged, incomplete "
            "(e.g. an interrupted download) or not a video - check that ffmpeg can play it, or download it again",
            p,
        ) from None


def _av_reason(exc: BaseException) -> str:
    """libav's own words for an error, without PyAV's errno and file-name decoration."""
    return getattr(exc, "strerror", None) or str(exc)


def _video_stream(container: av.container.InputContainer, path: str | Path) -> av.video.stream.VideoStream:
    """The first real video stream; cover art (attached pictures) does not count."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    kinds = []
    for stream in container.streams:
        kind = "attached picture" if stream.type == "video" else stream.type
        if kind not in kinds:
            kinds.append(kind)
    raise VideoError(
        f"no video stream in file (streams: {', '.join(kinds) or 'none'}); vidfeat needs a file with a video track",
        path,
    )


class _Decoder:
    """Decodes one video stream frame by frame, counting errors instead of stopping at the first."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> None:
        self.container = container
        self.stream = stream
        self.decoded = 0
        self.empty_packets = 0  # AVI "dropped frame" placeholders: promised but carry no picture
        self.errors: list[tuple[int, str]] = []  # (frames decoded when it happened, message)

    def _error(self, message: str) -> None:
        self.errors.append((self.decoded, message))

    def frames(self) -> Iterator[av.VideoFrame]:
        codec = self.stream.codec_context
        demux = self.container.demux(self.stream)
        consecutive = 0
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.FFmpegError as exc:
                self._error(f"corrupt data: reading the file failed: {_av_reason(exc)}")
                break
            if packet.size == 0:
                if packet.dts is None:  # PyAV's end-of-stream flush marker
                    break
                self.empty_packets += 1
                continue
            try:
                frames = codec.decode(packet)
            except av.FFmpegError as exc:
                self._error(f"corrupt data: {_av_reason(exc)}")
                consecutive += 1
                if consecutive >= _MAX_CONSECUTIVE_ERRORS:
                    self._error(f"gave up after {consecutive} undecodable packets in a row")
                    return
                continue
            consecutive = 0
            yield from self._emit(frames)
        try:
            frames = codec.decode(None)
        except av.FFmpegError as exc:
            self._error(f"corrupt data at the end of the stream: {_av_reason(exc)}")
            return
        yield from self._emit(frames)

    def _emit(self, frames: list[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        for frame in frames:
            if frame.is_corrupt:
                self._error(f"corrupt data: the decoder flagged frame {self.decoded} as damaged")
            self.decoded += 1
            yield frame


# -- display orientation ----------------------------------------------------------------------


# ffmpeg's autorotate filters -> (clockwise rotation, mirrored), where display = mirror(rotate(stored)).
_ORIENTATION = {
    (): (0, False),
    ("transpose=clock",): (90, False),
    ("transpose=cclock_flip",): (90, True),
    ("hflip", "vflip"): (180, False),
    ("vflip",): (180, True),
    ("transpose=cclock",): (270, False),
    ("transpose=clock_flip",): (270, True),
    ("hflip",): (0, True),
}


def _display_filters(frame: av.VideoFrame) -> tuple[str, ...]:
    """Filters that make a frame upright, chosen exactly as ffmpeg's autorotate does."""
    matrix = None
    for sd in frame.side_data:
        if sd.type == av.sidedata.sidedata.Type.DISPLAYMATRIX and len(bytes(sd)) >= 36:
            matrix = np.frombuffer(bytes(sd), dtype="<i4", count=9)
            break
    if matrix is None:
        return ()
    theta = -float(frame.rotation)  # PyAV reports counter-clockwise degrees, ffmpeg works clockwise
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    # ffmpeg would use its `rotate` filter for angles that are not multiples of 90 degrees; such
    # files are vanishingly rare, so snap to the nearest quarter turn instead.
    quarter = int(round(theta / 90)) % 4
    if quarter == 1:
        return ("transpose=cclock_flip",) if matrix[3] > 0 else ("transpose=clock",)
    if quarter == 2:
        return (("hflip",) if matrix[0] < 0 else ()) + (("vflip",) if matrix[4] < 0 else ())
    if quarter == 3:
        return ("transpose=clock_flip",) if matrix[3] < 0 else ("transpose=cclock",)
    return ("vflip",) if matrix[4] < 0 else ()


def _transposes(filters: tuple[str, ...]) -> bool:
    return any(f.startswith("transpose") for f in filters)


# -- probing -------------------------------------------------------------------------------------


def _first_frame(decoder: _Decoder, path: str | Path) -> av.VideoFrame:
    for frame in decoder.frames():
        return frame
    raise _no_frames(decoder, path)


def _no_frames(decoder: _Decoder, path: str | Path) -> VideoError:
    detail = decoder.errors[0][1] if decoder.errors else "the video stream holds no pictures"
    return VideoError(f"no video frames could be decoded ({detail}); the file is damaged - download it again", path)


def probe_video(path: str | Path) -> VideoInfo:
    """Read the container header and the first frame (needed for the display matrix)."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        first = _first_frame(_Decoder(container, stream), path)
        filters = _display_filters(first)
        rotation, mirrored = _ORIENTATION[filters]
        width, height = first.width, first.height
        if _transposes(filters):
            width, height = height, width

        rate = stream.average_rate or stream.guessed_rate
        avg_fps = float(rate) if rate else None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = None
        declared = stream.frames > 0
        if declared:
            expected = stream.frames
        elif duration and avg_fps:
            expected = int(round(duration * avg_fps))
        else:
            expected = None
        return VideoInfo(
            path=str(path),
            width=width,
            height=height,
            rotation=rotation,
            mirrored=mirrored,
            avg_fps=avg_fps,
            duration=duration,
            expected_frames=expected,
            frames_declared=declared,
            codec=stream.codec_context.name,
            container=container.format.name,
            display_filters=filters,
        )
    finally:
        container.close()


# -- timing --------------------------------------------------------------------------------------


class _Clock:
    """Presentation time of each decoded frame, as libav's best_effort_timestamp picks it.

    Normally that is the frame's pts. Some files carry pts that are not presentation times (AVI has
    none; for H.264 with B-frames in AVI the guessed pts come out of the decoder out of order), and
    then the packet dts are right. libav's guess_correct_pts counts non-increasing values of each
    and trusts the one with fewer; this mirrors it (PyAV does not expose best_effort_timestamp).
    The reader feeds the first _PTS_LOOKAHEAD frames to `observe` before timing any of them, so
    the very first frames are timed with the settled choice too. Frames without the chosen value
    (raw elementary streams; the frames drained from the decoder at the end carry no dts)
    continue from the previous frame at the last seen frame interval.
    """

    def __init__(self, time_base: Fraction, nominal_step: Fraction) -> None:
        self.time_base = time_base
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts: int | None = None
        self.last_dts: int | None = None
        self.origin: int | None = None
        self.prev: Fraction | None = None
        self.step = nominal_step

    def observe(self, pts: int | None, dts: int | None) -> None:
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts

    def time(self, pts: int | None, dts: int | None) -> Fraction:
        """Seconds since the first frame."""
        if self.faulty_pts <= self.faulty_dts:
            raw = pts if pts is not None else dts
        else:  # pts are not presentation times here; a frame without dts continues the sequence
            raw = dts
        if raw is None:
            t = Fraction(0) if self.prev is None else self.prev + self.step
        else:
            if self.origin is None:
                self.origin = raw
            t = (raw - self.origin) * self.time_base
            if self.prev is not None and t > self.prev:
                self.step = t - self.prev
        self.prev = t
        return t

    def covered(self) -> float:
        """Seconds from the first frame to the end of the last one timed."""
        return 0.0 if self.prev is None else float(self.prev + self.step)


# -- conversion ----------------------------------------------------------------------------------


class _Converter:
    """libavfilter graph: decoded frame -> upright, resized, cropped rgb24 ndarray."""

    def __init__(self, geometry: Geometry | None, display_filters: tuple[str, ...]) -> None:
        self.geometry = geometry
        self.display_filters = display_filters
        self._key: tuple | None = None
        self._src = self._sink = None
        self._graph: av.filter.Graph | None = None

    def _build(self, frame: av.VideoFrame, time_base: Fraction) -> None:
        transposed = _transposes(self.display_filters)
        disp_w, disp_h = (frame.height, frame.width) if transposed else (frame.width, frame.height)
        graph = av.filter.Graph()
        src = graph.add(
            "buffer",
            video_size=f"{frame.width}x{frame.height}",
            pix_fmt=frame.format.name,
            time_base=str(time_base),
            pixel_aspect="1/1",
            colorspace=str(int(frame.colorspace)),
            range=str(int(frame.color_range)),
        )
        chain = []
        for spec in self.display_filters:
            name, _, args = spec.partition("=")
            chain.append(graph.add(name, args or None))
        if self.geometry is not None:
            rw, rh = self.geometry.resized_size(disp_w, disp_h)
            chain.append(graph.add("scale", w=str(rw), h=str(rh), flags=self.geometry.interpolation))
        chain.append(graph.add("format", pix_fmts="rgb24"))
        if self.geometry is not None and self.geometry.crop is not None:
            c = self.geometry.crop
            x, y = int(round((rw - c) / 2.0)), int(round((rh - c) / 2.0))
            chain.append(graph.add("crop", w=str(c), h=str(c), x=str(x), y=str(y), exact="1"))
        sink = graph.add("buffersink")
        graph.link_nodes(src, *chain, sink)
        graph.configure()
        self._graph, self._src, self._sink = graph, src, sink

    def __call__(self, frame: av.VideoFrame, time_base: Fraction) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name, int(frame.colorspace), int(frame.color_range))
        if key != self._key:  # first frame, or the stream changed size/format mid-way
            self._build(frame, time_base)
            self._key = key
        self._src.push(frame)
        out = self._sink.pull()
        return np.ascontiguousarray(out.to_ndarray())


# -- reading -------------------------------------------------------------------------------------


class VideoReader:
    """Streams sampled frames of one video; never holds the whole video in memory.

    geometry=None keeps the full display size (still upright and RGB). threads: libav's decoding threads (0: as
    many as it sees cores; a pool of several decoding processes gives each its share instead).
    """

    def __init__(
        self, path: str | Path, sampling: Sampling | None = None, geometry: Geometry | None = None, threads: int = 0
    ) -> None:
        self.path = path
        self.threads = threads
        self.sampling = sampling if sampling is not None else Sampling()
        self.geometry = geometry
        self.info = probe_video(path)
        self.decoded_frames = 0
        self.kept_frames = 0
        self.partial = False
        self.error: str | None = None

    def __iter__(self) -> Iterator[Frame]:
        self.decoded_frames = self.kept_frames = 0
        self.partial, self.error = False, None
        container = _open(self.path)
        try:
            stream = _video_stream(container, self.path)
            stream.thread_type = "AUTO"
            stream.thread_count = self.threads
            time_base = stream.time_base or Fraction(1, 1)
            nominal = 1 / Fraction(self.info.avg_fps) if self.info.avg_fps else Fraction(1, 25)
            decoder = _Decoder(container, stream)
            clock = _Clock(time_base, nominal)
            sampler = _Sampler(self.sampling)
            convert = _Converter(self.geometry, self.info.display_filters)
            for index, frame, t in self._timed(decoder, clock):
                self.decoded_frames = decoder.decoded
                ts = float(t)
                if not sampler.keep(index, ts):
                    continue
                try:
                    rgb = convert(frame, time_base)
                except (av.FFmpegError, ValueError) as exc:
                    raise VideoError(f"cannot convert frame {index} to RGB: {_av_reason(exc)}", self.path) from None
                self.kept_frames += 1
                yield Frame(rgb=rgb, timestamp=ts, index=index)
            self.decoded_frames = decoder.decoded
            self._finish(decoder, clock.covered())
        finally:
            container.close()

    @staticmethod
    def _timed(decoder: _Decoder, clock: _Clock) -> Iterator[tuple[int, av.VideoFrame, Fraction]]:
        """(index, frame, time) in presentation order; only the first few frames are held back."""
        held: list[tuple[int, av.VideoFrame]] = []
        for frame in decoder.frames():
            clock.observe(frame.pts, frame.dts)
            held.append((decoder.decoded - 1, frame))
            if decoder.decoded < _PTS_LOOKAHEAD:
                continue
            for index, f in held:
                yield index, f, clock.time(f.pts, f.dts)
            held.clear()
        for index, f in held:
            yield index, f, clock.time(f.pts, f.dts)

    def _finish(self, decoder: _Decoder, covered: float) -> None:
        """Apply the partial rule, or raise when nothing decoded."""
        decoded = decoder.decoded
        if decoded == 0:
            raise _no_frames(decoder, self.path)
        reasons = []
        info = self.info
        expected = info.expected_frames
        if expected is not None and info.frames_declared:
            promised = expected - decoder.empty_packets
            if decoded < _SHORT_RATIO * promised and promised - decoded >= _SHORT_MIN:
                reasons.append("the file ends early (truncated?)")
        elif info.duration and info.avg_fps:
            # No frame count in the container (e.g. Matroska): compare covered time, which also
            # holds for variable frame rates where duration * avg_fps is only an estimate.
            missing = (info.duration - covered) * info.avg_fps
            if covered < _SHORT_RATIO * info.duration and missing >= _SHORT_MIN:
                reasons.append(f"frames cover {covered:.2f} s of the {info.duration:.2f} s the container declares (truncated?)")
        # Errors before the first picture (e.g. a stream cut before its first keyframe) only count
        # through the shortfall above; errors after it mean pictures were lost or damaged.
        late = [msg for at, msg in decoder.errors if at >= 1]
        shown = late if late else [msg for _, msg in decoder.errors] if reasons else []
        if shown:
            more = f" (+{len(shown) - 1} more)" if len(shown) > 1 else ""
            reasons.append(shown[0] + more)
        if reasons:
            self.partial = True
            of = f" of {expected}" if expected is not None else ""
            self.error = f"decoded {decoded}{of} frames: " + "; ".join(reasons)
