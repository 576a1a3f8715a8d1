"""Shiftmax: I-ViT's integer softmax (methods.md §2.5), and the ShiftExp it is built on.

Deviations from the reference, all for exactness in integers or for long rows:
- ShiftExp's linear term uses `r >> 1` (as I-ViT's TVM port does) instead of PyTorch's
  fractional r/2, so every intermediate is an integer.
- The output is `bits` wide with 1.0 ↔ 2^(bits−1): 8 bits (scale 2⁻⁷, values 0..128) feeds a
  uint8 × int8 MatMulInteger for attn·v; 16 bits (scale 2⁻¹⁵, I-ViT's PyTorch ViT) feeds attn·v
  as two byte planes (`matmul.py`). At L = 197 the 8-bit output floors away 12–56 % of a row's
  mass; the output shift rounds half up, which recovers part of it.
- ShiftExp keeps I-ViT's range n = 15 at every row length, and the normalizer is widened instead:
  `factor = floor((2^(31+k) − 1) / Σ)` with k the fewest extra bits that leave FACTOR_BITS in the
  factor for the largest possible sum (L·(−x0)·2^n), output shift 32 + k − bits. The earlier way,
  shrinking n until floor((2^31 − 1)/Σ) kept 8 bits, cut n to 8–13 at L = 197; every clipped logit
  still adds 2^−n of the row maximum to Σ, so a one-hot row came out at 0.906 instead of ≈ 0.99.
Bounds: exp ≤ −x0·2^n ≤ Σ and exp·factor ≤ 2^(31+k) ≤ 2^52, so the float64 simulation is exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from compressor.passes.quant.intonly.arith import TORCH, Arith, OnnxArith

LOG2E_SHIFTS = (1, 4)  # x + x>>1 − x>>4 = 1.4375·x ≈ log2(e)·x
SHIFTMAX_N = 15  # I-ViT's value
FACTOR_BITS = 8  # bits the normalizer keeps for the largest possible row sum
EXACT_BITS = 52  # float64 holds every integer below 2^53: the simulation's range


def shift_exp_n(x0: int, terms: int, max_n: int) -> int:
    """The largest n ≤ max_n for which a sum of `terms` maximal exps (−x0·2^n each) leaves
    FACTOR_BITS bits in the normalizer floor(2^31 / sum) (ShiftGELU's two-term sigmoid)."""
    return max(1, min(max_n, 31 - FACTOR_BITS - math.ceil(math.log2(terms * -x0))))


def normalizer_bits(x0: int, length: int, n: int = SHIFTMAX_N) -> int:
    """k ≥ 0: the normalizer 2^(31+k) − 1 leaves FACTOR_BITS bits in floor(· / Σ) for the largest
    row sum of `length` exps, length·(−x0)·2^n. Raises if the products would leave float64's exact range."""
    k = max(0, math.ceil(math.log2(length * -x0)) + n + FACTOR_BITS - 31)
    if 31 + k > EXACT_BITS:
        raise ValueError(f"Shiftmax: {length} logits at x0 = {x0} need 2^{31 + k} products; the logit scale "
                         f"{-1 / x0:.2g} is too fine (requantize the logits to fewer bits)")
    return k


def shift_exp(a: Arith, x: Any, x0: int, n: int) -> Any:
    """2^n · e^(x·S) in integers for x ≤ 0, where x0 = floor(−1/S) < 0 represents −1.0."""
    x = a.sub(a.add(x, a.shift_right(x, LOG2E_SHIFTS[0])), a.shift_right(x, LOG2E_SHIFTS[1]))
    x = a.maximum(x, n * x0)
    q = a.div_nonneg(x, x0)  # x ≤ 0, x0 < 0: the integer part of −x·S·log2 e
    r = a.sub(x, a.mul(q, x0))  # in (x0, 0]: the fraction, in units of S
    p = a.sub(a.shift_right(r, 1), x0)  # 2^(r·S) ≈ 1 + r·S/2, in units of S
    return a.mul(p, a.pow2(a.sub(n, q)))


def shiftmax_kernel(a: Arith, x: Any, x0: int, k: int, bits: int) -> Any:
    """Rows of int logits → probabilities with 1.0 ↔ 2^(bits−1); k from `normalizer_bits`."""
    e = shift_exp(a, a.sub(x, a.row_max(x)), x0, SHIFTMAX_N)
    factor = a.div_nonneg(2 ** (31 + k) - 1, a.row_sum(e))
    return a.round_shift(a.mul(e, factor), 32 + k - bits)


@torch.library.custom_op("compressor::shiftmax", mutates_args=())
def shiftmax(x: torch.Tensor, x0: int, k: int, bits: int) -> torch.Tensor:
    """Integer softmax over the last axis of int64 logits with scale S (x0 = floor(−1/S))."""
    return shiftmax_kernel(TORCH, x, x0, k, bits)


@shiftmax.register_fake
def _(x: torch.Tensor, x0: int, k: int, bits: int) -> torch.Tensor:
    return torch.empty_like(x)


def _shiftmax_onnx(x, x0: int, k: int, bits: int):
    return shiftmax_kernel(OnnxArith(), x, x0, k, bits)


SHIFTMAX = torch.ops.compressor.shiftmax.default
