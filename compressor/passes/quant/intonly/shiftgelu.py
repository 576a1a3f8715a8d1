"""ShiftGELU: I-ViT's integer GELU, x·σ(1.702x) with σ from ShiftExp (methods.md §2.6).

σ(t) = e^(t−m) / (e^(t−m) + e^(−m)) holds for any m. I-ViT takes m = the row max; we take
m = max(t, 0) per element, so one of the two ShiftExp arguments is exactly 0 and the other ≤ 0.
With the row max, a row whose max exceeds ~16/1.702 real units (ShiftExp's floor 2^−n) pushes
both t − m and −m below the floor for most of the row, both exps come out equal and σ = 0.5
whatever t is (at input scale 0.5, x = −54 came out as −27 instead of 0; `tests/test_intonly.py`
has the case). Per element, that cannot happen, and ShiftGELU becomes element-wise. The output
is x·σ with scale S·2^−(bits−1), requantized by the next node. λ-ShiftGELU (I-Segmenter) is not implemented: its
formula is not public (methods.md §6.1).
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.passes.quant.intonly.arith import INT32_MAX, TORCH, Arith, OnnxArith
from compressor.passes.quant.intonly.shiftmax import shift_exp

SIGMOID_SLOPE = 1.702  # GELU(x) ≈ x·σ(1.702·x)
MAX_N = 23  # I-ViT's value; `shift_exp_n(x0, 2, MAX_N)` lowers it for fine scales


def shiftgelu_kernel(a: Arith, x: Any, x0: int, n: int, bits: int) -> Any:
    m = a.maximum(x, 0)
    num = shift_exp(a, a.sub(x, m), x0, n)
    den = a.minimum(a.add(num, shift_exp(a, a.sub(0, m), x0, n)), INT32_MAX)
    sigmoid = a.shift_right(a.mul(num, a.div_nonneg(INT32_MAX, den)), 32 - bits)
    return a.mul(x, sigmoid)


def gelu_x0(scale: float) -> int:
    """ShiftExp's −1.0 for the sigmoid's argument 1.702·x (the slope folded into the scale)."""
    return int(torch.floor(torch.tensor(-1.0 / (SIGMOID_SLOPE * scale), dtype=torch.float64)))


@torch.library.custom_op("compressor::shiftgelu", mutates_args=())
def shiftgelu(x: torch.Tensor, x0: int, n: int, bits: int) -> torch.Tensor:
    """Integer GELU over int64 inputs with scale S (x0 = gelu_x0(S)); output scale S·2^−(bits−1)."""
    return shiftgelu_kernel(TORCH, x, x0, n, bits)


@shiftgelu.register_fake
def _(x: torch.Tensor, x0: int, n: int, bits: int) -> torch.Tensor:
    return torch.empty_like(x)


def _shiftgelu_onnx(x, x0: int, n: int, bits: int):
    return shiftgelu_kernel(OnnxArith(), x, x0, n, bits)


SHIFTGELU = torch.ops.compressor.shiftgelu.default
