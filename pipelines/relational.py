"""Relational benchmark: two objects move and the class is their relation over time, with ground-truth boxes.

Classes come in three pairs, and the second class of each pair is the first one's frames *in reverse order*:

* ``approach`` / ``separate``: the distance between the objects shrinks / grows (either or both may move);
* ``pass_left`` / ``pass_right``: one object travels in a straight line past the other and passes on its left /
  right, seen in its own direction of motion (reversing time reverses the direction, so it flips the side);
* ``orbit_cw`` / ``orbit_ccw``: the two objects circle their common centre clockwise / anticlockwise on screen.

So the set of frames, and of boxes, is identical within a pair: appearance, a bag of frames or a bag of regions
cannot beat chance between the two classes of a pair. Layout, direction, speeds, shapes, colours, sizes and the
backdrop are drawn per video, so no single frame or object tells the class: only how the two boxes move relative
to each other does. Videos are encoded like the sample dataset (intra-only MPEG-4 at a fixed quantiser, via
:func:`vidfeat.pipelines.sample.encode_frames`), so decoded frames carry no codec trace of temporal order.

Layout: ``<root>/<class>/<class>_NN.mp4``, ``<root>/relational.csv`` (``path,label,split``, the list layout) and
``<root>/boxes.csv`` (``video,frame,x1,y1,x2,y2,score,track``: the video key, the 0-based source frame index and
pixel coordinates, for ``vidfeat extract --rois file:<root>/boxes.csv``).
"""
from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidfeat.pipelines.sample import _box_mask, _disk_mask, encode_frames, ensure_generated

GENERATOR_VERSION = 1
DEFAULT_ROOT = Path("data") / "relational"
LIST_CSV = "relational.csv"
BOXES_CSV = "boxes.csv"
MARKER = ".vidfeat-relational.json"
SIZE = 128  # square frames, a multiple of 16 so the encoder needs no padding
FPS = 8
N_FRAMES = 16  # 2 s
VIDEOS_PER_CLASS = 32
SPLIT_OF_INDEX = ["train"] * 20 + ["val"] * 6 + ["test"] * 6  # same index -> same split in both classes of a pair
RELATION_PAIRS: list[tuple[str, str]] = [
    ("approach", "separate"),
    ("pass_left", "pass_right"),
    ("orbit_cw", "orbit_ccw"),
]
CLASSES: list[str] = sorted(c for pair in RELATION_PAIRS for c in pair)
SHAPES = ("disk", "square", "diamond")
BOXES_HEADER = ["video", "frame", "x1", "y1", "x2", "y2", "score", "track"]
_SEED = 20240923
_MARGIN = 2.0  # pixels kept between an object and the frame border


# ----------------------------------------------------------------------------------------------------------
# geometry: where the two objects are in every frame (pixel coordinates; pixel i covers [i, i+1))


@dataclass(frozen=True)
class Scene:
    """The two objects of one video: centres ``[T, 2, 2]`` (x, y per frame and object), radii ``[2]`` (half the
    box side) and shapes. Object 0 and 1 are the box CSV's tracks 0 and 1."""

    centres: np.ndarray
    radii: np.ndarray
    shapes: tuple[str, str]

    def boxes(self) -> np.ndarray:
        """``[T, 2, 4]`` x1 y1 x2 y2 pixel boxes: exactly the extent of each drawn shape."""
        r = self.radii[None, :, None]
        return np.clip(np.concatenate([self.centres - r, self.centres + r], axis=-1), 0, SIZE)

    def reversed(self) -> "Scene":
        return Scene(self.centres[::-1].copy(), self.radii, self.shapes)


def _ease(rng: np.random.Generator) -> np.ndarray:
    """Progress 0 -> 1 over the frames, somewhere between constant speed and smooth start/stop."""
    p = np.linspace(0, 1, N_FRAMES)
    a = rng.uniform(0, 1)
    return (1 - a) * p + a * p * p * (3 - 2 * p)


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def _approach(rng: np.random.Generator, radii: np.ndarray) -> np.ndarray:
    """Distance shrinks from far to nearly touching along a random axis; either or both objects move, and the
    pair may drift as a whole."""
    u = _unit(rng.uniform(0, 2 * np.pi))
    near = radii.sum() + rng.uniform(2, 6)
    far = rng.uniform(0.45, 0.55) * SIZE
    share = rng.uniform(0, 1)  # how much of the closing motion is object 0's
    drift = _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0, 0.1 * SIZE)
    gap = (far - near) * (1 - _ease(rng))[:, None]  # [T, 1]
    offset = drift[None] * (np.linspace(0, 1, N_FRAMES)[:, None] - 1)
    first = -u * (near / 2 + share * gap) + offset
    second = u * (near / 2 + (1 - share) * gap) + offset
    return np.stack([first, second], axis=1)


