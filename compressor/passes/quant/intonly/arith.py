"""The integer arithmetic every I-ViT kernel is written in, once, for two backends.

Each kernel (`shiftmax`, `shiftgelu`, `i_layernorm`, `requantize`) is a function of an `Arith`:
`TorchArith` runs it on torch tensors — int64 for the integer reference, float64 for the
simulation that calibration and fine-tuning use — and `OnnxArith` emits the same steps as ONNX
integer operators (onnxscript) for the exported artifact. One source per kernel means the three
cannot drift apart; the tests check that the float64 run equals the int64 run bit for bit, which
holds because every intermediate stays below 2^53 (the bounds are argued in each kernel).

Division is floor division throughout, an arithmetic right shift for powers of two (ONNX's
Mod/Div pair cost half the integer graph's time in ONNX Runtime before the shifts), and rounding
is round-half-up, `(a + 2^(k−1)) >> k`, which is what integer hardware does; I-ViT's float32
reference rounds half to even, which differs only on exact ties (methods.md §2.4).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx
import torch
from onnxscript import opset18 as op

POW2_BITS = 63  # 2^0 .. 2^62: every power an int64 holds
OFFSET_BITS = 62
OFFSET = 2**OFFSET_BITS  # makes values non-negative for ONNX's unsigned BitShift
INT32_MAX = 2**31 - 1


class Arith:
    """The operations the kernels use; `a`/`b` are backend values or Python ints."""

    def add(self, a: Any, b: Any) -> Any: ...
    def sub(self, a: Any, b: Any) -> Any: ...
    def mul(self, a: Any, b: Any) -> Any: ...
    def floor_div(self, a: Any, b: Any) -> Any: ...
    def minimum(self, a: Any, b: Any) -> Any: ...
    def maximum(self, a: Any, b: Any) -> Any: ...
    def clip(self, a: Any, lo: int, hi: int) -> Any: ...
    def row_max(self, a: Any) -> Any: ...
    def row_sum(self, a: Any) -> Any: ...
    def pow2(self, e: Any) -> Any: ...
    def bit_length(self, a: Any) -> Any: ...

    def shift_right(self, a: Any, k: Any) -> Any:
        """floor(a / 2^k): an arithmetic right shift (k an int or one per last-axis channel)."""

    def div_nonneg(self, a: Any, b: Any) -> Any:
        """a / b where the quotient is known ≥ 0, so truncation is floor: one ONNX Div, no Mod."""
        return self.floor_div(a, b)

    def per_row(self, a: Any) -> Any:
        """Mark a per-row value (last axis of size 1) as computed once per row (see OnnxArith)."""
        return a

    def round_div(self, a: Any, d: int) -> Any:
        """round(a / d) for d > 0, ties up."""
        return self.floor_div(self.add(a, d // 2), d)

    def round_shift(self, a: Any, k: Any) -> Any:
        """round(a / 2^k), ties up: the dyadic rescale's rounding."""
        half = (1 << k) >> 1 if isinstance(k, int) else self.shift_right(self.pow2(k), 1)
        return self.shift_right(self.add(a, half), k)


class TorchArith(Arith):
    """Torch tensors of one dtype: int64 (reference) or float64 (simulation, differentiable)."""

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b

    def floor_div(self, a, b):
        if isinstance(a, int) and isinstance(b, int):
            return a // b
        return torch.div(a, b, rounding_mode="floor")

    def minimum(self, a, b):
        return torch.minimum(a, _like(b, a)) if torch.is_tensor(a) else torch.minimum(_like(a, b), b)

    def maximum(self, a, b):
        return torch.maximum(a, _like(b, a)) if torch.is_tensor(a) else torch.maximum(_like(a, b), b)

    def clip(self, a, lo, hi):
        return torch.clamp(a, lo, hi)

    def shift_right(self, a, k):
        if not a.is_floating_point():
            return a >> k
        return torch.floor(a / (2.0**k if isinstance(k, int) else self.pow2(k.to(a.dtype))))

    def row_max(self, a):
        return a.amax(-1, keepdim=True)

    def row_sum(self, a):
        return a.sum(-1, keepdim=True)

    def pow2(self, e):
        return _pow2_table(e.dtype)[e.long()]

    def bit_length(self, a):
        return (a.unsqueeze(-1) >= _pow2_table(a.dtype)).sum(-1).to(a.dtype)


@functools.cache
def _pow2_table(dtype: torch.dtype) -> torch.Tensor:
    """2^0 .. 2^62 in `dtype` (exact in float64 too), built once per dtype: pow2 runs in every kernel."""
    return torch.tensor([2**i for i in range(POW2_BITS)], dtype=dtype)


def _like(v: Any, ref: torch.Tensor) -> torch.Tensor:
    return v if torch.is_tensor(v) else torch.tensor(v, dtype=ref.dtype)


