"""Small building blocks shared by the temporal heads (kept apart so every head module can import them)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid steps of ``x [B, T, C]``; padding contributes nothing."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout with a mask drawn as 16-bit random integers, four per 64-bit draw.

    On CPUs ``nn.functional.dropout``'s ``bernoulli_`` costs 7-13 ns per element and ``torch.rand`` about 4.5;
    drawing whole 64-bit words and comparing each 16-bit quarter with a threshold costs about 1.1, and the heads
    spent 10-15% of a training step drawing masks. Each value is kept with probability ``1 - q`` and scaled by
    ``1 / (1 - q)``, where ``q`` is ``p`` rounded to a multiple of 2**-16 (exactly ``p`` for 0.5 or 0.25, within
    8e-6 of it otherwise), so the expectation is unchanged; draws come from torch's seeded generator."""
    if not training or p == 0:
        return x
    dropped = round(p * 65536)
    if dropped == 65536:
        return torch.zeros_like(x)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device)
    draws = words.random_(torch.iinfo(torch.int64).min, None).view(torch.int16)[: x.numel()].view(x.shape)
    keep = draws >= dropped - 32768
    return x * keep.to(x.dtype) * (65536 / (65536 - dropped))


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask as :func:`dropout` does (a drop-in module: same options, no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def sinusoidal_encoding(length: int, dim: int) -> Tensor:
    """Fixed sin/cos positions (Vaswani et al.); works for any length, unlike learned positions."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


class TemporalBlock(nn.Module):
    """Two dilated convolutions with a residual connection (Bai et al. 2018), per-step LayerNorm.

    Padded steps are zeroed before each convolution, so a valid step near the end sees exactly the
    zero padding it would see without batch padding; per-step normalisation keeps padding out of
    the statistics.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int, causal: bool, dropout: float) -> None:
        super().__init__()
        total = (kernel_size - 1) * dilation
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)
        self.dilation = dilation
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.norm1 = nn.LayerNorm(channels)
        self.norm2 = nn.LayerNorm(channels)
        self.dropout = Dropout(dropout)

    def _conv(self, conv: nn.Conv1d, norm: nn.LayerNorm, x: Tensor, keep: Tensor) -> Tensor:
        steps = x.shape[1]
        # Offset of each tap from the output step; a tap at least `steps` away only ever reads the zero padding.
        offsets = [tap * self.dilation - self.pad[0] for tap in range(conv.kernel_size[0])]
        live = [tap for tap, offset in enumerate(offsets) if abs(offset) < steps]  # a run of consecutive taps
        # The convolution as one matrix product over the live taps' shifted copies of the sequence (im2col): the
        # same sums as conv1d, a fraction of the work when taps only read padding, and under bfloat16 autocast
        # a fast GEMM where oneDNN's dilated bf16 conv1d is ~8x slower than float32's. Norm and residual stay float32.
        if live:
            padded = nn.functional.pad(x * keep, (0, 0, *self.pad))
            taps = torch.cat([padded[:, offset + self.pad[0]:offset + self.pad[0] + steps]
                              for offset in offsets[live[0]:live[-1] + 1]], -1)
            # A slice, not an index list: indexing copies the weight and its backward scatters (~15% of a TCN step).
            weight = conv.weight[:, :, live[0]:live[-1] + 1].permute(0, 2, 1).reshape(conv.out_channels, -1)
            y = nn.functional.linear(taps, weight, conv.bias)
        else:  # an even kernel dilated past both ends of the sequence reads only padding
            y = conv.bias.expand(x.shape[0], steps, -1)
        return self.dropout(torch.relu(norm(y.float())))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        y = self._conv(self.conv1, self.norm1, x, keep)
        y = self._conv(self.conv2, self.norm2, y, keep)
        return torch.relu(x + y)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters, initialisation and results, computed
    here so that its attention dropout is :func:`dropout`'s.

    On a CPU ``nn.MultiheadAttention`` draws that dropout with ``bernoulli_`` (15 ns per element on the timesformer
    bench's 4 M attention weights per batch) and its backward pass zero-fills and copies the packed q/k/v projection;
    together a third of a timesformer training step. The parameter names are the module's (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), so state dicts of either load into the other.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width ({width}) must be divisible by heads ({heads})")
        self.heads, self.dropout = heads, dropout
        # In nn.MultiheadAttention's order, so a seeded build draws the same initial weights.
        self.out_proj = nn.Linear(width, width)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, padding: Tensor | None = None) -> Tensor:
        """``x [B, N, W]`` -> ``[B, N, W]``; ``padding [B, N]`` is True at the tokens no query may attend to."""
        batch, tokens, width = x.shape
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (q * (width // self.heads) ** -0.5) @ k.transpose(-2, -1)
        if padding is not None:
            scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        weights = dropout(torch.softmax(scores.float(), dim=-1), self.dropout, self.training)
        return self.out_proj((weights @ v).transpose(1, 2).reshape(batch, tokens, width))
