"""Embedded sample dataset: small synthetic videos generated on first use, so the whole pipeline runs offline.

Two class pairs differ ONLY in temporal order (each `disappear` video is an `appear` video's frames reversed,
likewise `zoom_out`/`zoom_in`): a bag-of-frames model cannot beat chance on them, a temporal head can. Two
appearance classes are separable from any single frame. Frames are drawn with numpy from per-video seeds and
encoded with ffmpeg's bit-exact MPEG-4 Part 2 encoder, so the same ffmpeg build yields identical bytes. Every
frame is an intra frame at a fixed quantiser, so each frame is coded on its own: a reversed video decodes to
exactly the reversed frames, and codec artefacts cannot leak temporal order to a bag-of-frames model.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np

from vidfeat.extract.ffmpeg import ffmpeg_binary
from vidfeat.pipelines.datasets import DatasetError

GENERATOR_VERSION = 1
DEFAULT_ROOT = Path("data") / "sample"
SAMPLE_CSV = "sample.csv"
MARKER = ".vidfeat-sample.json"
SIZE = 96  # square frames, a multiple of 16 so the encoder needs no padding
FPS = 10
N_FRAMES = 25  # 2.5 s
VIDEOS_PER_CLASS = 12
SPLIT_OF_INDEX = ["train"] * 8 + ["val"] * 2 + ["test"] * 2  # same index -> same split in both classes of a pair
REVERSAL_PAIRS: list[tuple[str, str]] = [("appear", "disappear"), ("zoom_in", "zoom_out")]
APPEARANCE_CLASSES: list[str] = ["stripes", "checkers"]
CLASSES: list[str] = sorted([c for pair in REVERSAL_PAIRS for c in pair] + APPEARANCE_CLASSES)
_SEED = 20240611


# ----------------------------------------------------------------------------------------------------------
# frame drawing (float32 RGB in [0, 1], shape [T, H, W, 3])


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a coarse [gh, gw, C] grid to [h, w, C] (smooth 'natural' variation)."""
    gh, gw = grid.shape[:2]
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    return _bilinear(grid, ys[:, None], xs[None, :])


