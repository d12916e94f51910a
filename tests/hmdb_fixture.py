"""Build an HMDB51-shaped tree in the official on-disk formats, with the awkward file names the real archive has.

The video writer is a callback: dataset-adapter tests pass `write_placeholder` (adapters never decode), other
tests pass a real encoder (e.g. from tests/videogen.py) to get a decodable HMDB51-shaped dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

DEFAULT_CLASSES: tuple[str, ...] = ("brush_hair", "cartwheel", "fall_floor")
# '{c}' is replaced by the class; every character HMDB51 names use (# ( ) ! & ' , spaces, dots) appears.
NAME_TEMPLATES: tuple[str, ...] = (
    "April_09_{c}_u_nm_np1_ba_goo_0",
    "Trailer_-_Die_Fremde_(2010)_{c}_h_nm_np1_fr_goo_1",
    "Wo_ist_Bob!_{c}_f_nm_np1_ri_med_2",
    "Tom_&_Jerry's,_{c}_u_cm_np1_le_bad_3",
    "a name with spaces_{c}_f_cm_np1_ba_goo_4",
    "#20_Rhythm_{c}_h_nm_np2_ri_goo_5",
    "Mr._Bean_{c}_f_cm_np1_ri_med_6",
)
SPLIT_DIR = "testTrainMulti_7030_splits"
_ID_TO_SPLIT = {0: None, 1: "train", 2: "test"}


def write_placeholder(path: Path) -> None:
    """A tiny non-video file: enough for adapters, which only look at names."""
    path.write_bytes(b"not a real video\n")


def split_id(index: int, fold: int) -> int:
    """Official id (0 unused, 1 train, 2 test) of the index-th video of a class in a fold; varies across folds."""
    return (index + fold) % 3


@dataclass
class HmdbTree:
    root: Path  # what to pass as the dataset root
    videos_dir: Path  # <root> or <root>/hmdb51_org
    splits_dir: Path
    expected: dict[str, tuple[str, tuple[str | None, ...]]] = field(default_factory=dict)  # key -> (label, splits)
    unlisted: list[str] = field(default_factory=list)  # keys of videos that no split file mentions
    ghost_lines: int = 0  # split lines naming videos that are not on disk


def make_hmdb51_tree(
    root: Path,
    write_video: Callable[[Path], None] = write_placeholder,
    classes: Iterable[str] = DEFAULT_CLASSES,
    names: dict[str, list[str]] | None = None,
    nested: bool = False,
    per_class: int | None = None,
) -> HmdbTree:
    """Write videos and the three official split files per class.

    nested=True uses the `<root>/hmdb51_org/<class>/` layout the official archive extracts to. In each class the
    last video is left out of every split file, and each split file names one video that does not exist. Split
    files end lines with a trailing space (as the real ones do); fold 2 files use CRLF line endings.
    """
    root = Path(root)
    classes = list(classes)
    videos_dir = root / "hmdb51_org" if nested else root
    splits_dir = root / SPLIT_DIR
    splits_dir.mkdir(parents=True, exist_ok=True)
    tree = HmdbTree(root=root, videos_dir=videos_dir, splits_dir=splits_dir)
    for cls in classes:
        cls_names = list(names[cls]) if names and cls in names else [t.format(c=cls) for t in NAME_TEMPLATES]
        cls_names = cls_names[:per_class] if per_class is not None else cls_names
        (videos_dir / cls).mkdir(parents=True, exist_ok=True)
        for name in cls_names:
            write_video(videos_dir / cls / f"{name}.avi")
        listed = cls_names[:-1]
        for i, name in enumerate(cls_names):
            splits = tuple(_ID_TO_SPLIT[split_id(i, f)] for f in (1, 2, 3)) if name in listed else (None,) * 3
            tree.expected[f"{cls}/{name}"] = (cls, splits)
            if name not in listed:
                tree.unlisted.append(f"{cls}/{name}")
        for fold in (1, 2, 3):
            newline = "\r\n" if fold == 2 else "\n"
            lines = [f"{name}.avi {split_id(i, fold)} " for i, name in enumerate(listed)]
            lines.append(f"ghost_{cls}_not_on_disk.avi 1 ")
            (splits_dir / f"{cls}_test_split{fold}.txt").write_bytes((newline.join(lines) + newline).encode())
            tree.ghost_lines += 1
    return tree
