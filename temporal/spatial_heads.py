"""Heads over spatial grids: TimeSformer's divided space-time attention and ECO's 3D network on 2D feature maps.

Both take the frame features ``x [B, T, D]`` and the store's grid ``spatial [B, T, S*S, Ds]`` (``vidfeat extract
--spatial S``; cells row-major) of the sampled steps, with the step ``mask [B, T]`` of every head. With
``centre=True`` (the default) each cell first loses its mean over the video's valid steps: frozen-CNN cells are
dominated by the scene, which differs from video to video, and on ~100 training videos both heads fit the scenes
and stay at chance on what moves (generated crossing tasks, lite0 grids: train accuracy 0.5 after 300 steps
uncentred, 1.0 after 150 centred). The mean is order-blind, so ``attention="space"`` stays order-blind. Padding never
changes their logits: padded steps are excluded from every attention and readout (timesformer) or zeroed before
every convolution and excluded from the readout (eco).

* ``timesformer`` follows Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?"
  (ICML 2021). A cached grid cell is the patch token: projected to ``width``, plus learned space and time
  positional embeddings. Each block is pre-norm temporal attention across the steps of each cell, then spatial
  attention among the cells of each step, then an MLP (``attention="divided"``); ``"joint"`` attends over all
  tokens at once (the paper's joint space-time baseline) and ``"space"`` drops the temporal attention and the time
  embedding (the paper's space-only model, order-blind by construction). Adapted to cached tensors: tokens are
  S*S pooled cells of a frozen CNN's map rather than 16x16 pixel patches of a trained ViT, and the CLS token
  reads out all tokens once after the blocks (attention pooling with a learned query) instead of travelling
  through each block, which keeps every block's attention a plain per-cell / per-step one.
* ``eco`` follows Zolfaghari et al., "ECO: Efficient Convolutional Network for Online Video Understanding"
  (ECCV 2018): the 2D maps of the sampled steps are stacked to ``[C, T, S, S]`` and a small 3D CNN runs over
  them (ECO-Lite); its pooled output is concatenated with the 2D branch, the mean of the steps' global vectors
  (ECO-Full), then a linear classifier. Adapted to cached tensors: a 1x1x1 channel reduction first (ECO's 3D net
  reads 96-channel Inception maps, a cache has 1280-2048), two residual 3x3x3 blocks instead of 3D-ResNet18's
  later stages (an S x S grid is 4-7 cells wide, not 28), per-position LayerNorm instead of BatchNorm (so that
  padding stays out of the statistics).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vidfeat.features.errors import UserError
from vidfeat.temporal.layers import Dropout, SelfAttention, masked_mean, sinusoidal_encoding

ATTENTIONS = ("divided", "joint", "space")


def check_spatial(x: Tensor, mask: Tensor, spatial: Tensor | None, cells: int, spatial_dim: int, head: str) -> None:
    """Clear errors for inputs a spatial head cannot take."""
    if spatial is None:
        raise ValueError(f"{head} needs the spatial grid (spatial=[B, T, S*S, D]); train it on a store extracted "
                         "with `vidfeat extract --spatial S`")
    if x.dim() != 3 or mask.shape != x.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"{head}: x must be [B, T, D] with a bool mask [B, T], got {tuple(x.shape)} and "
                         f"{mask.dtype} {tuple(mask.shape)}")
    if spatial.dim() != 4 or spatial.shape[:2] != x.shape[:2] or tuple(spatial.shape[2:]) != (cells, spatial_dim):
        raise ValueError(f"{head}: spatial must be [B, T, {cells}, {spatial_dim}] for this head, got "
                         f"{tuple(spatial.shape)}; the grid or feature size differs from the store it was built for")


def centred_cells(spatial: Tensor, mask: Tensor) -> Tensor:
    """Each cell minus its mean over the valid steps: the static scene cancels and what changes stays."""
    weights = mask.to(spatial.dtype)[:, :, None, None]
    mean = (spatial * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1.0)
    return spatial - mean


def project_cells(proj: nn.Linear, spatial: Tensor, mask: Tensor, centre: bool) -> Tensor:
    """``proj`` of every cell, of the centred cells (:func:`centred_cells`) with ``centre``, in float32.

    A linear map commutes with taking the mean, so ``proj(s - mean(s))`` is ``proj(s) - mean(proj(s)) + bias``:
    centring the projected cells does it over ``proj.out_features`` channels (32-64) instead of the grid's depth
    (1280-2048), and the cells need no bfloat16 copy. Float32 even under autocast, so that the scene's large
    values cancel as exactly as before the projection; a per-batch cost of ~10 ms at the bench's 5.2 M values.
    """
    with torch.autocast(spatial.device.type, enabled=False):
        h = proj(spatial.float())
        return centred_cells(h, mask) + proj.bias if centre else h


def grid_encoding(grid: int, width: int) -> Tensor:
    """``[S*S, width]`` positions of row-major cells: a sinusoidal table of the cell's row in the first half of the
    channels, one of its column in the second (each reversed, so that they differ from the time table).

    A single table over the cell index (row * S + column) gives cells of one column unrelated codes, and the
    crossing tasks are decided by the column an object is in at each step: with it ``timesformer`` reached 0.775
    to 0.85 on ``crossing_direction`` (80 training videos per class, seeds 0-4), with row and column apart
    0.9375 to 1.0 (README, Spatial heads)."""
    half = width // 2
    rows = sinusoidal_encoding(grid, half).flip(-1).repeat_interleave(grid, dim=0)
    columns = sinusoidal_encoding(grid, width - half).flip(-1).repeat(grid, 1)
    return torch.cat([rows, columns], dim=-1)


def _grid_options(head: str, spatial_dim: int | None, grid: int | None) -> None:
    if spatial_dim is None or grid is None:
        raise UserError(f"{head} needs spatial_dim and grid (the store's grid depth and size S); training on a "
                         "store with --spatial fills them in")


class _Attention(nn.Module):
    """Pre-norm multi-head self-attention with a residual connection, over ``[batch, tokens, width]``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, dropout)
        self.dropout = Dropout(dropout)

    def forward(self, h: Tensor, padding: Tensor | None = None) -> Tensor:
        return h + self.dropout(self.attn(self.norm(h), padding))


