"""Sweeps: a grid of head experiments (heads x head options x training options x seeds x folds) on one store.

The store is read once; its rows are written to ``.npy`` files in a temporary directory and memory-mapped, so
the ``jobs`` worker processes share one copy of the cache (the page cache) instead of each loading its own.
On ``Streams`` of several stores every run is a multi-stream run, all streams read once. Every run is an ordinary
:func:`~vidfeat.temporal.runs.train_run` into ``OUT/<configuration>/seed<S>-fold<F>``,
so a run directory is the same as ``train-temporal``'s. A rerun skips finished runs and redoes unfinished ones
from scratch. The grid is recorded in ``OUT/sweep.json``; ``compare OUT`` ranks the configurations.
"""
from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from joblib import Parallel, delayed

from vidfeat.features import StorePath
from vidfeat.features.errors import UserError
from vidfeat.temporal.data import resolve_store_path
from vidfeat.temporal.heads import head_defaults, list_heads, resolve_options
from vidfeat.temporal.runs import SWEEP_FILE, RunData, run_finished, train_run
from vidfeat.temporal.streams import Streams, stream_paths
from vidfeat.temporal.training import TrainConfig

RUN_SETTINGS = ("epochs", "segments", "sample_mode", "eval_clips", "val_fraction")
"""train_run keywords a grid may fix for all its runs."""
FUSION_OPTIONS = ("fusion", "fusion_weights")
"""train_run keywords of multi-stream runs that a grid sweeps like head options, for every head."""


def _accepts(head: str, option: str) -> bool:
    return option in head_defaults(head) or option in FUSION_OPTIONS


@dataclass
class SweepRun:
    """One cell of the grid: a configuration (head, its options, training options) with one seed and fold."""

    head: str
    head_options: dict
    train_options: dict
    seed: int
    fold: int

    @property
    def configuration(self) -> str:
        """Directory name of the configuration, e.g. ``lstm_hidden=64_lr=0.003`` (seed and fold excluded)."""
        values = {**self.head_options, **self.train_options}
        return "_".join([self.head, *(f"{k}={json.dumps(v).strip(chr(34))}" for k, v in values.items())])

    def directory(self, root: Path) -> Path:
        return root / self.configuration / f"seed{self.seed}-fold{self.fold}"


def _as_lists(values: dict) -> dict[str, list]:
    """A grid file may give one value instead of a list of one."""
    return {k: v if isinstance(v, list) else [v] for k, v in values.items()}


@dataclass
class SweepGrid:
    """What to sweep. ``head_options`` maps an option to its values: ``hidden`` goes to every head that has that
    option, ``lstm.hidden`` to the lstm only. ``train_options`` map :class:`TrainConfig` fields to values.
    ``settings`` fixes :data:`RUN_SETTINGS` (epochs, segments, ...) for every run."""

    heads: list[str]
    head_options: dict[str, list] = field(default_factory=dict)
    train_options: dict[str, list] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    folds: list[int] = field(default_factory=lambda: [1])
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: dict) -> "SweepGrid":
        """A grid from a parsed grid file; names what is wrong instead of failing with a TypeError."""
        known = {"heads", "head_options", "train_options", "seeds", "folds", "settings"}
        unknown = sorted(set(spec) - known)
        if unknown or "heads" not in spec:
            raise UserError(
                f"a sweep grid needs 'heads' and may have {', '.join(sorted(known - {'heads'}))}; "
                f"got {', '.join(sorted(spec)) or 'nothing'}"
            )
        grid = cls(
            heads=list(spec["heads"]), head_options=_as_lists(spec.get("head_options", {})),
            train_options=_as_lists(spec.get("train_options", {})), seeds=list(spec.get("seeds", [0])),
            folds=list(spec.get("folds", [1])), settings=dict(spec.get("settings", {})),
        )
        grid.runs()  # validates every name before anything is loaded
        return grid

    @classmethod
    def from_file(cls, path: str | Path) -> "SweepGrid":
        """Read a ``.json`` grid, or a ``.yaml``/``.yml`` one when PyYAML is installed."""
        path = Path(path)
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise UserError(
                    f"{path} is YAML, but PyYAML is not installed; `pip install pyyaml`, or write the grid as JSON"
                ) from None
            spec = yaml.safe_load(text)
        else:
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} is not valid JSON ({exc}); a grid file is JSON, or YAML named .yaml") from None
        if not isinstance(spec, dict):
            raise UserError(f"{path} must hold a mapping with 'heads' (and optionally options, seeds, folds)")
        return cls.from_dict(spec)

    def _head_grid(self, head: str) -> dict[str, list]:
        picked = {}
        for name, values in self.head_options.items():
            scope, _, option = name.rpartition(".")
            if (scope == head) or (not scope and _accepts(head, option)):
                picked[option] = values
        return picked

    def _check_names(self) -> None:
        unknown = [h for h in self.heads if h not in list_heads()]
        if unknown or not self.heads:
            raise UserError(f"unknown or no heads {unknown}; available heads: {', '.join(list_heads())}")
        for name in self.head_options:
            scope, _, option = name.rpartition(".")
            if scope and scope not in self.heads:
                raise UserError(f"head option {name!r} is for head {scope!r}, which the grid does not sweep")
            if not scope and not any(_accepts(h, option) for h in self.heads):
                raise UserError(f"no head in the grid ({', '.join(self.heads)}) has an option {option!r}")
        TrainConfig.from_options({k: v[0] for k, v in self.train_options.items()})
        bad = sorted(set(self.settings) - set(RUN_SETTINGS))
        if bad:
            raise UserError(f"unknown sweep setting(s) {', '.join(bad)}; settings are {', '.join(RUN_SETTINGS)}")

    def runs(self) -> list[SweepRun]:
        """Every cell of the grid, in a stable order; unknown heads or options raise ``ValueError``."""
        self._check_names()
        runs = []
        for head in self.heads:
            head_grid = self._head_grid(head)
            for head_values in itertools.product(*head_grid.values()):
                options = dict(zip(head_grid, head_values))
                resolve_options(head, {k: v for k, v in options.items() if k not in FUSION_OPTIONS})
                for train_values in itertools.product(*self.train_options.values()):
                    train_options = dict(zip(self.train_options, train_values))
                    for seed, fold in itertools.product(self.seeds, self.folds):
                        runs.append(SweepRun(head, options, train_options, int(seed), int(fold)))
        return runs


