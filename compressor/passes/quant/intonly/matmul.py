"""Integer matrix products: int8 × int8 → int32 accumulate (MatMulInteger in ONNX).

Values travel as int64 in the PyTorch graph (so the reference never overflows); the ONNX
translation casts them to the 8-bit types MatMulInteger takes, which is exact because every
producer clips to that range first. Post-softmax probabilities are unsigned (0..128).
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
    return x @ weight.to(x.dtype).T + bias.to(x.dtype)


@int_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _int_linear_onnx(x, weight, bias):
    w = op.Transpose(weight, perm=[1, 0])
    if _unsigned_gemm_is_exact():
        a, zero = _as_uint8(x)
        acc = op.MatMulInteger(a, w, zero)
    else:
        acc = op.MatMulInteger(op.Cast(x, to=INT8), w)
    return op.Add(op.Cast(acc, to=INT64), op.Cast(bias, to=INT64))


def _unsigned_gemm_is_exact() -> bool:
    """Whether ONNX Runtime's u8 × s8 GEMM is exact on this CPU.

    With VNNI (or AMX) it is, and it is ONNX Runtime's fast path (ViT-S s8 × s8 took 369 ms of the
    graph, u8 × s8 19 ms). Without, MLAS adds pairs of u8·s8 products in int16 with saturation
    (VPMADDUBSW): 255·127·2 overflows and the artifact stops being bit-exact (measured on an AVX2
    Zen 3: errors up to 7·10⁴ in the accumulator), so there the exact s8 × s8 path is exported.
    Decided when exporting, like int8_ptq's `reduce_range: auto`.
    """
    from compressor.passes.quant.int8_ptq import cpu_has_vnni

    return cpu_has_vnni()


def _as_uint8(x):
    """int8 codes as uint8 with zero point 128 (MatMulInteger's A and a_zero_point): the same
    product, but ONNX Runtime's fast integer GEMMs (MLAS) take uint8 × int8 activations."""
    zero = onnx.helper.make_tensor("zero_point_128", UINT8, [], [128])
    return op.Cast(op.Add(x, op.Constant(value_int=128)), to=UINT8), op.Constant(value=zero)


@torch.library.custom_op("compressor::int_matmul", mutates_args=())
def int_matmul(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool) -> torch.Tensor:
    """a @ b of two 8-bit activations (q·kᵀ, attn·v); `a_unsigned` for softmax outputs."""
    return a @ b


@int_matmul.register_fake
def _(a: torch.Tensor, b: torch.Tensor, a_unsigned: bool) -> torch.Tensor:
    return a.new_empty((*a.shape[:-1], b.shape[-1]))


def _int_matmul_onnx(a, b, a_unsigned: bool):
    if a_unsigned:  # softmax codes 0..128: 128·127·2 fits int16, exact on every CPU
        acc = op.MatMulInteger(op.Cast(a, to=UINT8), op.Cast(b, to=INT8))
    elif _unsigned_gemm_is_exact():
        a, zero = _as_uint8(a)
        acc = op.MatMulInteger(a, op.Cast(b, to=INT8), zero)
    else:
        acc = op.MatMulInteger(op.Cast(a, to=INT8), op.Cast(b, to=INT8))
    return op.Cast(acc, to=INT64)


INT_LINEAR = torch.ops.compressor.int_linear.default
INT_MATMUL = torch.ops.compressor.int_matmul.default