class SpaceTimeBlock(nn.Module):
    """One TimeSformer block over ``h [B, T, N, W]``: temporal attention per cell (divided), attention over all
    tokens (joint) or none (space); then spatial attention per step (divided, space); then an MLP."""

    def __init__(self, width: int, heads: int, ff_mult: int, dropout: float, attention: str) -> None:
        super().__init__()
        self.attention = attention
        self.time = _Attention(width, heads, dropout) if attention == "divided" else None
        self.space = _Attention(width, heads, dropout)  # joint: over all tokens of the video
        self.ff_norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, width * ff_mult), nn.GELU(), Dropout(dropout),
                                nn.Linear(width * ff_mult, width), Dropout(dropout))

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        batch, steps, cells, width = h.shape
        if self.time is not None:
            per_cell = h.transpose(1, 2).reshape(batch * cells, steps, width)
            per_cell = self.time(per_cell, (~mask).repeat_interleave(cells, dim=0))
            h = per_cell.reshape(batch, cells, steps, width).transpose(1, 2)
        if self.attention == "joint":
            h = self.space(h.reshape(batch, steps * cells, width), (~mask).repeat_interleave(cells, dim=1))
        else:
            h = self.space(h.reshape(batch * steps, cells, width))
        h = h.reshape(batch, steps, cells, width)
        return h + self.ff(self.ff_norm(h))


