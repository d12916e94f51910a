"""Model input rows: one per sampled frame for 2D backbones, one per sliding window for clip backbones.

Windows are cut while frames stream in (only the last ``clip_len`` frames are held), so long videos never sit
in memory. A video shorter than one window is *looped* to fill it, as I3D's paper does ("short videos are
looped"); when the last regular window stops short of the end, one more window ending at the last frame is
added so the tail of every video is covered.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from vidfeat.extract.video import Frame
from vidfeat.features.errors import UserError


class Row(NamedTuple):
    """One model input and where it came from in the source video."""

    pixels: np.ndarray       # [H, W, 3] uint8 for frames, [T, H, W, 3] for windows
    timestamp: float         # seconds: the frame's time, or the window's centre
    index: int               # source frame index: the frame itself, or the window's centre frame
    first: int               # first and last source frame the row covers
    last: int
    centre: int = 0          # position of the ``index`` frame within ``pixels`` (windows: where its boxes apply)


@dataclass(frozen=True)
class Windowing:
    clip_len: int
    stride: int

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.stride < 1:
            raise UserError(f"--clip-len and --clip-stride must be >= 1, got {self.clip_len} and {self.stride}")

    def describe(self) -> dict:
        return {"clip_len": self.clip_len, "stride": self.stride, "short_videos": "looped",
                "tail": "one extra window ending at the last frame"}


def frame_rows(frames: Iterable[Frame]) -> Iterator[Row]:
    for f in frames:
        yield Row(f.rgb, f.timestamp, f.index, f.index, f.index)


def _window(frames: list[Frame]) -> Row:
    centre = frames[len(frames) // 2]
    return Row(
        np.stack([f.rgb for f in frames]),
        (frames[0].timestamp + frames[-1].timestamp) / 2,
        centre.index,
        frames[0].index,
        frames[-1].index,
        len(frames) // 2,
    )


def window_rows(frames: Iterable[Frame], windowing: Windowing) -> Iterator[Row]:
    """Sliding windows of ``clip_len`` sampled frames every ``stride`` frames, streamed."""
    held: deque[Frame] = deque(maxlen=windowing.clip_len)
    count, next_start, last_end = 0, 0, -1
    for frame in frames:
        held.append(frame)
        count += 1
        start = count - windowing.clip_len
        if start == next_start:
            yield _window(list(held))
            next_start += windowing.stride
            last_end = count - 1
    if count == 0:
        return
    if count < windowing.clip_len:
        looped = [held[i % count] for i in range(windowing.clip_len)]
        row = _window(looped)
        yield row._replace(
            timestamp=(held[0].timestamp + held[-1].timestamp) / 2, index=held[count // 2].index, last=held[-1].index,
            centre=count // 2,
        )
    elif last_end < count - 1:
        yield _window(list(held))
