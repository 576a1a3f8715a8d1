"""The integer graph's boundaries and its rescaling: input quantizer, dyadic requantization,
dyadic residual add, output dequantizer (methods.md §2.3–2.4)."""

from __future__ import annotations

import torch
from onnxscript import opset18 as op

from compressor.passes.quant.intonly.arith import TORCH, Arith, OnnxArith, requantize_kernel

INT64 = 7  # onnx.TensorProto enums
INT32 = 6


def int_range(bits: int) -> tuple[int, int]:
    """Symmetric signed b-bit range, as I-ViT's QuantAct clamps."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


@torch.library.custom_op("compressor::quantize_input", mutates_args=())
def quantize_input(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 image → int8 codes held in int64: round_half_even(x / scale) clipped, as QuantizeLinear."""
    return torch.clamp(torch.round(x / scale), -128, 127).to(torch.int64)


@quantize_input.register_fake
def _(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.int64)


def _quantize_input_onnx(x, scale):
    return op.Cast(op.QuantizeLinear(x, scale, op.Constant(value=_int8_zero())), to=INT64)


def _int8_zero():
    import onnx

    return onnx.helper.make_tensor("zero", onnx.TensorProto.INT8, [], [0])


@torch.library.custom_op("compressor::requantize", mutates_args=())
def requantize(x: torch.Tensor, m: torch.Tensor, e: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Dyadic rescale round(x·m / 2^e), per tensor or per last-axis channel; clipped."""
    return requantize_kernel(TORCH, x, m, e, lo, hi)


@requantize.register_fake
def _(x: torch.Tensor, m: torch.Tensor, e: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return torch.empty_like(x)


def _requantize_onnx(x, m, e, lo: int, hi: int):
    return requantize_kernel(OnnxArith(), x, m, e, lo, hi)


def int_add_kernel(a: Arith, x, mx, ex, y, my, ey, lo: int, hi: int):
    """Residual add on a common scale: each branch rescaled on its own, summed, then clipped."""
    return a.clip(a.add(a.round_shift(a.mul(x, mx), ex), a.round_shift(a.mul(y, my), ey)), lo, hi)


@torch.library.custom_op("compressor::int_add", mutates_args=())
def int_add(x: torch.Tensor, mx: torch.Tensor, ex: torch.Tensor, y: torch.Tensor, my: torch.Tensor,
            ey: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """I-ViT's dyadic add: both branches brought to the output scale, then added (§2.4, item 4)."""
    return int_add_kernel(TORCH, x, mx, ex, y, my, ey, lo, hi)


@int_add.register_fake
def _(x, mx, ex, y, my, ey, lo: int, hi: int) -> torch.Tensor:
    return torch.empty_like(x)


def _int_add_onnx(x, mx, ex, y, my, ey, lo: int, hi: int):
    return int_add_kernel(OnnxArith(), x, mx, ex, y, my, ey, lo, hi)


@torch.library.custom_op("compressor::dequantize_output", mutates_args=())
def dequantize_output(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int64 → float32 logits, x·scale with one scale per last-axis channel (DequantizeLinear)."""
    return x.to(torch.int32).to(torch.float32) * scale


@dequantize_output.register_fake
def _(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, dtype=torch.float32)


def _dequantize_output_onnx(x, scale):
    return op.DequantizeLinear(op.Cast(x, to=INT32), scale, axis=-1)


QUANTIZE_INPUT = torch.ops.compressor.quantize_input.default
REQUANTIZE = torch.ops.compressor.requantize.default
INT_ADD = torch.ops.compressor.int_add.default
DEQUANTIZE_OUTPUT = torch.ops.compressor.dequantize_output.default
