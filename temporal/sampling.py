"""Which cached steps a head sees: TSN segments, contiguous windows, or the whole sequence.

Every function returns indices into a sequence of ``length`` steps, in temporal order. A sequence
is never silently truncated to fewer steps than it has *and* than were asked for:

* ``segments`` (TSN): the sequence is cut into ``k`` equal segments and one step is taken from each
  (a random one for training, the centre for evaluation). A sequence shorter than ``k`` yields
  ``k`` indices anyway by repeating steps in order (each segment is then shorter than a step and
  takes the step it falls in), so every step is used and the order is kept; the head always sees
  exactly ``k`` steps.
* ``window``: ``k`` contiguous steps (random start for training, evenly spaced starts for
  evaluation clips). A sequence shorter than ``k`` yields all its steps; the batch collate pads it
  and the mask marks the padding.
* ``all``: every step; variable lengths are padded and masked by the collate.
"""
from __future__ import annotations

import numpy as np

from vidfeat.features.errors import UserError

SAMPLE_MODES = ("segments", "window", "all")


def _check(length: int, k: int, clip: int, num_clips: int) -> None:
    if length < 1:
        raise UserError(
            f"cannot sample from an empty sequence (length {length}); the store holds a video with no steps"
        )
    if k < 1:
        raise UserError(f"the number of segments/steps must be >= 1, got {k}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip {clip} is outside 0..{num_clips - 1}")


def segment_indices(
    length: int, k: int, *, rng: np.random.Generator | None = None, clip: int = 0, num_clips: int = 1
) -> np.ndarray:
    """TSN sampling: segment i covers positions [i*length/k, (i+1)*length/k) and gives one step.

    With ``rng`` (training) the step is drawn uniformly from the segment; otherwise it is the step at
    fraction (clip + 0.5) / num_clips of the segment (``num_clips=1``: the centre), rounded away from
    the sequence centre so the steps of a reversed sequence are exactly the reversed steps. Real-valued
    segment bounds keep both cases symmetric under time reversal: an order-blind head cannot read the
    direction of a video from where the samples fall.
    """
    _check(length, k, clip, num_clips)
    offset = rng.random(k) if rng is not None else np.full(k, (clip + 0.5) / num_clips)
    position = (np.arange(k) + offset) * length / k
    if rng is not None:
        index = np.floor(position)
    else:
        position -= 0.5  # continuous coordinate of step centres
        index = np.where(position > (length - 1) / 2, np.floor(position + 0.5), np.ceil(position - 0.5))
    return np.clip(index, 0, length - 1).astype(np.int64)


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


def check_sampling(mode: str, k: int, num_clips: int = 1) -> None:
    """Validate sampling options up front, before any data is loaded."""
    if mode not in SAMPLE_MODES:
        raise UserError(f"unknown sample mode {mode!r}; choose one of {', '.join(SAMPLE_MODES)}")
    _check(1, k, 0, num_clips)


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
    check_sampling(mode, k, num_clips)
    if mode == "segments":
        return segment_indices(length, k, rng=rng, clip=clip, num_clips=num_clips)
    if mode == "window":
        return window_indices(length, k, rng=rng, clip=clip, num_clips=num_clips)
    _check(length, k, clip, num_clips)
    return np.arange(length)


def map_steps(steps: np.ndarray, length: int, to_length: int) -> np.ndarray:
    """The steps of a ``to_length``-step sequence at the same relative positions as ``steps`` of a ``length``-step
    one (the centre of step ``i`` is at ``(i + 0.5) / length``), in integers: two streams of one video with different
    row counts (a flow store's one row fewer, another fps) are read at the same moments. Identity when the lengths
    are equal."""
    steps = np.asarray(steps, dtype=np.int64)
    return np.minimum((2 * steps + 1) * to_length // (2 * length), to_length - 1)
