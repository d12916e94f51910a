"""Small building blocks shared by the temporal heads (kept apart so every head module can import them)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the valid steps of ``x [B, T, C]``; padding contributes nothing."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def sinusoidal_encoding(length: int, dim: int) -> Tensor:
    """Fixed sin/cos positions (Vaswani et al.); works for any length, unlike learned positions."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table