def _bilinear(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample img [H, W, C] at float coordinates (broadcast ys/xs), clamped at the border."""
    h, w = img.shape[:2]
    ys = np.clip(ys, 0, h - 1)
    xs = np.clip(xs, 0, w - 1)
    y0 = np.minimum(np.floor(ys).astype(np.int64), h - 2)
    x0 = np.minimum(np.floor(xs).astype(np.int64), w - 2)
    fy = (ys - y0)[..., None]
    fx = (xs - x0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multi-octave coloured noise around a random base colour: looks like a blurry natural backdrop."""
    base = rng.uniform(0.2, 0.8, size=3)
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    for cells, amp in ((3, 0.25), (7, 0.12), (17, 0.06)):
        img = img + amp * _upsample(rng.uniform(-1, 1, size=(cells + 1, cells + 1, 3)), size, size)
    luminance_grain = _upsample(rng.uniform(-1, 1, size=(size // 2, size // 2, 1)), size, size)
    return np.clip(img + 0.04 * luminance_grain, 0, 1)


def disk_mask(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    """Anti-aliased disk [size, size, 1] in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip(r - dist + 0.5, 0, 1)[..., None]


def box_mask(size: int, cy: float, cx: float, half: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.maximum(np.abs(yy - cy), np.abs(xx - cx))
    return np.clip(half - d + 0.5, 0, 1)[..., None]


def _object_colour(rng: np.random.Generator, size: int) -> np.ndarray:
    """A saturated colour with a gentle gradient so the object has some structure of its own."""
    c0 = rng.permutation(np.array([rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.3), rng.uniform(0.0, 1.0)]))
    c1 = np.clip(c0 + rng.uniform(-0.3, 0.3, size=3), 0, 1)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    return (c0 * (1 - t) + c1 * t).astype(np.float32) * np.ones((1, size, 1), np.float32)


def _smoothstep(p: np.ndarray) -> np.ndarray:
    return p * p * (3 - 2 * p)


def appear_frames(rng: np.random.Generator) -> np.ndarray:
    """A coloured shape fades in and grows on a textured backdrop (reverse it for `disappear`)."""
    bg = _texture(rng, SIZE)
    colour = _object_colour(rng, SIZE)
    radius = rng.uniform(16, 28)
    cy, cx = rng.uniform(radius + 4, SIZE - radius - 4, size=2)
    box = rng.random() < 0.5
    frames = []
    for p in _smoothstep(np.linspace(0, 1, N_FRAMES, dtype=np.float32)):
        r = radius * (0.25 + 0.75 * p)
        mask = box_mask(SIZE, cy, cx, r * 0.85) if box else disk_mask(SIZE, cy, cx, r)
        alpha = mask * p
        frames.append(bg * (1 - alpha) + colour * alpha)
    return np.stack(frames)


def zoom_in_frames(rng: np.random.Generator) -> np.ndarray:
    """The camera zooms from a wide view towards a point of a cluttered scene (reverse it for `zoom_out`)."""
    big = 2 * SIZE
    scene = _texture(rng, big)
    for _ in range(int(rng.integers(4, 8))):
        r = rng.uniform(8, 30)
        cy, cx = rng.uniform(r, big - r, size=2)
        mask = disk_mask(big, cy, cx, r) if rng.random() < 0.5 else box_mask(big, cy, cx, r)
        scene = scene * (1 - mask) + _object_colour(rng, big) * mask
    end_scale = rng.uniform(0.3, 0.45)
    fy, fx = rng.uniform(0.35, 0.65, size=2) * big
    grid = np.arange(SIZE, dtype=np.float32) + 0.5
    frames = []
    for p in np.linspace(0, 1, N_FRAMES, dtype=np.float32):
        scale = end_scale**p  # geometric: constant apparent zoom speed
        window = big * scale
        cy = big / 2 + (fy - big / 2) * p
        cx = big / 2 + (fx - big / 2) * p
        cy = np.clip(cy, window / 2, big - window / 2)
        cx = np.clip(cx, window / 2, big - window / 2)
        ys = cy - window / 2 + grid * (window / SIZE) - 0.5
        xs = cx - window / 2 + grid * (window / SIZE) - 0.5
        frames.append(_bilinear(scene, ys[:, None], xs[None, :]))
    return np.stack(frames)


def stripes_frames(rng: np.random.Generator) -> np.ndarray:
    """Slowly drifting oriented colour stripes: recognisable from any single frame."""
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(8, 20)
    c0, c1 = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
    drift = rng.uniform(-0.6, 0.6)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    coord = xx * np.cos(angle) + yy * np.sin(angle)
    bg = _texture(rng, SIZE)
    frames = []
    for t in range(N_FRAMES):
        s = 0.5 + 0.5 * np.sin(2 * np.pi * (coord + drift * t) / period)
        frames.append(0.8 * (c0 * s[..., None] + c1 * (1 - s[..., None])) + 0.2 * bg)
    return np.stack(frames)


def checkers_frames(rng: np.random.Generator) -> np.ndarray:
    """A slightly rotated, slowly panning checkerboard in two random colours."""
    angle = rng.uniform(-0.4, 0.4)
    cell = rng.uniform(7, 16)
    c0, c1 = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
    vy, vx = rng.uniform(-0.5, 0.5, size=2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    u = xx * np.cos(angle) - yy * np.sin(angle)
    v = xx * np.sin(angle) + yy * np.cos(angle)
    bg = _texture(rng, SIZE)
    frames = []
    for t in range(N_FRAMES):
        board = (np.floor((u + vx * t) / cell) + np.floor((v + vy * t) / cell)) % 2
        frames.append(0.85 * (c0 * board[..., None] + c1 * (1 - board[..., None])) + 0.15 * bg)
    return np.stack(frames)


_GENERATORS = {
    "appear": appear_frames,
    "zoom_in": zoom_in_frames,
    "stripes": stripes_frames,
    "checkers": checkers_frames,
}


def class_frames(cls: str, index: int) -> np.ndarray:
    """uint8 frames [T, H, W, 3] of video `index` of class `cls`; the second class of a pair reuses the first
    class's frames for the same index, reversed."""
    for forward, backward in REVERSAL_PAIRS:
        if cls == backward:
            return class_frames(forward, index)[::-1].copy()
    seed = [_SEED, CLASSES.index(cls), index]
    frames = _GENERATORS[cls](np.random.default_rng(seed))
    return np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# encoding and atomic, idempotent generation


def encode_frames(frames: np.ndarray, path: Path, fps: int = FPS) -> None:
    """Pipe uint8 RGB frames [T, H, W, 3] into ffmpeg; bit-exact flags keep the output byte-reproducible and
    intra-only coding (-g 1) at fixed quantiser makes each decoded frame independent of its neighbours."""
    t, h, w, _ = frames.shape
    cmd = [
        ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-nostdin",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
        "-sws_flags", "bilinear+accurate_rnd+bitexact",
        "-c:v", "mpeg4", "-q:v", "2", "-g", "1", "-bf", "0", "-pix_fmt", "yuv420p", "-threads", "1",
        "-flags", "+bitexact", "-fflags", "+bitexact", "-map_metadata", "-1",
        "-y", str(path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise DatasetError(
            f"sample: ffmpeg ({cmd[0]}) failed to encode {path}: {proc.stderr.decode(errors='replace').strip()}\n"
            "check that this ffmpeg build has the 'mpeg4' encoder (`ffmpeg -encoders`), "
            "or put another ffmpeg on PATH"
        )


def _plan() -> list[tuple[str, int, str, str]]:
    """(class, index, relative path, split) for every sample video, in CSV order."""
    return [
        (cls, i, f"{cls}/{cls}_{i:02d}.mp4", SPLIT_OF_INDEX[i]) for cls in CLASSES for i in range(VIDEOS_PER_CLASS)
    ]


def _marker_content() -> dict:
    return {
        "generator": "vidfeat.pipelines.sample",
        "version": GENERATOR_VERSION,
        "classes": CLASSES,
        "reversal_pairs": [list(p) for p in REVERSAL_PAIRS],
        "videos_per_class": VIDEOS_PER_CLASS,
        "size": SIZE,
        "fps": FPS,
        "frames": N_FRAMES,
    }


def is_complete(root: Path) -> bool:
    """True when root holds a finished sample of the current generator version."""
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("version") != GENERATOR_VERSION or not (root / SAMPLE_CSV).is_file():
        return False
    return all((root / rel).is_file() and (root / rel).stat().st_size > 0 for _, _, rel, _ in _plan())


def generate_into(target: Path) -> None:
    """Write all videos, the CSV and (last) the marker into an existing empty folder."""
    plan = _plan()
    for cls in CLASSES:
        (target / cls).mkdir()

    def work(entry: tuple[str, int, str, str]) -> None:
        cls, index, rel, _ = entry
        encode_frames(class_frames(cls, index), target / rel)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(work, plan))
    with open(target / SAMPLE_CSV, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        writer.writerows([rel, cls, split] for cls, _, rel, split in plan)
    (target / MARKER).write_text(json.dumps(_marker_content(), indent=1) + "\n")


def ensure_sample(root: Path | str = DEFAULT_ROOT) -> Path:
    """Generate the sample dataset into `root` unless a complete one of this version is there; returns root."""
    return ensure_generated(root, "sample", MARKER, is_complete, generate_into)


@dataclass(frozen=True)
class IndexedVideo:
    """One video of a generated list dataset whose classes share their video indices (crossing, motion)."""

    index: int
    label: str
    path: str  # relative to the dataset root: <label>/<index:03d>.mp4
    split: str


def indexed_plan(classes: Sequence[str], splits: Sequence[str]) -> list[IndexedVideo]:
    """Video ``i`` of every class, in split ``splits[i]``, in list order (index, then class)."""
    return [IndexedVideo(index, cls, f"{cls}/{index:03d}.mp4", split)
            for index, split in enumerate(splits) for cls in classes]


def write_indexed_videos(
    root: Path, classes: Sequence[str], splits: Sequence[str], videos: Callable[[int], Sequence[np.ndarray]],
    fps: int, list_csv: str,
) -> Path:
    """Encode ``videos(i)`` (one uint8 ``[T, H, W, 3]`` array per class, in class order) for every index into
    ``root/<class>/<i:03d>.mp4`` and write the list ``root/list_csv`` (``path,label,split``); returns the list.
    Indices are drawn on a few threads (ffmpeg does the work); ``videos`` must be safe to call from them."""
    plan = indexed_plan(classes, splits)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)

    def work(index: int) -> None:
        entries = plan[len(classes) * index:len(classes) * (index + 1)]
        for entry, frames in zip(entries, videos(index), strict=True):
            encode_frames(np.ascontiguousarray(frames), root / entry.path, fps)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(work, range(len(splits))))
    with open(root / list_csv, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        writer.writerows([e.path, e.label, e.split] for e in plan)
    return root / list_csv


def split_plan(train: int, val: int, test: int) -> list[str]:
    """The split of each video index of a generated task: the first ``train`` indices, then ``val``, then ``test``."""
    return ["train"] * train + ["val"] * val + ["test"] * test


@dataclass(frozen=True)
class IndexedBenchmark:
    """A generated list dataset of a fixed size whose classes share their video indices (the crossing and motion
    tasks, ``--dataset NAME``): the videos, the list, and last a marker saying what was generated, so a dataset of
    another size or generator version is regenerated and an interrupted one never passes for complete. Each
    family sets the class attributes, ``classes`` and ``write``."""

    task: str
    train: int = 40
    val: int = 8
    test: int = 20

    generator: ClassVar[str]
    version: ClassVar[int]
    marker: ClassVar[str]
    list_csv: ClassVar[str]
    size: ClassVar[int]
    frames: ClassVar[int]
    fps: ClassVar[int]

    @property
    def name(self) -> str:
        return self.task

    @property
    def classes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def write(self, root: Path, splits: list[str], seed: int) -> Path:
        """Write the videos of ``splits`` (one split per index) and the list into ``root``; returns the list."""
        raise NotImplementedError

    def splits(self) -> list[str]:
        return split_plan(self.train, self.val, self.test)

    def marker_content(self) -> dict:
        return {"generator": self.generator, "task": self.task, "version": self.version,
                "classes": list(self.classes), "train": self.train, "val": self.val, "test": self.test,
                "size": self.size, "frames": self.frames, "fps": self.fps}

    def describe(self) -> str:
        """The layout line of its dataset adapter."""
        return (f"<root>/<class>/<NNN>.mp4 and <root>/{self.list_csv} ('path,label,split'); {self.size} px, "
                f"{self.frames} frames at {self.fps} fps,\n{self.train}/{self.val}/{self.test} train/val/test per class.")

    def is_complete(self, root: Path) -> bool:
        """True when root holds a finished dataset of this task, size and generator version."""
        try:
            marker = json.loads((root / self.marker).read_text())
        except (OSError, ValueError):
            return False
        if marker != self.marker_content() or not (root / self.list_csv).is_file():
            return False
        return all((root / v.path).is_file() and (root / v.path).stat().st_size > 0
                   for v in indexed_plan(self.classes, self.splits()))

    def generate_into(self, target: Path) -> None:
        """All videos, the list and (last) the marker, into an existing empty folder."""
        self.write(target, self.splits(), seed=0)
        (target / self.marker).write_text(json.dumps(self.marker_content(), indent=1) + "\n")

    def ensure(self, root: Path | str) -> Path:
        """Generate the dataset into ``root`` unless a complete one of this version is there; returns root."""
        return ensure_generated(root, self.name, self.marker, self.is_complete, self.generate_into)


def ensure_generated(
    root: Path | str, name: str, marker: str, is_complete: Callable[[Path], bool], generate_into: Callable[[Path], None]
) -> Path:
    """Generate an embedded dataset into `root` unless `is_complete(root)`; returns root.

    Generation happens in a temporary sibling folder that is renamed into place, so an interrupted run never
    leaves a half-written dataset behind. A folder that is not ours (no `marker` file) is never overwritten.
    """
    root = Path(root).expanduser().absolute()
    if is_complete(root):
        return root
    if root.exists():
        if not root.is_dir():
            raise DatasetError(f"{name}: {root} exists and is not a folder; choose another --data-root")
        if any(root.iterdir()) and not (root / marker).exists():
            raise DatasetError(
                f"{name}: {root} is not empty and holds no vidfeat {name} dataset (no {marker}); "
                "choose an empty or new folder as --data-root, or delete this one"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()  # unlike tempfile.mkdtemp this honours the umask, so the result has normal permissions
    try:
        generate_into(tmp)
        if root.exists():
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex}"
            os.replace(root, old)
            shutil.rmtree(old)
        try:
            os.replace(tmp, root)
        except OSError:
            if not is_complete(root):  # another process finished first -> fine; anything else is an error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
