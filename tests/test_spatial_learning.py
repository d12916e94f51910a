"""The space-only TimeSformer on order-only classes, end to end on real images (tests/spatialgen.py) with the
default backbone's real features and grids.

``swap``: each class is the other played backwards (intra-coded, so every frame decodes the same either way) and
every row is stored, so a video and its twin hold the same grids in reverse order; ``attention=space`` is
order-blind by construction and gives both videos of every test pair the same logits: exactly chance. (That the
divided model solves the same task needs ~70 training videos per class: the sweep in README.md.)"""
from click.testing import CliRunner

from spatialgen import write_task
from vidfeat.pipelines.cli import main
from vidfeat.temporal.runs import train_run


def test_space_only_attention_sits_at_chance_on_order_only_classes(tmp_path, single_thread):
    listing = write_task(tmp_path / "swap", "swap", train=6, val=2, test=4)
    store = tmp_path / "swap.h5"
    result = CliRunner().invoke(main, ["extract", "--dataset", "list", "--list", str(listing), "--out", str(store),
                                       "--spatial", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    run = train_run(store, "timesformer", tmp_path / "space", seed=0, progress=False, epochs=10, attention="space")
    assert run["top1"] == 0.5
