"""Which cached steps a head sees: TSN segments, contiguous windows, or the whole sequence.

Every function returns indices into a sequence of ``length`` steps, in temporal order. A sequence
is never silently truncated to fewer steps than it has *and* than were asked for:

* ``segments`` (TSN): the sequence is cut into ``k`` equal segments and one step is taken from each
  (a random one for training, the centre for evaluation). A sequence shorter than ``k`` yields
  ``k`` indices anyway by repeating steps in order (``floor(i * length / k)``), so every step is
  used and the order is kept; the head always sees exactly ``k`` steps.
* ``window``: ``k`` contiguous steps (random start for training, evenly spaced starts for
  evaluation clips). A sequence shorter than ``k`` yields all its steps; the batch collate pads it
  and the mask marks the padding.
* ``all``: every step; variable lengths are padded and masked by the collate.
"""
from __future__ import annotations

import numpy as np

SAMPLE_MODES = ("segments", "window", "all")


def _check(length: int, k: int, clip: int, num_clips: int) -> None:
    if length < 1:
        raise ValueError(f"cannot sample from an empty sequence (length {length}); the store holds a video with no steps")
    if k < 1:
        raise ValueError(f"the number of segments/steps must be >= 1, got {k}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip {clip} is outside 0..{num_clips - 1}")


def segment_indices(
    length: int, k: int, *, rng: np.random.Generator | None = None, clip: int = 0, num_clips: int = 1
) -> np.ndarray:
    """TSN sampling: one step per segment; random with ``rng`` (training), else clip ``clip`` of ``num_clips``
    evenly placed positions inside each segment (``num_clips=1`` is the segment centre)."""
    _check(length, k, clip, num_clips)
    starts = np.arange(k) * length // k
    ends = np.maximum((np.arange(k) + 1) * length // k, starts + 1)
    if rng is not None:
        return rng.integers(starts, ends)
    return starts + ((ends - starts) * (2 * clip + 1)) // (2 * num_clips)


def window_indices(
    length: int, k: int, *, rng: np.random.Generator | None = None, clip: int = 0, num_clips: int = 1
) -> np.ndarray:
    """``k`` contiguous steps: random start with ``rng`` (training), else the ``clip``-th of ``num_clips``
    evenly spaced windows (a single clip is centred). Shorter sequences give all their steps."""
    _check(length, k, clip, num_clips)
    if length <= k:
        return np.arange(length)
    room = length - k
    if rng is not None:
        start = int(rng.integers(0, room + 1))
    elif num_clips == 1:
        start = room // 2
    else:
        start = (clip * room) // (num_clips - 1)
    return np.arange(start, start + k)


def sample_indices(
    length: int,
    k: int,
    mode: str,
    *,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> np.ndarray:
    """Dispatch on ``mode`` (one of ``SAMPLE_MODES``); ``rng`` set means training-time randomness."""
    if mode == "segments":
        return segment_indices(length, k, rng=rng, clip=clip, num_clips=num_clips)
    if mode == "window":
        return window_indices(length, k, rng=rng, clip=clip, num_clips=num_clips)
    if mode == "all":
        _check(length, max(k, 1), clip, num_clips)
        return np.arange(length)
    raise ValueError(f"unknown sample mode {mode!r}; choose one of {', '.join(SAMPLE_MODES)}")