@dataclass
class SweepResult:
    """What a sweep did: runs in the grid, finished before, trained now, and its wall time."""

    runs: int
    skipped: int
    trained: int
    wall_s: float
    out_dir: Path


def _train_one(features_path: StorePath | Streams, run: SweepRun, root: Path, data: RunData, settings: dict, device) -> dict:
    return train_run(
        features_path, run.head, run.directory(root), fold=run.fold, seed=run.seed, train_options=run.train_options,
        device=device, progress=False, data=data, **settings, **run.head_options,
    )


def _pending(runs: Sequence[SweepRun], root: Path) -> list[SweepRun]:
    """Runs still to do; the leftovers of an interrupted one are removed so it starts clean."""
    pending = [run for run in runs if not run_finished(run.directory(root))]
    for run in pending:
        if run.directory(root).exists():
            shutil.rmtree(run.directory(root))
    return pending


def _record_grid(grid: SweepGrid, root: Path, features_path: StorePath | Streams) -> None:
    """Write the grid to ``sweep.json``; a directory swept before with another grid or store is refused."""
    stores = [resolve_store_path(p) for p in stream_paths(features_path)]
    record = {"features": stores if isinstance(features_path, Streams) else stores[0], "grid": asdict(grid)}
    path = root / SWEEP_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != record:
            raise UserError(
                f"{root} holds a sweep of another grid or store ({path}); resume it with the same grid, "
                "or sweep into a new directory"
            )
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def run_sweep(
    features_path: StorePath | Streams, grid: SweepGrid, out_dir: str | Path, *, jobs: int = 1,
    device: str | None = None,
) -> SweepResult:
    """Train every run of ``grid`` not finished yet into ``out_dir``, ``jobs`` at a time, on one shared cache (on
    ``Streams``, multi-stream runs, whose ``fusion`` and ``fusion_weights`` the grid sweeps like head options)."""
    root = Path(out_dir)
    runs = grid.runs()
    _record_grid(grid, root, features_path)
    pending = _pending(runs, root)
    started = time.perf_counter()
    if pending:
        data = RunData.load(features_path, sorted(set(grid.folds)), heads=grid.heads, in_memory=True)
        with tempfile.TemporaryDirectory(prefix="vidfeat-sweep-") as tmp:
            shared = data.share(Path(tmp))
            del data  # the workers read the memory map; the loaded copy is not needed any more
            Parallel(n_jobs=jobs)(
                delayed(_train_one)(features_path, run, root, shared, grid.settings, device) for run in pending
            )
    return SweepResult(len(runs), len(runs) - len(pending), len(pending), time.perf_counter() - started, root)