class OnnxArith(Arith):
    """ONNX int64 operators. Floor division is `(a − Mod(a, b)) / b` (Mod with fmod=0 takes the
    divisor's sign, so the subtraction leaves an exact multiple and ONNX's truncating Div is exact)."""

    @staticmethod
    def c(v: Any) -> Any:
        return op.Constant(value_int=v) if isinstance(v, int) else v

    def add(self, a, b):
        return op.Add(self.c(a), self.c(b))

    def sub(self, a, b):
        return op.Sub(self.c(a), self.c(b))

    def mul(self, a, b):
        return op.Mul(self.c(a), self.c(b))

    def floor_div(self, a, b):
        a, b = self.c(a), self.c(b)
        return op.Div(op.Sub(a, op.Mod(a, b, fmod=0)), b)

    def div_nonneg(self, a, b):
        return op.Div(self.c(a), self.c(b))

    def per_row(self, a):
        """An identity ReduceMax over the size-1 last axis. TVM fuses injective row computations
        into their per-element consumer, so I-LayerNorm's eight Newton steps ran once per element
        (C times per row); a reduction is a fusion boundary, so they run once per row."""
        return op.ReduceMax(a, op.Constant(value_ints=[-1]), keepdims=1)

    # Clip for a constant bound and Where for two tensors: TVM's ONNX importer turns Min/Max into
    # broadcast + stack + reduce, which was the integer graph's most expensive TVM kernel.
    def minimum(self, a, b):
        if isinstance(a, int):
            a, b = b, a
        return op.Clip(a, None, self.c(b)) if isinstance(b, int) else op.Where(op.Less(a, b), a, b)

    def maximum(self, a, b):
        if isinstance(a, int):
            a, b = b, a
        return op.Clip(a, self.c(b)) if isinstance(b, int) else op.Where(op.Greater(a, b), a, b)

    def clip(self, a, lo, hi):
        return op.Clip(a, self.c(lo), self.c(hi))

    def shift_right(self, a, k):
        """ONNX's BitShift takes unsigned types only: shift a + 2^62 (≥ 0 for every value the
        kernels produce, all below 2^53 in magnitude) and take 2^(62−k) back off."""
        if isinstance(k, int) and k == 0:
            return a
        u64 = onnx.TensorProto.UINT64
        k = self.c(k)
        shifted = op.BitShift(op.Cast(op.Add(a, self.c(OFFSET)), to=u64), op.Cast(k, to=u64), direction="RIGHT")
        return op.Sub(op.Cast(shifted, to=onnx.TensorProto.INT64), self.pow2(op.Sub(self.c(OFFSET_BITS), k)))

    def row_max(self, a):
        return op.ReduceMax(a, op.Constant(value_ints=[-1]), keepdims=1)

    def row_sum(self, a):
        return op.ReduceSum(a, op.Constant(value_ints=[-1]), keepdims=1)

    def pow2(self, e):
        one = op.Constant(value=onnx.helper.make_tensor("one", onnx.TensorProto.UINT64, [], [1]))
        return op.Cast(op.BitShift(one, op.Cast(e, to=onnx.TensorProto.UINT64), direction="LEFT"),
                       to=onnx.TensorProto.INT64)

    def bit_length(self, a):
        table = op.Constant(value_ints=[2**i for i in range(POW2_BITS)])
        above = op.GreaterOrEqual(op.Unsqueeze(a, op.Constant(value_ints=[-1])), table)
        return op.ReduceSum(op.Cast(above, to=onnx.TensorProto.INT64), op.Constant(value_ints=[-1]), keepdims=0)


TORCH = TorchArith()


def dyadic(ratio: np.ndarray | float, bits: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(m, e) with ratio ≈ m / 2^e and |m| < 2^bits, per element (I-ViT's `fixedpoint_mul`, §2.4).

    I-ViT keeps 31 bits; we keep 24 so that z·m stays below 2^53 for every accumulator our graphs
    produce (|z| < 2^29), which is what lets the float64 simulation equal the int64 reference. The
    output is at most 16 bits, so 24 bits of multiplier are 8 more than it can resolve. A ratio too
    small to matter (e > 62) becomes m = 0.
    """
    r = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    if np.any(np.abs(r) >= 2.0 ** (bits - 1)):
        raise ValueError(f"requantization ratio {float(np.abs(r).max()):g} is too large for a dyadic multiplier")
    f, exp = np.frexp(r)  # r = f·2^exp, |f| in [0.5, 1)
    m = np.floor(f * 2.0**bits + 0.5).astype(np.int64)
    e = (bits - exp).astype(np.int64)
    m = np.where(e > POW2_BITS - 1, 0, m)
    return m, np.minimum(e, POW2_BITS - 1)


def requantize_kernel(a: Arith, x: Any, m: Any, e: Any, lo: int, hi: int) -> Any:
    """round(x·m / 2^e) clipped to [lo, hi]; m and e scalars or one per last-axis channel."""
    return a.clip(a.round_shift(a.mul(x, m), e), lo, hi)