def _pass_left(rng: np.random.Generator, radii: np.ndarray) -> np.ndarray:
    """Object 0 crosses the frame in a straight line with object 1 on its right (it passes on the left of it);
    object 1 drifts slightly."""
    u = _unit(rng.uniform(0, 2 * np.pi))
    right = np.array([-u[1], u[0]])  # image y points down, so this is the mover's right-hand side
    length = rng.uniform(0.45, 0.6) * SIZE
    side = radii.sum() + rng.uniform(4, 12)
    shift = rng.uniform(-0.15, 0.15) * length  # when the mover is level with the other object
    p = _ease(rng)[:, None]
    mover = u * (length * (p - 0.5) - shift)
    drift = _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0, 6)
    other = right * side + drift * (np.linspace(0, 1, N_FRAMES)[:, None] - 0.5)
    return np.stack([mover, other], axis=1)


def _orbit_cw(rng: np.random.Generator, radii: np.ndarray) -> np.ndarray:
    """The objects circle their common centre clockwise on screen (angle grows with image y pointing down),
    by 0.35 to 0.6 turns, slowly enough that a box still overlaps itself a few frames later; the centre may
    drift."""
    distance = radii.sum() + rng.uniform(6, 26)
    share = rng.uniform(0.3, 0.7)
    angle = rng.uniform(0, 2 * np.pi) + rng.uniform(0.7, 1.2) * np.pi * _ease(rng)
    direction = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    drift = _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0, 0.1 * SIZE)
    offset = drift[None] * (np.linspace(0, 1, N_FRAMES)[:, None] - 0.5)
    return np.stack([direction * share * distance + offset, -direction * (1 - share) * distance + offset], axis=1)


_MOTIONS = {"approach": _approach, "pass_left": _pass_left, "orbit_cw": _orbit_cw}


def _seed(forward: str, index: int) -> list[int]:
    return [_SEED, [f for f, _ in RELATION_PAIRS].index(forward), index]


def _forward_scene(forward: str, index: int) -> Scene:
    rng = np.random.default_rng(_seed(forward, index) + [0])
    radii = rng.uniform(9, 15, size=2)
    shapes = (str(rng.choice(SHAPES)), str(rng.choice(SHAPES)))
    relative = _MOTIONS[forward](rng, radii)  # [T, 2, 2] around the origin
    # Place the whole motion at a random spot where both objects stay inside the frame in every frame.
    lo = (radii[None, :, None] + _MARGIN - relative).max(axis=(0, 1))
    hi = (SIZE - radii[None, :, None] - _MARGIN - relative).min(axis=(0, 1))
    if np.any(lo > hi):
        raise AssertionError(f"relational: {forward} video {index} does not fit the frame; the motion ranges are off")
    centres = relative + rng.uniform(lo, hi)[None, None]
    if rng.random() < 0.5:  # which track is the mover must not be a cue either
        centres, radii, shapes = centres[:, ::-1].copy(), radii[::-1].copy(), shapes[::-1]
    return Scene(centres, radii, shapes)


def scene(cls: str, index: int) -> Scene:
    """Geometry of video ``index`` of class ``cls`` (cheap: nothing is drawn); the second class of a pair is the
    first class's scene of the same index, reversed in time."""
    for forward, backward in RELATION_PAIRS:
        if cls == forward:
            return _forward_scene(forward, index)
        if cls == backward:
            return _forward_scene(forward, index).reversed()
    raise ValueError(f"unknown relational class {cls!r}; classes: {', '.join(CLASSES)}")


# ----------------------------------------------------------------------------------------------------------
# drawing


