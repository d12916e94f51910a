"""Dataset adapters: turn an on-disk dataset layout into a flat list of videos with labels and per-fold splits.

Adapters never decode videos; they only read folder listings and the official split/annotation files, so a
broken layout is reported up front (with the layout that was expected) instead of halfway through extraction.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Protocol

from vidfeat.features.errors import UserError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv", ".wmv"}
)
SPLIT_VALUES: tuple[str, ...] = ("train", "val", "test")
HMDB51_URL = "https://serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database/"
UCF101_URL = "https://www.crcv.ucf.edu/data/UCF101.php"
_SHOW_MISSING = 5


class DatasetError(UserError):
    """A dataset could not be loaded; the message says what was expected, where we looked and what to do."""


@dataclass(frozen=True)
class VideoItem:
    key: str  # path relative to the videos root, POSIX '/', no extension; exact characters preserved
    path: Path
    label: str | None
    splits: tuple[str | None, ...]  # one entry per fold: "train" | "val" | "test" | None


@dataclass
class Dataset:
    name: str
    root: Path
    classes: list[str]
    n_folds: int
    items: list[VideoItem]
    # non-fatal oddities, e.g. split lines naming videos that are not on disk (also logged)
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """Provenance entry stored with extracted features."""
        return {"name": self.name, "root": str(self.root), "n_folds": self.n_folds, "classes": list(self.classes)}


class Adapter(Protocol):
    name: str
    layout: str

    def load(self, root: Path, list_file: Path | None, seed: int) -> Dataset: ...


# ----------------------------------------------------------------------------------------------------------
# helpers


def _abs(path: Path | str) -> Path:
    return Path(path).expanduser().absolute()


def is_video_file(path: Path) -> bool:
    """Video by extension (case-insensitive); hidden files such as macOS '._x.mp4' droppings are skipped."""
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _strip_video_ext(name: str) -> str:
    suffix = PurePosixPath(name).suffix
    return name[: -len(suffix)] if suffix.lower() in VIDEO_EXTENSIONS else name


def _key_for(path: Path, base: Path) -> str:
    return _strip_video_ext(path.relative_to(base).as_posix())


def _walk_videos(directory: Path) -> list[Path]:
    """All video files below `directory` (recursive, hidden entries skipped), sorted for determinism."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if is_video_file(Path(f)))
    return sorted(found)


def _fail(problem: str, adapter: Adapter, looked: Path | None = None) -> DatasetError:
    where = f"\nlooked in: {looked}" if looked is not None else ""
    return DatasetError(f"{adapter.name}: {problem}{where}\n\nexpected layout:\n{adapter.layout}")


def _read_lines(path: Path) -> list[str]:
    """Lines decoded like file names on disk (os.fsdecode) so names in split files match directory listings."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return [os.fsdecode(line).rstrip("\r") for line in data.split(b"\n")]


def _split_last_ws(line: str) -> tuple[str, str] | None:
    """'<name with spaces> <token>' -> (name, token); names keep every character but trailing whitespace."""
    m = re.match(r"^(.*\S)\s+(\S+)\s*$", line)
    return (m.group(1), m.group(2)) if m else None


class _CaseInsensitiveIndex:
    """Resolve relative paths exactly first, then case-insensitively (UCF101 lists disagree with disk on case)."""

    def __init__(self, base: Path, files: Iterable[Path]):
        self.exact = {f.relative_to(base).as_posix(): f for f in files}
        self.folded: dict[str, Path] = {}
        for rel, f in self.exact.items():
            self.folded.setdefault(rel.casefold(), f)

    def get(self, rel: str) -> Path | None:
        return self.exact.get(rel) or self.folded.get(rel.casefold())


def _sort_labels(labels: Iterable[str]) -> list[str]:
    """Numeric labels sort numerically ('2' < '10'); names sort alphabetically."""
    unique = set(labels)
    if unique and all(re.fullmatch(r"[+-]?\d+", s) for s in unique):
        return sorted(unique, key=int)
    return sorted(unique)


# ----------------------------------------------------------------------------------------------------------
# HMDB51


class Hmdb51Adapter:
    name = "hmdb51"
    n_folds = 3
    split_dir_name = "testTrainMulti_7030_splits"
    layout = f"""\
