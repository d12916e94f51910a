"""How a head combines the streams of a multi-stream run (:mod:`vidfeat.temporal.streams`).

Every step of a multi-stream batch is the streams' rows joined into one vector ``[D1 + D2 + ...]``, read at the
same relative positions of the video. The fusion decides what the head does with it:

* ``late`` (two-stream TSN / I3D): one head per stream, of the same type and options, on its own slice; trained
  jointly in one run with the sum of the streams' losses (each stream's gradients are those it would get alone),
  and the prediction is the weighted average of the streams' softmax scores (TSN weighs RGB:flow 1:1.5, the
  default for two streams; weights are normalised to sum 1);
* ``concat``: one head on the joined vectors;
* ``slowfast`` (``--head slowfast`` on two stores at two frame rates): the slow pathway reads the first store,
  the fast pathway the second, instead of both reading one sequence.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from vidfeat.features.errors import UserError
from vidfeat.temporal.heads import create_head

FUSIONS = ("late", "concat", "slowfast")
TSN_WEIGHTS = (1.0, 1.5)  # RGB : flow, as TSN weighs its two streams
UNFITTED = ("logreg",)  # fitted by scikit-learn, not trained on a loss: late fusion cannot sum their losses


def _weights(given: object, streams: int) -> tuple[float, ...]:
    """Late-fusion weights, one per stream, normalised to sum 1: from ``1,1.5``, a list, or TSN's default."""
    if given is None:
        raw = TSN_WEIGHTS if streams == 2 else (1.0,) * streams
    else:
        try:
            raw = tuple(float(w) for w in (given.split(",") if isinstance(given, str) else given))
        except (TypeError, ValueError):
            raise UserError(f"fusion_weights must be one number per stream, e.g. 1,1.5; got {given!r}") from None
    if len(raw) != streams or min(raw) < 0 or sum(raw) <= 0:
        raise UserError(f"fusion_weights must be {streams} non-negative numbers (one per --features store, in "
                        f"order) with a positive sum, e.g. 1,1.5; got {given!r}")
    return tuple(w / sum(raw) for w in raw)


@dataclass(frozen=True)
class Fusion:
    """A multi-stream run's fusion, as config.json records it: the mode, the late-fusion weights (normalised) and
    each stream's feature dimension (the slices of the joined vector)."""

    mode: str
    weights: tuple[float, ...] | None
    input_dims: tuple[int, ...]

    @classmethod
    def plan(cls, mode: str | None, weights: object, head: str, streams: int) -> "Fusion | None":
        """The fusion of a run on ``streams`` stores (None for one store), checked before anything is loaded;
        ``input_dims`` are filled in from the stores (:meth:`with_dims`)."""
        if streams == 1:
            if mode is not None or weights is not None:
                raise UserError("fusion and fusion_weights combine several streams; give one --features per stream "
                                "(e.g. --features rgb.h5 --features flow.h5), or drop them for one store")
            return None
        mode = mode or "late"
        if mode not in FUSIONS:
            raise UserError(f"unknown fusion {mode!r}; choose one of {', '.join(FUSIONS)}")
        if mode != "late" and weights is not None:
            raise UserError(f"fusion_weights weigh the streams' scores in late fusion; fusion={mode} has none")
        if mode == "late" and head in UNFITTED:
            raise UserError(f"{head} is fitted, not trained on a loss, so late fusion cannot train it; use "
                            "-o fusion=concat (one model on both streams' features)")
        if mode == "slowfast" and (head != "slowfast" or streams != 2):
            raise UserError(f"fusion=slowfast feeds the two pathways of --head slowfast from two stores (the slow "
                            f"one first); got head {head!r} on {streams} stores")
        return cls(mode, _weights(weights, streams) if mode == "late" else None, ())

    def with_dims(self, input_dims: Sequence[int]) -> "Fusion":
        return Fusion(self.mode, self.weights, tuple(int(d) for d in input_dims))

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> "Fusion | None":
        """The fusion a run's config records (None for a one-store run)."""
        record = config.get("fusion")
        if record is None:
            return None
        weights = record["weights"]
        return cls(record["mode"], tuple(weights) if weights is not None else None, tuple(record["input_dims"]))


def check_rates(lengths: Sequence[Sequence[int]], names: Sequence[str]) -> None:
    """fusion=slowfast: the slow pathway's store (the first) must not have more rows than the fast one's."""
    slow, fast = (int(sum(rows)) for rows in lengths)
    if slow > fast:
        raise UserError(f"fusion=slowfast reads the slow pathway from the first store and the fast one from the "
                        f"second, but {names[0]} has more rows ({slow}) than {names[1]} ({fast}); give the "
                        "low-rate store first")


class LateFusionHead(nn.Module):
    """One head per stream on its slice of the joined step vector. ``forward`` returns the log of the weighted
    average of the streams' softmax scores, so softmax (what scoring and prediction apply) gives the average
    itself; training sums the streams' own losses (:meth:`stream_logits`)."""

    def __init__(self, streams: Sequence[nn.Module], input_dims: Sequence[int], weights: Sequence[float]) -> None:
        super().__init__()
        self.streams = nn.ModuleList(streams)
        ends = torch.tensor(list(input_dims)).cumsum(0).tolist()
        self.slices = list(zip([0, *ends[:-1]], ends))
        self.register_buffer("log_weights", torch.tensor(list(weights)).log(), persistent=False)

    def stream_logits(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        """Each stream head's logits on its own features."""
        return [head(x[..., start:end], mask) for head, (start, end) in zip(self.streams, self.slices)]

    def fuse(self, logits: Sequence[Tensor]) -> Tensor:
        """``log(sum_s w_s softmax(logits_s))``, computed stably."""
        scores = torch.stack([torch.log_softmax(part.float(), dim=-1) for part in logits])
        return torch.logsumexp(scores + self.log_weights.view(-1, 1, 1), dim=0)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.fuse(self.stream_logits(x, mask))


def create_model(
    head: str, input_dims: Sequence[int], num_classes: int, options: dict, fusion: Fusion | None
) -> nn.Module:
    """The module a run trains: ``head`` itself for one store, else the head(s) ``fusion`` combines."""
    if fusion is None:
        return create_head(head, input_dims[0], num_classes, **options)
    if fusion.mode == "concat":
        return create_head(head, sum(input_dims), num_classes, **options)
    if fusion.mode == "slowfast":
        return create_head(head, tuple(input_dims), num_classes, **options)
    streams = [create_head(head, dim, num_classes, **options) for dim in input_dims]
    return LateFusionHead(streams, input_dims, fusion.weights)