class TimeSformerHead(nn.Module):
    """Divided space-time attention over grid-cell tokens, CLS readout (see the module notes)."""

    uses_spatial = True  # the runner feeds the store's spatial grid (see temporal.runs)
    # On the crossing tasks (10-80 training videos per class) validation accuracy rises within ~10 epochs and then
    # still improves slowly: the best epoch came as late as 46 (eco: 80), past the default patience of 15.
    train_defaults = {"epochs": 80, "patience": 30}

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        spatial_dim: int | None = None,
        grid: int | None = None,
        width: int = 64,
        depth: int = 2,
        heads: int = 4,
        ff_mult: int = 2,
        dropout: float = 0.1,
        attention: str = "divided",
        space_positions: bool = True,
        centre: bool = True,
        max_len: int = 64,
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _grid_options("timesformer", spatial_dim, grid)
        if attention not in ATTENTIONS:
            raise UserError(f"timesformer attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        if width % heads:
            raise UserError(f"width ({width}) must be divisible by heads ({heads})")
        self.spatial_dim, self.cells, self.max_len = spatial_dim, grid * grid, max_len
        self.attention, self.space_positions, self.centre = attention, space_positions, centre
        self.proj = nn.Linear(spatial_dim, width)
        # Learned, started from sinusoidal tables: near-zero random positions are drowned by the projected
        # features and need far more than ~100 videos to become informative (as for the transformer head). Space
        # starts from a row table beside a column table, so a cell's row and column can be read off linearly.
        self.time_pos = nn.Parameter(sinusoidal_encoding(max_len, width).unsqueeze(1))  # [T, 1, W]
        self.space_pos = nn.Parameter(grid_encoding(grid, width))  # [N, W]
        self.blocks = nn.ModuleList(SpaceTimeBlock(width, heads, ff_mult, dropout, attention) for _ in range(depth))
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.readout_norm = nn.LayerNorm(width)
        self.readout = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.dropout = Dropout(head_dropout)
        self.fc = nn.Linear(width, num_classes)

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimiser must not shrink toward zero (timm convention)."""
        return {"time_pos", "space_pos", "cls"}

    def forward(self, x: Tensor, mask: Tensor, spatial: Tensor | None = None) -> Tensor:
        check_spatial(x, mask, spatial, self.cells, self.spatial_dim, "timesformer")
        batch, steps, cells, _ = spatial.shape
        if steps > self.max_len:
            raise UserError(f"{steps} steps are more than the learned time positions (max_len={self.max_len}); "
                             "sample fewer steps or build the head with a larger max_len")
        h = project_cells(self.proj, spatial, mask, self.centre)
        if self.space_positions:
            h = h + self.space_pos
        if self.attention != "space":
            h = h + self.time_pos[:steps]
        for block in self.blocks:
            h = block(h, mask)
        tokens = self.readout_norm(h.reshape(batch, steps * cells, -1))
        query = self.cls.expand(batch, -1, -1).to(tokens.dtype)
        cls = self.readout(query, tokens, tokens, key_padding_mask=(~mask).repeat_interleave(cells, dim=1),
                           need_weights=False)[0][:, 0]
        return self.fc(self.dropout(self.norm(cls)))


class _Residual3d(nn.Module):
    """Two 3x3x3 convolutions with a residual connection, per-position LayerNorm; padded steps are zeroed before
    each convolution, so a valid step next to the padding sees the zeros it would see at the video's end."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm1 = nn.LayerNorm(channels)
        self.norm2 = nn.LayerNorm(channels)

    @staticmethod
    def _conv(conv: nn.Conv3d, norm: nn.LayerNorm, h: Tensor, keep: Tensor) -> Tensor:
        """``h [B, T, S, S, C]`` -> conv -> norm, channels last."""
        # float32 even under autocast: oneDNN's bfloat16 conv3d is slower here than float32's.
        with torch.autocast(h.device.type, enabled=False):
            return norm(conv((h * keep).permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1))

    def forward(self, h: Tensor, keep: Tensor) -> Tensor:
        y = torch.relu(self._conv(self.conv1, self.norm1, h, keep))
        return torch.relu(h + self._conv(self.conv2, self.norm2, y, keep))


class ECOHead(nn.Module):
    """ECO-Full on cached grids: channel reduction, a small 3D CNN over ``[C, T, S, S]``, its masked mean
    concatenated with the mean of the global vectors, linear classifier (see the module notes)."""

    uses_spatial = True  # the runner feeds the store's spatial grid (see temporal.runs)
    train_defaults = {"epochs": 80, "patience": 30}  # as timesformer's

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        spatial_dim: int | None = None,
        grid: int | None = None,
        reduce: int = 32,
        blocks: int = 2,
        global_branch: bool = True,
        centre: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _grid_options("eco", spatial_dim, grid)
        if blocks < 1:
            raise UserError(f"eco needs blocks >= 1, got {blocks}")
        self.spatial_dim, self.grid, self.global_branch, self.centre = spatial_dim, grid, global_branch, centre
        self.reduce = nn.Sequential(nn.Linear(spatial_dim, reduce), nn.LayerNorm(reduce), nn.ReLU())
        self.blocks = nn.ModuleList(_Residual3d(reduce) for _ in range(blocks))
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(reduce + (input_dim if global_branch else 0), num_classes)

    def forward(self, x: Tensor, mask: Tensor, spatial: Tensor | None = None) -> Tensor:
        check_spatial(x, mask, spatial, self.grid * self.grid, self.spatial_dim, "eco")
        batch, steps = mask.shape
        reduced = project_cells(self.reduce[0], spatial, mask, self.centre)
        h = self.reduce[1:](reduced).float().reshape(batch, steps, self.grid, self.grid, -1)  # float32 under autocast
        keep = mask.to(h.dtype)[:, :, None, None, None]
        for block in self.blocks:
            h = block(h, keep)
        valid = mask.repeat_interleave(self.grid * self.grid, dim=1)
        feat = masked_mean(h.reshape(batch, steps * self.grid * self.grid, -1), valid)
        if self.global_branch:
            feat = torch.cat([feat, masked_mean(x, mask)], dim=-1)
        return self.fc(self.dropout(feat))