<root>/<class>/<name>.avi                       (or <root>/hmdb51_org/<class>/<name>.avi)
<root>/testTrainMulti_7030_splits/<class>_test_split{{1,2,3}}.txt
    one line per video: '<name>.avi <id>' with id 1 = train, 2 = test, 0 = unused in that fold
Get hmdb51_org.rar and test_train_splits.rar from {HMDB51_URL}
then: unrar x hmdb51_org.rar <root>/hmdb51_org/
      for f in <root>/hmdb51_org/*.rar; do unrar x "$f" <root>/hmdb51_org/; done
      unrar x test_train_splits.rar <root>/"""

    _split_file = re.compile(r"^(?P<cls>.+)_test_split(?P<fold>[123])\.txt$")
    _ids = {"0": None, "1": "train", "2": "test"}

    def _videos_root(self, root: Path) -> Path:
        nested = root / "hmdb51_org"
        if nested.is_dir() and any(p.is_dir() for p in nested.iterdir()):
            return nested
        return root

    def load(self, root: Path, list_file: Path | None, seed: int) -> Dataset:
        root = _abs(root)
        if not root.is_dir():
            raise _fail("dataset root does not exist or is not a directory", self, root)
        videos_root = self._videos_root(root)
        class_dirs = sorted(p for p in videos_root.iterdir() if p.is_dir() and not p.name.startswith("."))
        class_dirs = [p for p in class_dirs if p.name != self.split_dir_name]
        videos = {d.name: _walk_videos(d) for d in class_dirs}
        videos = {c: v for c, v in videos.items() if v}
        if not videos:
            rars = sorted(p.name for d in (root, root / "hmdb51_org") if d.is_dir() for p in d.glob("*.rar"))
            hint = f"\nfound unextracted archives ({', '.join(rars[:3])}...); extract them first" if rars else ""
            raise _fail(f"no <class>/<name>.avi videos found{hint}", self, videos_root)

        classes = sorted(videos)
        split_files = self._split_files(root, classes)
        warnings: list[str] = []
        no_videos = sorted({c for c, _ in split_files} - set(classes))
        if no_videos:
            warnings.append(f"split files for {len(no_videos)} classes without videos: {', '.join(no_videos[:5])}")

        items: list[VideoItem] = []
        unmatched: list[str] = []
        for cls in classes:
            index = _CaseInsensitiveIndex(videos_root / cls, videos[cls])
            per_video: dict[Path, list[str | None]] = {v: [None, None, None] for v in videos[cls]}
            for fold in (1, 2, 3):
                for name, value in self._parse_split_file(split_files[(cls, fold)]):
                    video = index.get(name)
                    if video is None:
                        unmatched.append(f"{cls}/{name}")
                        continue
                    per_video[video][fold - 1] = value
            items.extend(
                VideoItem(key=_key_for(v, videos_root), path=v, label=cls, splits=tuple(s))
                for v, s in per_video.items()
            )
        if unmatched:
            warnings.append(
                f"{len(unmatched)} split lines name videos that are not on disk, e.g. {unmatched[0]!r}"
            )
        for w in warnings:
            log.warning("hmdb51: %s", w)
        items.sort(key=lambda it: it.key)
        return Dataset(self.name, videos_root, classes, self.n_folds, items, warnings)

    def _split_files(self, root: Path, classes: list[str]) -> dict[tuple[str, int], Path]:
        """``(class, fold) -> <class>_test_split<fold>.txt``; every class needs all three."""
        split_dir = root / self.split_dir_name
        if not split_dir.is_dir():
            raise _fail(f"split folder {self.split_dir_name}/ is missing", self, split_dir)
        split_files: dict[tuple[str, int], Path] = {}
        for p in split_dir.iterdir():
            m = self._split_file.match(p.name)
            if m:
                split_files[(m["cls"], int(m["fold"]))] = p
        missing = [f"{c}_test_split{f}.txt" for c in classes for f in (1, 2, 3) if (c, f) not in split_files]
        if missing:
            raise _fail(f"{len(missing)} split files missing, e.g. {', '.join(missing[:_SHOW_MISSING])}", self,
                        split_dir)
        return split_files

    def _parse_split_file(self, path: Path) -> list[tuple[str, str | None]]:
        entries: dict[str, str | None] = {}
        for lineno, line in enumerate(_read_lines(path), start=1):
            if not line.strip():
                continue
            parts = _split_last_ws(line)
            if parts is None or parts[1] not in self._ids:
                raise DatasetError(
                    f"hmdb51: malformed line {lineno} in {_abs(path)}: {line!r}\n"
                    f"expected '<name>.avi <id>' with id 0 (unused), 1 (train) or 2 (test); "
                    f"re-extract test_train_splits.rar from {HMDB51_URL}"
                )
            name, value = parts[0], self._ids[parts[1]]
            if name in entries and entries[name] != value:
                raise DatasetError(
                    f"hmdb51: {name!r} is listed twice with different ids in {_abs(path)} (line {lineno}); "
                    f"re-extract test_train_splits.rar from {HMDB51_URL}"
                )
            entries[name] = value
        return list(entries.items())


# ----------------------------------------------------------------------------------------------------------
# UCF101


class Ucf101Adapter:
    name = "ucf101"
    n_folds = 3
    layout = f"""\
<root>/UCF-101/<Class>/v_<Class>_gXX_cYY.avi
<root>/ucfTrainTestlist/classInd.txt            lines '<id> <Class>' (ids from 1, define class order)
<root>/ucfTrainTestlist/trainlist0{{1,2,3}}.txt   lines '<Class>/v_....avi <id>'
<root>/ucfTrainTestlist/testlist0{{1,2,3}}.txt    lines '<Class>/v_....avi'
Get UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip from {UCF101_URL}
then: unrar x UCF101.rar <root>/ ; unzip UCF101TrainTestSplits-RecognitionTask.zip -d <root>/"""

    def load(self, root: Path, list_file: Path | None, seed: int) -> Dataset:
        root = _abs(root)
        if not root.is_dir():
            raise _fail("dataset root does not exist or is not a directory", self, root)
        videos_root = root / "UCF-101"
        if not videos_root.is_dir():
            raise _fail("video folder UCF-101/ is missing", self, videos_root)
        lists = root / "ucfTrainTestlist"
        if not lists.is_dir():
            raise _fail("split folder ucfTrainTestlist/ is missing", self, lists)
        needed = ["classInd.txt"] + [f"{kind}list0{f}.txt" for f in (1, 2, 3) for kind in ("train", "test")]
        missing = [n for n in needed if not (lists / n).is_file()]
        if missing:
            raise _fail(f"split files missing: {', '.join(missing)}", self, lists)

        classes = self._class_index(lists / "classInd.txt")
        by_fold = {c.casefold(): c for c in classes.values()}
        class_dirs = {d.name: d for d in videos_root.iterdir() if d.is_dir() and d.name.casefold() in by_fold}
        files = [v for d in class_dirs.values() for v in _walk_videos(d)]
        if not files:
            raise _fail("no <Class>/v_*.avi videos found for the classes in classInd.txt", self, videos_root)
        index = _CaseInsensitiveIndex(videos_root, files)

        splits: dict[Path, list[str | None]] = {v: [None, None, None] for v in files}
        unmatched: list[str] = []
        for fold in (1, 2, 3):
            for kind, split in (("train", "train"), ("test", "test")):
                path = lists / f"{kind}list0{fold}.txt"
                for rel in self._parse_list(path, classes, with_id=(kind == "train")):
                    video = index.get(rel)
                    if video is None:
                        unmatched.append(rel)
                        continue
                    splits[video][fold - 1] = split

        warnings: list[str] = []
        if unmatched:
            warnings.append(f"{len(unmatched)} list lines name videos that are not on disk, e.g. {unmatched[0]!r}")
        for w in warnings:
            log.warning("ucf101: %s", w)
        items = sorted(
            (
                VideoItem(
                    key=_key_for(v, videos_root),
                    path=v,
                    label=by_fold[v.relative_to(videos_root).parts[0].casefold()],
                    splits=tuple(s),
                )
                for v, s in splits.items()
            ),
            key=lambda it: it.key,
        )
        ordered = [classes[i] for i in sorted(classes)]
        return Dataset(self.name, videos_root, ordered, self.n_folds, items, warnings)

    def _class_index(self, path: Path) -> dict[int, str]:
        classes: dict[int, str] = {}
        for lineno, line in enumerate(_read_lines(path), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit():
                raise self._malformed(path, lineno, line, "'<id> <Class>'")
            classes[int(parts[0])] = parts[1]
        if not classes:
            raise _fail("classInd.txt lists no classes", self, _abs(path))
        return classes

    def _parse_list(self, path: Path, classes: dict[int, str], with_id: bool) -> list[str]:
        out: list[str] = []
        for lineno, line in enumerate(_read_lines(path), start=1):
            if not line.strip():
                continue
            rel = line.strip()
            if with_id:
                parts = _split_last_ws(line)
                if parts is None or not parts[1].isdigit() or int(parts[1]) not in classes:
                    raise self._malformed(path, lineno, line, "'<Class>/v_....avi <class id from classInd.txt>'")
                rel = parts[0].strip()
                if PurePosixPath(rel).parts[0].casefold() != classes[int(parts[1])].casefold():
                    raise self._malformed(path, lineno, line, f"class id {parts[1]} = {classes[int(parts[1])]}")
            out.append(rel)
        return out

    def _malformed(self, path: Path, lineno: int, line: str, expected: str) -> DatasetError:
        return DatasetError(
            f"ucf101: malformed line {lineno} in {_abs(path)}: {line!r}\nexpected {expected}; "
            f"re-extract UCF101TrainTestSplits-RecognitionTask.zip from {UCF101_URL}"
        )


# ----------------------------------------------------------------------------------------------------------
# list files (CSV or MMAction2/PaddleVideo-style text)


class ListAdapter:
    name = "list"
    layout = """\
--list FILE (or --data-root FILE): either
  a CSV with header 'path,label[,split]'  (split: train | val | test | empty; label may be empty)
      videos/a.mp4,jump,train
      "videos/b, take 2.mp4",run,test
  or text lines '<path> <label>' (MMAction2/PaddleVideo style; label an int or a name; path may contain spaces)
      videos/a.mp4 0
Relative paths are resolved against the list file's folder, then against --data-root when that is a folder.
The key of each video is its path relative to that folder, without extension.
With a split column the dataset has 1 fold, otherwise 0 (use the folder adapter for an automatic split)."""

    def load(self, root: Path, list_file: Path | None, seed: int) -> Dataset:
        root = _abs(root)
        if list_file is None:
            if not root.is_file():
                raise _fail("no list file given (pass --list FILE, or the file itself as root)", self, root)
            list_file = root
        return load_list(_abs(list_file), name=self.name, extra_base=root if root.is_dir() else None)


def load_list(list_file: Path, name: str = "list", extra_base: Path | None = None) -> Dataset:
    """Read a CSV / text video list (see ListAdapter.layout); all listed files must exist."""
    adapter = ADAPTERS.get(name, ListAdapter())
    if not list_file.is_file():
        raise _fail("list file does not exist", adapter, list_file)
    text = "\n".join(_read_lines(list_file))
    first = next((line for line in text.splitlines() if line.strip()), "")
    header = [h.strip().lower() for h in next(csv.reader([first]), [])]
    if "path" in header:
        rows, has_split = _parse_csv(text, list_file, adapter)
    else:
        rows, has_split = _parse_text(text, list_file, adapter), False

    base = list_file.parent
    bases = [base] + ([extra_base] if extra_base is not None and extra_base != base else [])
    items: list[VideoItem] = []
    missing: list[str] = []
    seen: dict[str, str] = {}
    used_bases: set[Path] = set()
    for rel, label, split in rows:
        found = next(((b, b / rel) for b in bases if (b / rel).is_file()), None)
        if found is None:
            missing.append(rel)
            continue
        b, path = found
        used_bases.add(b)
        try:
            key = _key_for(path, b)
        except ValueError:  # absolute path outside the base folder
            key = _strip_video_ext(path.as_posix().lstrip("/"))
        if key in seen:
            raise _fail(
                f"{rel!r} and {seen[key]!r} both map to key {key!r}; list each video once",
                adapter,
                list_file,
            )
        seen[key] = rel
        items.append(VideoItem(key=key, path=path, label=label, splits=(split,) if has_split else ()))
    if missing:
        shown = "\n  ".join(missing[:_SHOW_MISSING])
        raise _fail(
            f"{len(missing)} of {len(rows)} listed videos do not exist "
            f"(searched {', '.join(map(str, bases))}):\n  {shown}",
            adapter,
            list_file,
        )
    if not items:
        raise _fail("the list names no videos", adapter, list_file)
    classes = _sort_labels(it.label for it in items if it.label is not None)
    items.sort(key=lambda it: it.key)
    root = base if base in used_bases or extra_base is None else extra_base
    return Dataset(name, root, classes, 1 if has_split else 0, items)


_Row = tuple[str, str | None, str | None]  # (relative path, label, split)


def _parse_csv(text: str, list_file: Path, adapter: Adapter) -> tuple[list[_Row], bool]:
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader)]
    if "label" not in header:
        raise _fail(f"CSV header {header} has no 'label' column", adapter, list_file)
    col = {h: i for i, h in enumerate(header)}
    has_split = "split" in col
    rows: list[_Row] = []
    for lineno, rec in enumerate(reader, start=2):
        if not any(f.strip() for f in rec):
            continue
        if len(rec) < len(header):
            problem = f"line {lineno} has {len(rec)} fields, header has {len(header)}: {rec}"
            raise _fail(problem, adapter, list_file)
        path, label = rec[col["path"]], rec[col["label"]].strip()
        split: str | None = None
        if has_split:
            split = rec[col["split"]].strip().lower() or None
            if split is not None and split not in SPLIT_VALUES:
                raise _fail(
                    f"line {lineno}: split {rec[col['split']]!r} is not one of "
                    f"{', '.join(SPLIT_VALUES)} (or empty)",
                    adapter,
                    list_file,
                )
        if not path.strip():
            raise _fail(f"line {lineno} has an empty path", adapter, list_file)
        rows.append((path, _normalise_label(label) if label else None, split))
    return rows, has_split


def _parse_text(text: str, list_file: Path, adapter: Adapter) -> list[_Row]:
    rows: list[_Row] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = _split_last_ws(line.strip())
        if parts is None:
            raise _fail(
                f"malformed line {lineno}: {line!r} (expected '<path> <label>', or a CSV whose first line is "
                "the header 'path,label[,split]')",
                adapter,
                list_file,
            )
        rows.append((parts[0], _normalise_label(parts[1]), None))
    return rows


def _normalise_label(label: str) -> str:
    """'007' and '7' are the same integer class."""
    return str(int(label)) if re.fullmatch(r"[+-]?\d+", label) else label


# ----------------------------------------------------------------------------------------------------------
# folder-per-class


def stratified_split(keys_by_class: dict[str, list[str]], seed: int) -> dict[str, str]:
    """Seeded 70/15/15 split per class; classes with >= 3 videos always get >= 1 val and >= 1 test video.

    Keys are sorted before shuffling and each class has its own RNG stream, so the result depends only on the
    seed and the set of keys (not on listing order, nor on which other classes exist).
    """
    out: dict[str, str] = {}
    for cls, keys in keys_by_class.items():
        ordered = sorted(keys)
        random.Random(f"vidfeat-folder:{seed}:{cls}").shuffle(ordered)
        n = len(ordered)
        n_val = max(1, math.floor(0.15 * n + 0.5)) if n >= 3 else 0
        n_test = max(1, math.floor(0.15 * n + 0.5)) if n >= 2 else 0
        for i, key in enumerate(ordered):
            out[key] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


class FolderAdapter:
    name = "folder"
    layout = """\
<root>/<class>/<video>.<ext>        (ext: avi mp4 mkv mov webm mpg mpeg m4v flv wmv, any case; sub-folders ok)
Every non-hidden sub-folder with videos is a class; 1 fold, split 70/15/15 train/val/test per class, seeded
with --seed (deterministic for a seed, whatever the filesystem listing order)."""

    def load(self, root: Path, list_file: Path | None, seed: int) -> Dataset:
        root = _abs(root)
        if not root.is_dir():
            raise _fail("dataset root does not exist or is not a directory", self, root)
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        videos = {d.name: _walk_videos(d) for d in class_dirs}
        videos = {c: v for c, v in videos.items() if v}
        if not videos:
            loose = [p for p in root.iterdir() if p.is_file() and is_video_file(p)]
            hint = (
                f"\nfound {len(loose)} videos directly in the root; put them in <class>/ folders, "
                "or extract them without labels by passing the paths as inputs"
                if loose
                else ""
            )
            raise _fail(f"no <class>/ folders with videos{hint}", self, root)
        keys = {c: [_key_for(v, root) for v in vs] for c, vs in videos.items()}
        split = stratified_split(keys, seed)
        items = sorted(
            (
                VideoItem(key=_key_for(v, root), path=v, label=c, splits=(split[_key_for(v, root)],))
                for c, vs in videos.items()
                for v in vs
            ),
            key=lambda it: it.key,
        )
        return Dataset(self.name, root, sorted(videos), 1, items)


# ----------------------------------------------------------------------------------------------------------
# embedded sample


class SampleAdapter:
    name = "sample"
    layout = """\
Embedded synthetic dataset, generated on first use (needs only ffmpeg; see `vidfeat.pipelines.sample`):
<root>/<class>/<class>_NN.mp4 and <root>/sample.csv ('path,label,split'); 1 fold, 8/2/2 train/val/test per class.
Classes come in reversal pairs (appear/disappear, zoom_in/zoom_out: the very same frames in reverse order, so
only a model of temporal order can separate them) plus appearance-only classes (stripes, checkers)."""

    def load(self, root: Path, list_file: Path | None, seed: int) -> Dataset:
        from vidfeat.pipelines.sample import SAMPLE_CSV, ensure_sample

        root = ensure_sample(_abs(root))
        return load_list(root / SAMPLE_CSV, name=self.name)


class RelationalAdapter:
    """The generated relational benchmarks (``relational`` and ``relational_roles``); see
    `vidfeat.pipelines.relational`."""

    layouts = {
        "relational": "two objects move and the class is their relation over time (approach/separate, "
        "pass_left/pass_right, orbit_cw/orbit_ccw); every video's objects look different",
        "relational_roles": "a ball and a block; the class is which kind moves and whether it approaches or leaves "
        "the other (ball_approaches_block, block_approaches_ball, ball_leaves_block, block_leaves_ball)",
    }

    def __init__(self, name: str) -> None:
        self.name = name
        self.layout = f"""\
Embedded relational benchmark, generated on first use (see `vidfeat.pipelines.relational`): {self.layouts[name]}.
<root>/<class>/<name>.mp4, <root>/relational.csv ('path,label,split') and the ground-truth boxes
<root>/boxes.csv ('video,frame,x1,y1,x2,y2,score,track') for `vidfeat extract --rois file:<root>/boxes.csv`."""

    def load(self, root: Path, list_file: Path | None, seed: int) -> Dataset:
        from vidfeat.pipelines.relational import BENCHMARKS, LIST_CSV

        root = BENCHMARKS[self.name].ensure(_abs(root))
        return load_list(root / LIST_CSV, name=self.name)


class GeneratedAdapter:
    """A generated benchmark (`vidfeat.pipelines.crossing`, `vidfeat.pipelines.motion`): generated on first use
    into the root, then read as a list."""

    def __init__(self, name: str, module: str, summary: str, note: str = "") -> None:
        self.name, self.module, self.summary, self.note = name, module, summary, note

    def _benchmark(self):
        import importlib  # not at import time: the generators import this module

        return importlib.import_module(self.module).BENCHMARKS[self.name]

    @property
    def layout(self) -> str:
        return (f"Embedded task, generated on first use (`{self.module}`): {self.summary}.\n"
                f"{self._benchmark().describe()}{self.note}")

    def load(self, root: Path, list_file: Path | None, seed: int) -> Dataset:
        benchmark = self._benchmark()
        return load_list(benchmark.ensure(_abs(root)) / benchmark.list_csv, name=self.name)


_CROSSING, _MOTION = "vidfeat.pipelines.crossing", "vidfeat.pipelines.motion"
GENERATED = (
    GeneratedAdapter("crossing_swap", _CROSSING, "a face and a cyclist cross a still real scene in opposite "
                     "directions;\nswap_reversed is each swap_forward video played backwards (the same bag of frames)",
                     " For the spatial heads: extract with --spatial S."),
    GeneratedAdapter("crossing_direction", _CROSSING, "a 24-px real-image object crosses a moving real scene,\n"
                     "left_to_right or right_to_left, the scene's frames in the same order in both classes",
                     " For the spatial heads: extract with --spatial S."),
    GeneratedAdapter("random_dots", _MOTION, "a fresh random-dot field moves coherently left or right (classes left, "
                     "right);\neach left video is a right video played backwards (the same bag of frames)"),
    GeneratedAdapter("kind_motion", _MOTION, "a face or a cyclist (real-image objects) crosses a still real scene left "
                     "or right\n(cyclist_left, cyclist_right, face_left, face_right); each left video is the right one "
                     "reversed"),
    GeneratedAdapter("fast_event", _MOTION, "a slowly panning real scene, tinted blue then red (blue_then_red) or red "
                     "then blue\n(red_then_blue) on two consecutive frames that a pathway seeing every 4th frame never "
                     "sees; keep every frame"),
)


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Hmdb51Adapter(), Ucf101Adapter(), ListAdapter(), FolderAdapter(), SampleAdapter(),
        RelationalAdapter("relational"), RelationalAdapter("relational_roles"),
        *GENERATED,
    )
}


def load_dataset(name: str, root: Path | str, list_file: Path | str | None = None, seed: int = 0) -> Dataset:
    """Load a dataset by adapter name; raises DatasetError with the expected layout when anything is off."""
    adapter = ADAPTERS.get(name)
    if adapter is None:
        raise DatasetError(f"unknown dataset {name!r}; available: {', '.join(sorted(ADAPTERS))}")
    return adapter.load(_abs(root), _abs(list_file) if list_file is not None else None, seed)


def dataset_from_inputs(inputs: Iterable[Path | str]) -> Dataset:
    """Unlabelled dataset from video files and folders given on the command line.

    A file's key is its stem; videos found (recursively) under a folder are keyed by their path relative to that
    folder without extension, so the same tree always yields the same keys.
    """
    sources: dict[str, Path] = {}
    given = [_abs(p) for p in inputs]
    if not given:
        raise DatasetError("no input videos or folders given; pass video files and/or folders of videos")
    for inp in given:
        if inp.is_file():
            found = [(inp.stem, inp)]
        elif inp.is_dir():
            found = [(_key_for(v, inp), v) for v in _walk_videos(inp)]
            if not found:
                raise DatasetError(
                    f"no video files under {inp} (looked recursively for {' '.join(sorted(VIDEO_EXTENSIONS))})"
                )
        else:
            raise DatasetError(f"input {inp} does not exist; pass existing video files or folders")
        for key, path in found:
            if key in sources and sources[key] != path:
                raise DatasetError(
                    f"two inputs map to the same key {key!r}: {sources[key]} and {path}; "
                    "pass their common parent folder instead so keys keep their sub-folders, or rename one"
                )
            sources[key] = path
    items = [VideoItem(key=k, path=p, label=None, splits=()) for k, p in sorted(sources.items())]
    parents = [p if p.is_dir() else p.parent for p in given]
    return Dataset("inputs", Path(os.path.commonpath(parents)), [], 0, items)
