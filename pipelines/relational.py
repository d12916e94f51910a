"""Relational benchmarks: two objects move and the class is a relation between them over time, with ground-truth
boxes. Two benchmarks share the renderer, the layout and the encoding, and test the two halves of relational
reasoning:

* ``relational``: **geometry decides, appearance is a distractor.** Classes come in three pairs, and the second
  class of each pair is the first one's frames *in reverse order*:

  * ``approach`` / ``separate``: the distance between the objects shrinks / grows (either or both may move);
  * ``pass_left`` / ``pass_right``: one object travels in a straight line past the other and passes on its left /
    right, seen in its own direction of motion (reversing time reverses the direction, so it flips the side);
  * ``orbit_cw`` / ``orbit_ccw``: the two objects circle their common centre clockwise / anticlockwise on screen.

  Shapes, colours, sizes, layout, speeds and the backdrop are drawn per video, so every video's objects look
  different and no single frame or object tells the class: only how the two boxes move relative to each other.
* ``relational_roles``: **appearance decides who does what.** Objects come in two recognisable kinds, a ``ball``
  (a warm-coloured disk) and a ``block`` (a cool-coloured square), and one object moves towards or away from the
  other, which barely moves: ``ball_approaches_block``, ``block_approaches_ball``, ``ball_leaves_block``,
  ``block_leaves_ball``. A ``leaves`` video is the ``approaches`` video of the same index in reverse, and the two
  ``approaches`` videos of an index have the very same boxes (and backdrop and sizes) with the kinds swapped.

In both, the set of frames is identical between a class and its reversal, so a bag of frames or of regions cannot
beat chance between them; in ``relational_roles`` the boxes are identical between the two kind assignments, so
geometry alone cannot beat chance there either. Videos are encoded like the sample dataset (intra-only MPEG-4 at
a fixed quantiser, via :func:`vidfeat.pipelines.sample.encode_frames`), so decoded frames carry no codec trace of
temporal order.

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

from vidfeat.features.errors import UserError
from vidfeat.pipelines.sample import box_mask, disk_mask, encode_frames, ensure_generated

GENERATOR_VERSION = 2
LIST_CSV = "relational.csv"
BOXES_CSV = "boxes.csv"
MARKER = ".vidfeat-relational.json"
SIZE = 128  # square frames, a multiple of 16 so the encoder needs no padding
FPS = 8
N_FRAMES = 16  # 2 s
SHAPES = ("disk", "square", "diamond")
BOXES_HEADER = ["video", "frame", "x1", "y1", "x2", "y2", "score", "track"]
_SEED = 20240923
_MARGIN = 2.0  # pixels kept between an object and the frame border


# ----------------------------------------------------------------------------------------------------------
# geometry: where the two objects are in every frame (pixel coordinates; pixel i covers [i, i+1))


@dataclass(frozen=True)
class Scene:
    """The two objects of one video: centres ``[T, 2, 2]`` (x, y per frame and object), radii ``[2]`` (half the
    box side), shapes and RGB colours ``[2, 3]`` in [0, 1]. Object 0 and 1 are the box CSV's tracks 0 and 1."""

    centres: np.ndarray
    radii: np.ndarray
    shapes: tuple[str, str]
    colours: np.ndarray

    def boxes(self) -> np.ndarray:
        """``[T, 2, 4]`` x1 y1 x2 y2 pixel boxes: exactly the extent of each drawn shape."""
        r = self.radii[None, :, None]
        return np.clip(np.concatenate([self.centres - r, self.centres + r], axis=-1), 0, SIZE)

    def reversed(self) -> "Scene":
        return Scene(self.centres[::-1].copy(), self.radii, self.shapes, self.colours)

    def swapped(self) -> "Scene":
        """The same scene with the objects' track numbers exchanged."""
        return Scene(self.centres[:, ::-1].copy(), self.radii[::-1].copy(), self.shapes[::-1], self.colours[::-1])


def _ease(rng: np.random.Generator) -> np.ndarray:
    """Progress 0 -> 1 over the frames, somewhere between constant speed and smooth start/stop."""
    p = np.linspace(0, 1, N_FRAMES)
    a = rng.uniform(0, 1)
    return (1 - a) * p + a * p * p * (3 - 2 * p)


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


def _approach(
    rng: np.random.Generator, radii: np.ndarray, share: float | None = None, drift: float = 0.1 * SIZE
) -> np.ndarray:
    """Distance shrinks from far to nearly touching along a random axis; either or both objects move (``share``:
    how much of the closing motion is object 0's, random unless given), and the pair drifts as a whole by up to
    ``drift`` pixels."""
    u = _unit(rng.uniform(0, 2 * np.pi))
    near = radii.sum() + rng.uniform(2, 6)
    far = rng.uniform(0.45, 0.55) * SIZE
    drawn = rng.uniform(0, 1)  # drawn even when given, so the draws after it do not depend on `share`
    share = drawn if share is None else share
    drift = _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0, drift)
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