def _shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage [SIZE, SIZE, 1]; a pixel is more than half covered exactly when its centre lies
    inside the shape, which lies inside the box centre +- r. (The sample's masks put pixel centres at integers.)"""
    if shape == "disk":
        return _disk_mask(SIZE, cy - 0.5, cx - 0.5, r)
    if shape == "square":
        return _box_mask(SIZE, cy - 0.5, cx - 0.5, r)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    return np.clip(r - (np.abs(yy - cy) + np.abs(xx - cx)) + 0.5, 0, 1)[..., None]


def _backdrop(rng: np.random.Generator) -> np.ndarray:
    """A muted colour with a gentle linear shade: unlike a texture, it looks the same around an object wherever
    the object is, so a region's appearance does not change along its path (and cannot stand in for time)."""
    base = rng.uniform(0.3, 0.7) + rng.uniform(-0.08, 0.08, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = (np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5) / SIZE - 0.5
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    return np.clip(base + rng.uniform(0.05, 0.15) * ramp, 0, 1).astype(np.float32)


def _solid_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour (one channel high, one low, one anywhere) that stands out from the muted backdrop."""
    return rng.permutation(np.array([rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.15), rng.uniform(0.0, 1.0)]))


@dataclass
class RelationalVideo:
    """One rendered video: uint8 frames ``[T, H, W, 3]``, pixel boxes ``[T, 2, 4]`` and the objects' coverage
    ``[T, 2, H, W]`` (True where more than half of a pixel shows the object, before occlusion)."""

    frames: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


def render(cls: str, index: int) -> RelationalVideo:
    """Draw video ``index`` of ``cls``: a textured backdrop and two objects of random shape, size and colour.
    A reversed class gets the forward video's frames in reverse order (same pixels, same boxes)."""
    for forward, backward in RELATION_PAIRS:
        if cls == backward:
            video = render(forward, index)
            return RelationalVideo(video.frames[::-1].copy(), video.boxes[::-1].copy(), video.masks[::-1].copy())
    geometry = scene(cls, index)
    rng = np.random.default_rng(_seed(cls, index) + [1])
    background = _backdrop(rng)
    colours = [_solid_colour(rng).astype(np.float32) for _ in range(2)]
    frames, masks = [], []
    for centres in geometry.centres:
        frame = background
        coverage = []
        for obj in range(2):
            alpha = _shape_mask(geometry.shapes[obj], *centres[obj], geometry.radii[obj])
            frame = frame * (1 - alpha) + colours[obj] * alpha
            coverage.append(alpha[..., 0] > 0.5)
        frames.append(frame)
        masks.append(np.stack(coverage))
    pixels = np.round(np.clip(np.stack(frames), 0, 1) * 255).astype(np.uint8)
    return RelationalVideo(pixels, geometry.boxes(), np.stack(masks))


# ----------------------------------------------------------------------------------------------------------
# atomic, idempotent generation


def plan() -> list[tuple[str, int, str, str]]:
    """(class, index, relative path, split) of every video, in CSV order."""
    return [
        (cls, i, f"{cls}/{cls}_{i:02d}.mp4", SPLIT_OF_INDEX[i]) for cls in CLASSES for i in range(VIDEOS_PER_CLASS)
    ]


def box_rows(key: str, boxes: np.ndarray) -> list[list]:
    """Box CSV rows of one video (``boxes [T, 2, 4]`` pixels), frame by frame, track 0 then 1."""
    return [
        [key, frame, *(f"{v:.2f}" for v in boxes[frame, track]), "1.0", track]
        for frame in range(len(boxes))
        for track in range(boxes.shape[1])
    ]


def _marker_content() -> dict:
    return {
        "generator": "vidfeat.pipelines.relational",
        "version": GENERATOR_VERSION,
        "classes": CLASSES,
        "relation_pairs": [list(p) for p in RELATION_PAIRS],
        "videos_per_class": VIDEOS_PER_CLASS,
        "size": SIZE,
        "fps": FPS,
        "frames": N_FRAMES,
    }


def is_complete(root: Path) -> bool:
    """True when root holds a finished relational dataset of the current generator version."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker != _marker_content() or not (root / LIST_CSV).is_file() or not (root / BOXES_CSV).is_file():
        return False
    return all((root / rel).is_file() and (root / rel).stat().st_size > 0 for _, _, rel, _ in plan())


def generate_into(target: Path) -> None:
    """Write all videos, both CSVs and (last) the marker into an existing empty folder."""
    entries = plan()
    for cls in CLASSES:
        (target / cls).mkdir()

    def work(entry: tuple[str, int, str, str]) -> list[list]:
        cls, index, rel, _ = entry
        video = render(cls, index)
        encode_frames(video.frames, target / rel, fps=FPS)
        return box_rows(rel.rsplit(".", 1)[0], video.boxes)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        rows = list(pool.map(work, entries))
    with open(target / LIST_CSV, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        writer.writerows([rel, cls, split] for cls, _, rel, split in entries)
    with open(target / BOXES_CSV, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(BOXES_HEADER)
        for video_rows in rows:
            writer.writerows(video_rows)
    (target / MARKER).write_text(json.dumps(_marker_content(), indent=1) + "\n")


def ensure_relational(root: Path | str = DEFAULT_ROOT) -> Path:
    """Generate the relational dataset into ``root`` unless a complete one of this version is there; returns root."""
    return ensure_generated(root, "relational", MARKER, is_complete, generate_into)
