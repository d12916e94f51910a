"""SlowFast on a cached sequence (after Feichtenhofer et al., ICCV 2019), adapted to per-step features.

The paper runs two 3D networks over the frames of one clip: a *slow* pathway at a low frame rate with many
channels (what is there), and a *fast* pathway at ``alpha`` times the frame rate with ``beta`` times the
channels (how it moves), joined by lateral connections from fast to slow. Here both pathways are stacks of
temporal convolution blocks over the cached steps: the slow one sees every ``alpha``-th step at ``width``
channels, the fast one every step at ``beta * width``. Before each slow block a lateral connection brings the
fast features to the slow rate, by the paper's time-strided convolution (kernel 5, stride ``alpha``, ``2 beta
width`` channels), or by taking every ``alpha``-th fast step (its time-strided sampling), and is concatenated to
the slow features and projected back to ``width``. The readout concatenates the masked mean of each pathway.

On two stores of the same videos at two frame rates (``fusion=slowfast``, :mod:`vidfeat.temporal.fusion`) each
step is the two stores' rows side by side, and the slow pathway reads the first store's part, the fast pathway
the second's, instead of both reading one sequence.

``pathways="slow"`` is the paper's *slow-only* ablation: the slow pathway alone, without the fast pathway and the
laterals, so what the fast rate adds can be measured on the same options and recipe.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vidfeat.features.errors import UserError
from vidfeat.temporal.layers import Dropout, TemporalBlock, masked_mean

LATERALS = ("conv", "sample", "none")
LATERAL_KERNEL = 5  # the paper's time-strided convolution: 5x1x1, stride alpha
PATHWAYS = ("both", "slow")


class _Lateral(nn.Module):
    """Fast features [B, T, Cf] at the slow rate [B, ceil(T / alpha), C]: time-strided convolution or sampling."""

    def __init__(self, kind: str, fast: int, alpha: int) -> None:
        super().__init__()
        self.kind, self.alpha = kind, alpha
        self.channels = 2 * fast if kind == "conv" else fast
        if kind == "conv":
            self.conv = nn.Conv1d(fast, self.channels, LATERAL_KERNEL, stride=alpha, padding=LATERAL_KERNEL // 2)

    def forward(self, fast: Tensor) -> Tensor:
        if self.kind == "sample":
            return fast[:, :: self.alpha]
        with torch.autocast(fast.device.type, enabled=False):  # oneDNN's bfloat16 conv1d is slower than float32's
            return torch.relu(self.conv(fast.float().transpose(1, 2))).transpose(1, 2)


class SlowFastHead(nn.Module):
    """Slow pathway (every ``alpha``-th step, ``width`` channels) and fast pathway (every step, ``beta * width``
    channels) of temporal convolution blocks, lateral connections fast -> slow, both pathways' means concatenated.

    Padded steps are zeroed before every convolution, so padding never changes the logits; a video shorter than
    ``alpha`` steps still has its first step in the slow pathway. ``input_dim`` = ``(slow_dim, fast_dim)``: each step
    is a slow-rate store's row and a fast-rate store's side by side, and each pathway reads its own.
    ``pathways="slow"`` keeps only the slow pathway (``beta`` and ``lateral`` are then unused).
    """

    def __init__(
        self,
        input_dim: int | tuple[int, int],
        num_classes: int,
        alpha: int = 4,
        beta: float = 0.25,
        width: int = 256,
        depth: int = 2,
        kernel_size: int = 3,
        lateral: str = "conv",
        dropout: float = 0.1,
        head_dropout: float = 0.5,
        pathways: str = "both",
    ) -> None:
        super().__init__()
        if alpha < 1 or depth < 1 or width < 1 or not 0 < beta <= 1:
            raise UserError(f"slowfast needs alpha >= 1, depth >= 1, width >= 1 and 0 < beta <= 1, got alpha={alpha}, "
                            f"depth={depth}, width={width}, beta={beta}")
        if lateral not in LATERALS:
            raise UserError(f"slowfast lateral must be one of {', '.join(LATERALS)}, got {lateral!r}")
        if pathways not in PATHWAYS:
            raise UserError(f"slowfast pathways must be one of {', '.join(PATHWAYS)}, got {pathways!r}")
        if pathways == "slow":
            fast, lateral = 0, "none"
        else:
            fast = max(1, round(beta * width))
        self.alpha = alpha
        two_rates = isinstance(input_dim, (tuple, list))
        slow_dim, fast_dim = input_dim if two_rates else (input_dim, input_dim)
        self.split = slow_dim if two_rates else None  # where the fast store's part of a joined step starts
        self.slow_proj = nn.Linear(slow_dim, width)
        self.fast_proj = nn.Linear(fast_dim, fast) if fast else None
        self.slow_blocks = nn.ModuleList(TemporalBlock(width, kernel_size, 1, False, dropout) for _ in range(depth))
        self.fast_blocks = nn.ModuleList(TemporalBlock(fast, kernel_size, 1, False, dropout)
                                         for _ in range(depth if fast else 0))
        self.laterals = nn.ModuleList(_Lateral(lateral, fast, alpha) for _ in range(depth)) if lateral != "none" else None
        self.fuse = nn.ModuleList(nn.Linear(width + lat.channels, width) for lat in self.laterals or ())
        self.dropout = Dropout(head_dropout)
        self.fc = nn.Linear(width + fast, num_classes)

    def pathways(self, x: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        """The masked means ``([B, width], [B, beta * width])`` of the slow and the fast pathway; only the slow
        one's with ``pathways="slow"``."""
        if x.dim() != 3 or mask.shape != x.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(f"slowfast expects x [B, T, D] and a bool mask [B, T], got {tuple(x.shape)} and "
                             f"{mask.dtype} {tuple(mask.shape)}")
        slow_mask = mask[:, :: self.alpha]
        keep_slow = slow_mask.to(x.dtype).unsqueeze(-1)
        slow_x, fast_x = (x, x) if self.split is None else (x[..., : self.split], x[..., self.split:])
        slow = self.slow_proj(slow_x[:, :: self.alpha])
        if self.fast_proj is None:
            for block in self.slow_blocks:
                slow = block(slow, keep_slow)
            return (masked_mean(slow, slow_mask),)
        keep_fast, fast = mask.to(x.dtype).unsqueeze(-1), self.fast_proj(fast_x)
        for level, (slow_block, fast_block) in enumerate(zip(self.slow_blocks, self.fast_blocks)):
            if self.laterals is not None:
                lateral = self.laterals[level](fast * keep_fast)
                slow = self.fuse[level](torch.cat([slow, lateral], dim=-1))
            slow, fast = slow_block(slow, keep_slow), fast_block(fast, keep_fast)
        return masked_mean(slow, slow_mask), masked_mean(fast, mask)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.cat(self.pathways(x, mask), dim=-1)))