def _place(rng: np.random.Generator, relative: np.ndarray, radii: np.ndarray, what: str) -> np.ndarray:
    """Move a motion ``[T, 2, 2]`` around the origin to a random spot where both objects stay inside the frame."""
    lo = (radii[None, :, None] + _MARGIN - relative).max(axis=(0, 1))
    hi = (SIZE - radii[None, :, None] - _MARGIN - relative).min(axis=(0, 1))
    if np.any(lo > hi):
        raise AssertionError(f"relational: {what} does not fit the frame; the motion ranges are off")
    return relative + rng.uniform(lo, hi)[None, None]


def _solid_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour (one channel high, one low, one anywhere) that stands out from the muted backdrop."""
    return rng.permutation(np.array([rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.15), rng.uniform(0.0, 1.0)]))


# What a kind looks like in relational_roles: its shape, and the channel order (red, green, blue) of its colour:
# a ball is red to orange to yellow, a block blue to cyan; within a kind, hue and size vary per video.
KINDS = {"ball": ("disk", [0, 1, 2]), "block": ("square", [2, 1, 0])}


def _kind_colour(rng: np.random.Generator, kind: str) -> np.ndarray:
    high, middle, low = rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.7), rng.uniform(0.0, 0.15)
    colour = np.empty(3)
    colour[KINDS[kind][1]] = [high, middle, low]
    return colour


@dataclass(frozen=True)
class Benchmark:
    """One generated relational dataset: its classes, how many videos of each, and how a forward scene is drawn.

    ``pairs`` are (forward class, reversed class): a reversed class is its forward class's video of the same index
    played backwards. The same index has the same split in every class, so twins never straddle splits.
    """

    name: str
    pairs: tuple[tuple[str, str], ...]
    videos_per_class: int
    split_of_index: tuple[str, ...]

    @property
    def classes(self) -> list[str]:
        return sorted(c for pair in self.pairs for c in pair)

    @property
    def default_root(self) -> Path:
        return Path("data") / self.name

    def seed(self, forward: str, index: int) -> list[int]:
        """Seed of everything drawn for video ``index`` of a forward class (``+ [0]`` geometry, ``+ [1]`` backdrop)."""
        return [_SEED, [f for f, _ in self.pairs].index(forward), index]

    def forward_scene(self, forward: str, index: int) -> Scene:
        rng = np.random.default_rng(self.seed(forward, index) + [0])
        radii = rng.uniform(9, 15, size=2)
        shapes = (str(rng.choice(SHAPES)), str(rng.choice(SHAPES)))
        colours = np.stack([_solid_colour(rng), _solid_colour(rng)])
        centres = _place(rng, _MOTIONS[forward](rng, radii), radii, f"{forward} video {index}")
        drawn = Scene(centres, radii, shapes, colours)
        return drawn.swapped() if rng.random() < 0.5 else drawn  # which track is the mover must not be a cue

    def scene(self, cls: str, index: int) -> Scene:
        """Video ``index`` of class ``cls`` (cheap: nothing is drawn); the second class of a pair is the first
        class's scene of the same index, reversed in time."""
        for forward, backward in self.pairs:
            if cls == forward:
                return self.forward_scene(forward, index)
            if cls == backward:
                return self.forward_scene(forward, index).reversed()
        raise UserError(f"unknown {self.name} class {cls!r}; classes: {', '.join(self.classes)}")

    def render(self, cls: str, index: int) -> "RelationalVideo":
        """Draw video ``index`` of ``cls`` on its backdrop. A reversed class gets the forward video's frames in
        reverse order (same pixels, same boxes)."""
        for forward, backward in self.pairs:
            if cls == backward:
                video = self.render(forward, index)
                return RelationalVideo(video.frames[::-1].copy(), video.boxes[::-1].copy(), video.masks[::-1].copy())
        scene = self.scene(cls, index)
        backdrop = _backdrop(np.random.default_rng(self.seed(cls, index) + [1]))
        return draw(scene, backdrop)

    def plan(self) -> list[tuple[str, int, str, str]]:
        """(class, index, relative path, split) of every video, in CSV order."""
        return [
            (cls, i, f"{cls}/{cls}_{i:02d}.mp4", self.split_of_index[i])
            for cls in self.classes
            for i in range(self.videos_per_class)
        ]

    def marker_content(self) -> dict:
        return {
            "generator": "vidfeat.pipelines.relational",
            "benchmark": self.name,
            "version": GENERATOR_VERSION,
            "classes": self.classes,
            "relation_pairs": [list(p) for p in self.pairs],
            "videos_per_class": self.videos_per_class,
            "size": SIZE,
            "fps": FPS,
            "frames": N_FRAMES,
        }

    def is_complete(self, root: Path) -> bool:
        """True when root holds a finished dataset of this benchmark and the current generator version."""
        try:
            marker = json.loads((root / MARKER).read_text())
        except (OSError, ValueError):
            return False
        if marker != self.marker_content() or not (root / LIST_CSV).is_file() or not (root / BOXES_CSV).is_file():
            return False
        return all((root / rel).is_file() and (root / rel).stat().st_size > 0 for _, _, rel, _ in self.plan())

    def generate_into(self, target: Path) -> None:
        """Write all videos, both CSVs and (last) the marker into an existing empty folder."""
        entries = self.plan()
        for cls in self.classes:
            (target / cls).mkdir()

        def work(entry: tuple[str, int, str, str]) -> list[list]:
            cls, index, rel, _ = entry
            video = self.render(cls, index)
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
        (target / MARKER).write_text(json.dumps(self.marker_content(), indent=1) + "\n")

    def ensure(self, root: Path | str | None = None) -> Path:
        """Generate the dataset into ``root`` (default ``data/<name>``) unless a complete one of this version is
        there; returns root."""
        return ensure_generated(
            self.default_root if root is None else root, self.name, MARKER, self.is_complete, self.generate_into
        )


