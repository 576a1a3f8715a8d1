"""I-LayerNorm: integer LayerNorm with an integer square root (methods.md §2.7).

Two changes to I-ViT's kernel:
- The square root. I-ViT runs 10 Newton steps from 2^16, which cannot get below ~64, so small
  variances get wrong roots (V = 1 → 64). We start at 2^ceil(bitlen(V)/2) ≥ √V, never step up
  (k ← min(k, (k + V//k)//2), which also stops the floor(√V)/floor(√V)+1 oscillation), and
  floor at 1 (a zero-variance row normalizes to 0, then takes the bias). Eight steps are exact
  for every V < 2^62 (`tests/test_intonly.py` checks against math.isqrt).
- The output keeps 15 fractional bits (scale √C/2^15) where I-ViT keeps 30: the next 8-bit
  requantization cannot see the difference, and z·m stays below 2^53 (the float64 simulation's
  exact range). The mean is rounded half up.
The affine is folded into the output scale γ·√C/2^15 and the integer bias round(β/γ / that).
"""

from __future__ import annotations

from typing import Any

import torch

from compressor.passes.quant.intonly.arith import INT32_MAX, TORCH, Arith, OnnxArith

NEWTON_STEPS = 8
FRACTION_BITS = 15


def isqrt(a: Arith, v: Any) -> Any:
    """floor(√v) for 0 < v < 2^62, and 1 for v = 0."""
    k = a.pow2(a.shift_right(a.add(a.bit_length(v), 1), 1))
    for _ in range(NEWTON_STEPS):
        k = a.maximum(a.minimum(k, a.shift_right(a.add(k, a.div_nonneg(v, k)), 1)), 1)
    return k


def i_layernorm_kernel(a: Arith, x: Any, bias: Any, c: int) -> Any:
    y = a.sub(x, a.round_div(a.row_sum(x), c))
    sigma = isqrt(a, a.row_sum(a.mul(y, y)))
    factor = a.per_row(a.div_nonneg(INT32_MAX, sigma))
    return a.add(a.shift_right(a.mul(y, factor), 31 - FRACTION_BITS), bias)


def output_scale(gamma: torch.Tensor) -> torch.Tensor:
    """Per-channel scale of the kernel's output: γ·√C / 2^15 (float64)."""
    return gamma.double() * gamma.numel() ** 0.5 / 2**FRACTION_BITS


@torch.library.custom_op("compressor::i_layernorm", mutates_args=())
def i_layernorm(x: torch.Tensor, bias: torch.Tensor, channels: int) -> torch.Tensor:
    """Integer LayerNorm over the last axis (`channels` wide); `bias` = round(β/γ / output_scale)."""
    return i_layernorm_kernel(TORCH, x, bias, channels)


@i_layernorm.register_fake
def _(x: torch.Tensor, bias: torch.Tensor, channels: int) -> torch.Tensor:
    return torch.empty_like(x)


def _i_layernorm_onnx(x, bias, channels: int):
    return i_layernorm_kernel(OnnxArith(), x, bias, channels)


I_LAYERNORM = torch.ops.compressor.i_layernorm.default
