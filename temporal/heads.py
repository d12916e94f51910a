"""Temporal heads: small modules that turn a sequence of cached features into class logits.

Interface shared by every head (why it looks like this: the same training loop, evaluation and
``predict`` drive all heads, including ones that need more than frame features)::

    logits = head(x, mask, **extras)

* ``x``: ``[B, T, D]`` float features, one row per sampled step (frame or clip window);
* ``mask``: ``[B, T]`` bool, ``True`` for a real step and ``False`` for padding. Valid steps come
  first (the collate pads at the end). Padding never changes the logits of a sequence;
* ``extras``: named per-step tensors beyond ``x`` that the batch carries (the collate pads every
  per-step field the same way). Frame heads take none. A region head (``gcn``, in
  ``vidfeat.temporal.gcn``) sets ``uses_regions = True`` and takes ``rois [B, T, R, Dr]``,
  ``boxes [B, T, R, 4]`` and ``roi_mask [B, T, R]`` as keyword arguments; nothing in the loop
  needs to change for it. Spatial heads (``timesformer``, ``eco``, in ``vidfeat.temporal.spatial_heads``)
  set ``uses_spatial = True`` and take ``spatial [B, T, S*S, Ds]``, the store's grid.

Heads are built by name with :func:`create_head`, torchvision/timm style: a plain dict registry
maps each name to its one builder (the module class). ``logreg`` is fitted by scikit-learn rather
than by SGD but is a module like the others once fitted (see ``vidfeat.temporal.logreg``).
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import Tensor, nn

from vidfeat.features.errors import UserError
from vidfeat.temporal.gcn import GCNHead
from vidfeat.temporal.layers import Dropout, TemporalBlock, dropout, masked_mean, sinusoidal_encoding
from vidfeat.temporal.slowfast import SlowFastHead
from vidfeat.temporal.spatial_heads import ECOHead, TimeSformerHead


def _check_inputs(x: Tensor, mask: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(
            f"this head expects frame features [B, T, D], got shape {tuple(x.shape)}; "
            "region features [B, T, R, D] need a region head"
        )
    if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool [B, T] = {tuple(x.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")


def _lengths(mask: Tensor) -> Tensor:
    """Valid-step counts, checking that padding only sits at the end (what the recurrence and convolutions rely on)."""
    lengths = mask.sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
    if not torch.equal(prefix, mask):
        raise ValueError("mask must mark a prefix of each sequence as valid (padding only at the end)")
    if bool((lengths == 0).any()):
        raise ValueError("every sequence needs at least one valid step; found an all-padding row in the batch")
    return lengths


class MeanHead(nn.Module):
    """TSN segment consensus: average the sampled step features, dropout, linear.

    Order-blind by construction, which makes it the baseline temporal heads must beat.
    """

    def __init__(self, input_dim: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(input_dim, num_classes)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        _check_inputs(x, mask)
        return self.fc(self.dropout(masked_mean(x, mask)))


def _reverse_valid(x: Tensor, lengths: Tensor) -> Tensor:
    """Each sequence of ``x [B, T, C]`` with its first ``lengths`` steps reversed and its padding left in place;
    applying it twice gives ``x`` back."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    index = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class LSTMHead(nn.Module):
    """(Bi)LSTM over the steps; readout is the final state of the valid part (``last``) or the masked
    mean of the outputs (``mean``).

    The parameters are an ``nn.LSTM``'s, but the recurrence is run here: the input-to-gate products of all steps
    are one matrix product whose backward pass needs no input gradient (the features are frozen), where the
    library kernel computes one anyway and, with packing, re-sorts the batch every step. The backward direction
    reads each sequence's valid steps reversed, and a final state is taken at the sequence's last valid step, so
    padding at the end never enters the recurrence of a valid step: no packing is needed.
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden: int = 256,
        layers: int = 1,
        bidirectional: bool = False,
        readout: str = "last",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if readout not in ("last", "mean"):
            raise UserError(f"lstm readout must be 'last' or 'mean', got {readout!r}")
        self.readout = readout
        self.directions = 2 if bidirectional else 1
        self.input_dropout = Dropout(dropout)
        self.lstm = nn.LSTM(
            input_dim,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(hidden * self.directions, num_classes)

    def _direction(self, x: Tensor, layer: int, suffix: str) -> Tensor:
        """Outputs ``[B, T, H]`` of one direction of one layer over ``x`` (already in that direction's order)."""
        w_ih, w_hh = getattr(self.lstm, f"weight_ih_l{layer}{suffix}"), getattr(self.lstm, f"weight_hh_l{layer}{suffix}")
        bias = getattr(self.lstm, f"bias_ih_l{layer}{suffix}") + getattr(self.lstm, f"bias_hh_l{layer}{suffix}")
        # Under autocast only this product (nearly all of the head's work) runs in reduced precision; the
        # recurrence, whose state accumulates over the steps, stays in float32.
        gates_in = nn.functional.linear(x, w_ih, bias).float()
        h = c = gates_in.new_zeros(x.shape[0], w_hh.shape[1])
        outputs = []
        with torch.autocast(x.device.type, enabled=False):
            for t in range(x.shape[1]):
                i, f, g, o = (gates_in[:, t] + nn.functional.linear(h, w_hh)).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
        return torch.stack(outputs, dim=1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        _check_inputs(x, mask)
        lengths = _lengths(mask)
        last = (lengths - 1).view(-1, 1, 1)
        h = self.input_dropout(x)
        for layer in range(self.lstm.num_layers):
            if layer:
                h = dropout(h, self.lstm.dropout, self.training)
            forward = self._direction(h, layer, "")
            finals = [forward.gather(1, last.expand(-1, 1, forward.shape[2])).squeeze(1)]
            if self.directions == 2:
                backward = self._direction(_reverse_valid(h, lengths), layer, "_reverse")
                finals.append(backward.gather(1, last.expand(-1, 1, backward.shape[2])).squeeze(1))
                forward = torch.cat([forward, _reverse_valid(backward, lengths)], dim=-1)
            h = forward
        # The backward direction's final state has seen the whole sequence too.
        feat = torch.cat(finals, dim=-1) if self.readout == "last" else masked_mean(h, mask)
        return self.fc(self.dropout(feat))


class TCNHead(nn.Module):
    """Residual dilated 1-D temporal convolutions (dilation 2**level), masked-mean readout.

    Receptive field = 1 + 2 * (kernel_size - 1) * (2**levels - 1) steps: 61 for kernel 3 and 4
    levels, 125 for 5 levels (the default, covering a 64-step cache). ``causal=True`` pads on the
    left only, so step t never sees the future (streaming use).
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        channels: int = 256,
        levels: int = 5,
        kernel_size: int = 3,
        causal: bool = False,
        dropout: float = 0.1,
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if kernel_size < 2 or levels < 1:
            raise UserError(f"tcn needs kernel_size >= 2 and levels >= 1, got {kernel_size} and {levels}")
        self.receptive_field = 1 + 2 * (kernel_size - 1) * (2**levels - 1)
        self.proj = nn.Linear(input_dim, channels)
        self.blocks = nn.ModuleList(
            TemporalBlock(channels, kernel_size, 2**level, causal, dropout) for level in range(levels)
        )
        self.dropout = Dropout(head_dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        _check_inputs(x, mask)
        keep = mask.to(x.dtype).unsqueeze(-1)
        h = self.proj(x).float()  # the residual stream stays float32 under autocast
        for block in self.blocks:
            h = block(h, keep)
        return self.fc(self.dropout(masked_mean(h, mask)))


def pooled_mean_std(x: Tensor, mask: Tensor) -> Tensor:
    """``[B, 2D]`` masked mean and (population) standard deviation over the valid steps."""
    mu = masked_mean(x, mask)
    var = masked_mean((x - mu.unsqueeze(1)) ** 2, mask)
    return torch.cat([mu, var.clamp_min(0).sqrt()], dim=-1)


class LogRegHead(nn.Module):
    """Multinomial logistic regression on standardised mean+std pooled features.

    Fitted by scikit-learn (lbfgs, :func:`vidfeat.temporal.logreg.fit_logreg`), then held as
    plain tensors: the scaler in buffers, the coefficients in ``fc``. That way the classical baseline
    saves, loads (``weights_only=True``, no pickle), evaluates and predicts exactly like the other heads.
    Mean+std pooling sees the spread of features but not their order. ``C`` (inverse regularisation;
    ``None`` = pick from a grid on the validation split) and ``max_iter`` are fitting options, kept on
    the module like an estimator's hyper-parameters.
    """

    def __init__(self, input_dim: int, num_classes: int, C: float | None = None, max_iter: int = 1000) -> None:
        super().__init__()
        self.C, self.max_iter = C, max_iter
        self.register_buffer("center", torch.zeros(2 * input_dim))
        self.register_buffer("scale", torch.ones(2 * input_dim))
        self.fc = nn.Linear(2 * input_dim, num_classes)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        _check_inputs(x, mask)
        return self.fc((pooled_mean_std(x.float(), mask) - self.center) / self.scale)


class TransformerHead(nn.Module):
    """Transformer encoder over step tokens with positional encoding; CLS-token or masked-mean readout.

    Self-attention over time is what the seed designs call a *non-local block* (embedded-Gaussian
    version: softmax of dot products of linear embeddings, a weighted sum of values and a residual)
    and it is also the *temporal half of TimeSformer's divided space-time attention* (each frame
    token attends to the same location in the other frames; with pooled frame features the location
    is the whole frame). One head class covers all three; padded tokens are excluded through the
    key padding mask.
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        d_model: int = 256,
        layers: int = 2,
        heads: int = 4,
        ff_mult: int = 4,
        dropout: float = 0.1,
        positional: str = "learned",
        max_len: int = 512,
        readout: str = "cls",
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if positional not in ("learned", "sinusoidal"):
            raise UserError(f"transformer positional must be 'learned' or 'sinusoidal', got {positional!r}")
        if readout not in ("cls", "mean"):
            raise UserError(f"transformer readout must be 'cls' or 'mean', got {readout!r}")
        if d_model % heads:
            raise UserError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.positional, self.readout, self.max_len = positional, readout, max_len
        self.proj = nn.Linear(input_dim, d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        if positional == "learned":
            # Start from the sinusoidal table: near-zero random positions are drowned by the projected
            # features and need far more data than ~100 videos to become informative.
            self.pos = nn.Parameter(sinusoidal_encoding(max_len, d_model).unsqueeze(0))
        else:
            self.register_buffer("pos", sinusoidal_encoding(max_len, d_model).unsqueeze(0), persistent=False)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, d_model * ff_mult, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        layer.dropout, layer.dropout1, layer.dropout2 = Dropout(dropout), Dropout(dropout), Dropout(dropout)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(head_dropout)
        self.fc = nn.Linear(d_model, num_classes)

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimiser must not shrink toward zero (timm convention)."""
        return {"pos", "cls"}

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        _check_inputs(x, mask)
        steps = x.shape[1]
        if steps > self.max_len:
            if self.positional == "learned":
                raise UserError(
                    f"sequence of {steps} steps is longer than the learned positions (max_len={self.max_len}); "
                    "sample fewer steps (segments/window) or build the head with a larger max_len"
                )
            pos = sinusoidal_encoding(steps, self.pos.shape[-1]).to(x.device).unsqueeze(0)
        else:
            pos = self.pos[:, :steps]
        h = self.proj(x) + pos.to(x.dtype)
        valid = mask
        if self.readout == "cls":
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1).to(h.dtype), h], dim=1)
            valid = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        h = self.norm(self.encoder(h, src_key_padding_mask=~valid))
        feat = h[:, 0] if self.readout == "cls" else masked_mean(h, mask)
        return self.fc(self.dropout(feat))


HEADS: dict[str, Callable[..., nn.Module]] = {
    "mean": MeanHead,
    "logreg": LogRegHead,
    "lstm": LSTMHead,
    "tcn": TCNHead,
    "transformer": TransformerHead,
    "slowfast": SlowFastHead,
    "gcn": GCNHead,
    "timesformer": TimeSformerHead,
    "eco": ECOHead,
}
"""Head name -> builder ``(input_dim, num_classes, **options) -> nn.Module`` (the class itself)."""


def list_heads() -> list[str]:
    """Names accepted by :func:`create_head`."""
    return list(HEADS)


def uses_regions(name: str) -> bool:
    """Whether head ``name`` needs the store's region features (RoIs) as well as the frame features."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; available heads: {', '.join(HEADS)}")
    return bool(getattr(HEADS[name], "uses_regions", False))


def uses_spatial(name: str) -> bool:
    """Whether head ``name`` needs the store's spatial grid (``--spatial S``) as well as the frame features."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; available heads: {', '.join(HEADS)}")
    return bool(getattr(HEADS[name], "uses_spatial", False))


def training_defaults(name: str) -> dict:
    """Training options the head's recipe changes from :class:`~vidfeat.temporal.training.TrainConfig`'s defaults
    (its ``train_defaults`` attribute); what a user passes still wins."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; available heads: {', '.join(HEADS)}")
    return dict(getattr(HEADS[name], "train_defaults", {}))


def head_defaults(name: str) -> dict:
    """The head's options with their default values (recorded in run configs so runs are reproducible)."""
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; available heads: {', '.join(HEADS)}")
    params = list(inspect.signature(HEADS[name]).parameters.values())[2:]  # input_dim, num_classes
    return {p.name: p.default for p in params}


def resolve_options(name: str, options: dict) -> dict:
    """``options`` completed with the head's defaults; unknown names raise ``ValueError`` listing the valid ones."""
    defaults = head_defaults(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UserError(
            f"unknown option(s) {', '.join(unknown)} for head {name!r}; "
            f"its options are: {', '.join(f'{k}={v!r}' for k, v in defaults.items())}"
        )
    return {**defaults, **options}


def create_head(name: str, input_dim: int, num_classes: int, **options) -> nn.Module:
    """Build head ``name`` for ``input_dim``-d features and ``num_classes`` classes; unknown names or
    options raise ``ValueError`` listing what is available."""
    resolved = resolve_options(name, options)
    return HEADS[name](input_dim, num_classes, **resolved)
