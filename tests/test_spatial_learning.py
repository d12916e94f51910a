"""The spatial heads learn the crossing tasks (vidfeat.pipelines.crossing), end to end on real images with the
default backbone's real features and 4x4 grids; both tasks are generated and extracted once for the module.

Sizes, per class: ``swap`` 20 train / 4 val / 16 test videos, every one of the 8 frames a row (so the exact
chance check below holds); ``direction`` 20 / 4 / 8 at ``--fps 4`` (4 rows a video), to stay within the budget.
Default recipes (``train_run`` defaults, one thread), test top-1 for training seeds 0-4 of exactly this
configuration (measured on 2 CPU cores):

| task | head | seed 0 | 1 | 2 | 3 | 4 | worst | asserted |
|---|---|---|---|---|---|---|---|---|
| swap | eco | 1.0 | 0.969 | 1.0 | 1.0 | 1.0 | 0.969 | >= 0.9 |
| swap | timesformer | 0.844 | 0.906 | 0.781 | 0.781 | 1.0 | 0.781 | >= 0.6 |
| direction | timesformer | 0.8125 | 0.75 | 0.875 | 0.8125 | 1.0 | 0.75 | >= 0.65 (11 of 16) |
| swap | timesformer attention=space, 10 epochs | 0.5 | 0.5 | 0.5 | 0.5 | 0.5 | 0.5 | == 0.5 |

Chance is 0.5. ``eco`` is not checked on ``direction``: it needs about 80 training videos per class there (0.83
mean, 0.61 worst at 40; README, Spatial heads), which is beyond this file's time budget; ``timesformer`` on ``swap``
is the least sure at this size (0.89 mean, 0.81 worst with 20 per class on 80 test videos; 0.99 / 0.96 with 80).
"""
import pytest
import torch
from click.testing import CliRunner

from vidfeat.pipelines.cli import main
from vidfeat.pipelines.crossing import write_task
from vidfeat.temporal.runs import train_run

SIZES = {"swap": {"train": 20, "val": 4, "test": 16}, "direction": {"train": 20, "val": 4, "test": 8}}
FPS = {"swap": None, "direction": 4}


def extract_task(root, task):
    listing = write_task(root / task, task, **SIZES[task])
    store = root / f"{task}.h5"
    rate = ["--fps", str(FPS[task])] if FPS[task] else []
    result = CliRunner().invoke(main, ["extract", "--dataset", "list", "--list", str(listing), "--out", str(store),
                                       "--spatial", "4", "--no-progress", *rate])
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("crossing")
    return {task: extract_task(root, task) for task in SIZES}


def top1(store, head, out, seed=0, **options):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny heads run fastest on one thread
    try:
        return train_run(store, head, out, seed=seed, progress=False, **options)["top1"]
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("task,head,least", [("swap", "eco", 0.9), ("swap", "timesformer", 0.6),
                                             ("direction", "timesformer", 0.65)])
def test_spatial_heads_learn_the_crossing_tasks(stores, tmp_path, task, head, least):
    assert top1(stores[task], head, tmp_path / "run") >= least


def test_space_only_attention_sits_at_chance_on_order_only_classes(stores, tmp_path):
    """``swap``: each class is the other played backwards (intra-coded, so every frame decodes the same either way)
    and every row is stored, so a video and its twin hold the same grids in reverse order; ``attention=space`` is
    order-blind by construction and gives both videos of every test pair the same logits: exactly chance, while
    the divided model learns the task (above)."""
    assert top1(stores["swap"], "timesformer", tmp_path / "space", epochs=10, attention="space") == 0.5
