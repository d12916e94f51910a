"""The slowfast head: exact properties of its two pathways, and that it learns order."""
import pytest
import torch

from vidfeat.features import UserError
from vidfeat.temporal.heads import create_head
from vidfeat.temporal.runs import train_run
from vidfeat.temporal.synthetic import write_ramp_store


def _head(**options):
    torch.manual_seed(0)
    return create_head("slowfast", 16, 3, width=32, **options).eval()


@pytest.mark.parametrize("lateral", ["conv", "sample", "none"])
def test_padding_never_changes_the_logits(lateral):
    head = _head(lateral=lateral, alpha=3)
    x = torch.randn(2, 14, 16)
    mask = torch.ones(2, 14, dtype=torch.bool)
    mask[0, 9:] = False
    x[0, 9:] = 100.0  # whatever sits in the padding
    with torch.no_grad():
        alone = head(x[:1, :9], torch.ones(1, 9, dtype=torch.bool))
        batched = head(x, mask)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)


def test_the_slow_pathway_sees_every_alpha_th_step_and_the_fast_one_reaches_it_only_by_laterals():
    x = torch.randn(1, 12, 16)
    mask = torch.ones(1, 12, dtype=torch.bool)
    off_beat, on_beat = x.clone(), x.clone()
    off_beat[0, 5] += 1.0  # not a multiple of alpha=4
    on_beat[0, 4] += 1.0
    with torch.no_grad():
        alone = _head(lateral="none")
        slow, fast = alone.pathways(x, mask)
        assert torch.equal(alone.pathways(off_beat, mask)[0], slow)
        assert not torch.allclose(alone.pathways(off_beat, mask)[1], fast)
        assert not torch.allclose(alone.pathways(on_beat, mask)[0], slow)
        joined = _head(lateral="conv")
        assert not torch.allclose(joined.pathways(off_beat, mask)[0], joined.pathways(x, mask)[0])


def test_a_video_shorter_than_alpha_keeps_its_first_step_in_the_slow_pathway():
    head = _head(alpha=8)
    with torch.no_grad():
        logits = head(torch.randn(2, 3, 16), torch.tensor([[True, True, True], [True, False, False]]))
    assert torch.isfinite(logits).all()


def test_bad_options_say_what_is_allowed():
    with pytest.raises(UserError, match="lateral must be one of conv, sample, none"):
        create_head("slowfast", 16, 3, lateral="sum")
    with pytest.raises(UserError, match="0 < beta <= 1"):
        create_head("slowfast", 16, 3, beta=0.0)


def test_slow_only_drops_the_fast_pathway_and_the_laterals():
    slow = _head(pathways="slow")
    assert slow.fast_proj is None and len(slow.fast_blocks) == 0 and slow.laterals is None
    assert slow.fc.in_features == 32
    x = torch.randn(1, 12, 16)
    off_beat = x.clone()
    off_beat[0, 5] += 1.0  # not a multiple of alpha=4: the slow-only head never sees it
    mask = torch.ones(1, 12, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(slow(off_beat, mask), slow(x, mask))
    with pytest.raises(UserError, match="pathways must be one of both, slow"):
        create_head("slowfast", 16, 3, pathways="fast")


def test_slowfast_learns_order_only_classes(tmp_path):
    """Order-only ramps (a bag of steps is at chance: mean 0.46-0.63 over seeds 0-4). slowfast with its default
    options, 20 epochs, test top-1 on seeds 0-4: 1.0, 1.0, 1.0, 1.0, 1.0."""
    store = write_ramp_store(tmp_path / "ramps.h5")
    assert train_run(store, "slowfast", tmp_path / "run", epochs=20, seed=0, progress=False)["top1"] >= 0.85