class RolesBenchmark(Benchmark):
    """``relational_roles``: the geometry of an index is drawn once and shared by both kind assignments."""

    def seed(self, forward: str, index: int) -> list[int]:
        return [_SEED, len(GEOMETRY.pairs), index]  # not the class: both "approaches" classes share it

    def forward_scene(self, forward: str, index: int) -> Scene:
        mover, other = forward.split("_approaches_")
        rng = np.random.default_rng(self.seed(forward, index) + [0])
        radii = rng.uniform(9, 15, size=2)
        looks = {kind: _kind_colour(rng, kind) for kind in KINDS}
        relative = _approach(rng, radii, share=1.0, drift=0.02 * SIZE)  # object 0 moves, object 1 barely drifts
        centres = _place(rng, relative, radii, f"{self.name} video {index}")
        drawn = Scene(centres, radii, (KINDS[mover][0], KINDS[other][0]), np.stack([looks[mover], looks[other]]))
        return drawn.swapped() if rng.random() < 0.5 else drawn


GEOMETRY = Benchmark(
    name="relational",
    pairs=(("approach", "separate"), ("pass_left", "pass_right"), ("orbit_cw", "orbit_ccw")),
    videos_per_class=32,
    split_of_index=("train",) * 20 + ("val",) * 6 + ("test",) * 6,
)
ROLES = RolesBenchmark(
    name="relational_roles",
    pairs=(("ball_approaches_block", "ball_leaves_block"), ("block_approaches_ball", "block_leaves_ball")),
    videos_per_class=64,
    split_of_index=("train",) * 40 + ("val",) * 12 + ("test",) * 12,
)
BENCHMARKS = {b.name: b for b in (GEOMETRY, ROLES)}


# ----------------------------------------------------------------------------------------------------------
# drawing


def _shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage [SIZE, SIZE, 1]; a pixel is more than half covered exactly when its centre lies
    inside the shape, which lies inside the box centre +- r. (The sample's masks put pixel centres at integers.)"""
    if shape == "disk":
        return disk_mask(SIZE, cy - 0.5, cx - 0.5, r)
    if shape == "square":
        return box_mask(SIZE, cy - 0.5, cx - 0.5, r)
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


@dataclass
class RelationalVideo:
    """One rendered video: uint8 frames ``[T, H, W, 3]``, pixel boxes ``[T, 2, 4]`` and the objects' coverage
    ``[T, 2, H, W]`` (True where more than half of a pixel shows the object, before occlusion)."""

    frames: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


def draw(scene: Scene, backdrop: np.ndarray) -> RelationalVideo:
    """Paint the scene's two objects (object 1 on top) over ``backdrop [SIZE, SIZE, 3]`` in every frame."""
    frames, masks = [], []
    for centres in scene.centres:
        frame = backdrop
        coverage = []
        for obj in range(2):
            alpha = _shape_mask(scene.shapes[obj], *centres[obj], scene.radii[obj])
            frame = frame * (1 - alpha) + scene.colours[obj].astype(np.float32) * alpha
            coverage.append(alpha[..., 0] > 0.5)
        frames.append(frame)
        masks.append(np.stack(coverage))
    pixels = np.round(np.clip(np.stack(frames), 0, 1) * 255).astype(np.uint8)
    return RelationalVideo(pixels, scene.boxes(), np.stack(masks))


def box_rows(key: str, boxes: np.ndarray) -> list[list]:
    """Box CSV rows of one video (``boxes [T, 2, 4]`` pixels), frame by frame, track 0 then 1."""
    return [
        [key, frame, *(f"{v:.2f}" for v in boxes[frame, track]), "1.0", track]
        for frame in range(len(boxes))
        for track in range(boxes.shape[1])
    ]
