"""Shiftmax: I-ViT's integer softmax (methods.md §2.5), and the ShiftExp it is built on.

Deviations from the reference, all for exactness in integers:
- ShiftExp's linear term uses `r >> 1` (as I-ViT's TVM port does) instead of PyTorch's
  fractional r/2, so every intermediate is an integer.
- The output is `bits` wide with 1.0 ↔ 2^(bits−1): 8 bits (scale 2⁻⁷, values 0..128) feeds a
  uint8 × int8 MatMulInteger for attn·v; I-ViT's PyTorch ViT uses 16 bits, its TVM port 8.
- ShiftExp's range n is chosen per layer (`shift_exp_n`) rather than fixed at 15: a row sums to
  at most L·(−x0)·2^n, and the normalizer floor(2^31/sum) must keep ≥ 8 bits, else a fine scale
  (large −x0) or a long row truncates it (factor 1.9 → 1 halves every probability).
Bounds: exp ≤ −x0·2^n and exp·factor ≤ 2^31, so every product stays far below 2^53.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from compressor.passes.quant.intonly.arith import INT32_MAX, TORCH, Arith, OnnxArith

LOG2E_SHIFTS = (1, 4)  # x + x>>1 − x>>4 = 1.4375·x ≈ log2(e)·x
SHIFTMAX_N = 15  # I-ViT's value
FACTOR_BITS = 8  # bits kept by floor(2^31 / sum of exps)


def shift_exp_n(x0: int, terms: int, max_n: int = SHIFTMAX_N) -> int:
    """The largest n ≤ max_n for which a sum of `terms` maximal exps (−x0·2^n each) leaves
    FACTOR_BITS bits in the normalizer floor(2^31 / sum)."""
    return max(1, min(max_n, 31 - FACTOR_BITS - math.ceil(math.log2(terms * -x0))))


def shift_exp(a: Arith, x: Any, x0: int, n: int) -> Any:
    """2^n · e^(x·S) in integers for x ≤ 0, where x0 = floor(−1/S) < 0 represents −1.0."""
    x = a.sub(a.add(x, a.shift_right(x, LOG2E_SHIFTS[0])), a.shift_right(x, LOG2E_SHIFTS[1]))
    x = a.maximum(x, n * x0)
    q = a.div_nonneg(x, x0)  # x ≤ 0, x0 < 0: the integer part of −x·S·log2 e
    r = a.sub(x, a.mul(q, x0))  # in (x0, 0]: the fraction, in units of S
    p = a.sub(a.shift_right(r, 1), x0)  # 2^(r·S) ≈ 1 + r·S/2, in units of S
    return a.mul(p, a.pow2(a.sub(n, q)))


def shiftmax_kernel(a: Arith, x: Any, x0: int, n: int, bits: int) -> Any:
    e = shift_exp(a, a.sub(x, a.row_max(x)), x0, n)
    total = a.minimum(a.row_sum(e), INT32_MAX)
    factor = a.div_nonneg(INT32_MAX, total)
    return a.shift_right(a.mul(e, factor), 32 - bits)


@torch.library.custom_op("compressor::shiftmax", mutates_args=())
def shiftmax(x: torch.Tensor, x0: int, n: int, bits: int) -> torch.Tensor:
    """Integer softmax over the last axis of int64 logits with scale S (x0 = floor(−1/S))."""
    return shiftmax_kernel(TORCH, x, x0, n, bits)


@shiftmax.register_fake
def _(x: torch.Tensor, x0: int, n: int, bits: int) -> torch.Tensor:
    return torch.empty_like(x)


def _shiftmax_onnx(x, x0: int, n: int, bits: int):
    return shiftmax_kernel(OnnxArith(), x, x0, n, bits)


SHIFTMAX = torch.ops.compressor.shiftmax.default
