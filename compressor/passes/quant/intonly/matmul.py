"""Integer matrix products: int8 × int8 → int32 accumulate (MatMulInteger in ONNX).

Values travel as int64 in the PyTorch graph (so the reference never overflows); the ONNX
translation casts them to the 8-bit types MatMulInteger takes, which is exact because every
producer clips to that range first.

Activations enter MatMulInteger as uint8, a signed one shifted by 128 with zero point 128 (the
same product). B, the second operand, depends on the CPU the artifact is exported on:
- with VNNI (or AMX) it stays int8: ONNX Runtime's u8 × s8 GEMM is exact there and its fast
  path (ViT-S: 19 ms against 369 ms for s8 × s8).
- without, it is shifted to uint8 too. The u8 × s8 GEMM multiplies with `vpmaddubsw`, which adds
  pairs of products into int16 with saturation: pairs beyond 32767 came out wrong (30618 off on
  one random 64-deep row; the integer ViT at 224 px disagreed with its reference). u8 × u8 is
  exact (`vpmaddwd` on 16-bit values); s8 × s8 is exact too but slower on this AVX2 Zen 3
  (`benches/int_only.py --gemm-operands`).

Post-softmax probabilities are unsigned: 0..128 from an 8-bit Shiftmax, 0..2^15 from a 16-bit
one ("wide"). A wide A is split into byte planes, A = 256·hi + lo with hi in 0..128 and lo in
0..255, and multiplied as two 8-bit MatMulIntegers: exact (|lo·v| summed over 197 keys stays
below 2^23) and on the runtimes' 8-bit GEMMs.
"""

from __future__ import annotations

import onnx
import torch
from onnxscript import opset18 as op

from compressor.passes.quant.intonly.requant import INT64

INT8, UINT8 = 3, 2


@torch.library.custom_op("compressor::int_linear", mutates_args=())
def int_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x·Wᵀ + b with int8 weight codes and an int32 bias (scale S_x·S_w per output channel)."""
    return int_linear_kernel(x, weight, bias)


def int_linear_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point():
        return exact_product(x, weight.T) + bias
    return x @ weight.to(x.dtype).T + bias.to(x.dtype)


def exact_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of int64 tensors, computed by float64 BLAS. Exact: every operand is an 8-bit code
    (a 16-bit Shiftmax output at most), so no partial sum reaches 2^53 (2^15 · 2^7 · K for K up
    to 2^30), and the integer result does not depend on the order of the sums. torch's int64
    matmul has no BLAS: it took 36x longer (21 s for one qkv Linear on 64 images at 197 tokens)."""
    return (a.double() @ b.double()).to(torch.int64)


@int_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _int_linear_onnx(x, weight, bias):
    a, a_zero = _as_uint8(x)
    w, w_zero = _b_operand(op.Transpose(weight, perm=[1, 0]))
    acc = op.MatMulInteger(a, w, a_zero, w_zero)
    return op.Add(op.Cast(acc, to=INT64), op.Cast(bias, to=INT64))


def _b_operand(b):
    """MatMulInteger's B and b_zero_point: int8 where ONNX Runtime's u8 × s8 GEMM is exact, else
    uint8 + 128 (module docstring). Decided when exporting, like int8_ptq's `reduce_range: auto`."""
    from compressor.cpu import has_vnni

    if has_vnni():
        return op.Cast(b, to=INT8), None
    return _as_uint8(b)


def _as_uint8(x):
    """Signed 8-bit codes (int8 or int64) as uint8 + 128 with zero point 128: the same product
    on the exact uint8 × uint8 kernels (module docstring)."""
    zero = onnx.helper.make_tensor("zero_point_128", UINT8, [], [128])
    shifted = op.Add(op.Cast(x, to=INT64), op.Constant(value_int=128))
    return op.Cast(shifted, to=UINT8), op.Constant(value=zero)


@torch.library.custom_op("compressor::int_matmul", mutates_args=())
def int_matmul(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool, a_wide: bool) -> torch.Tensor:
    """a @ b of two activations (q·kᵀ, attn·v): 8-bit, `a_unsigned` for softmax outputs, `a_wide`
    for a 16-bit softmax output (0..2^15)."""
    return exact_product(a, b)


@int_matmul.register_fake
def _(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool, a_wide: bool) -> torch.Tensor:
    return a.new_empty((*a.shape[:-1], b.shape[-1]))


def _int_matmul_onnx(a, b, a_unsigned: bool, a_wide: bool):
    b, b_zero = _b_operand(b)
    if a_wide:
        hi = op.Div(a, op.Constant(value_int=256))  # a ≥ 0: truncation is floor
        lo = op.Sub(a, op.Mul(hi, op.Constant(value_int=256)))
        acc_hi = op.Cast(op.MatMulInteger(op.Cast(hi, to=UINT8), b, None, b_zero), to=INT64)
        acc_lo = op.Cast(op.MatMulInteger(op.Cast(lo, to=UINT8), b, None, b_zero), to=INT64)
        return op.Add(op.Mul(acc_hi, op.Constant(value_int=256)), acc_lo)
    if a_unsigned:
        acc = op.MatMulInteger(op.Cast(a, to=UINT8), b, None, b_zero)
    else:
        a, a_zero = _as_uint8(a)
        acc = op.MatMulInteger(a, b, a_zero, b_zero)
    return op.Cast(acc, to=INT64)


INT_LINEAR = torch.ops.compressor.int_linear.default
INT_MATMUL = torch.ops.compressor.int_matmul.default
