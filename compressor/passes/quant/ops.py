"""Quantize/dequantize as PyTorch custom ops, with their ONNX translations.

They are graph nodes the exporter can see: in PyTorch they are the float simulation, in ONNX
they become QuantizeLinear/DequantizeLinear, which runtimes fuse into integer kernels. Scale
and zero point are tensors (graph constants) so the exported Q/DQ carry initializers, which is
what ONNX Runtime's QDQ fusion requires; the zero point's dtype (uint8/int8) is the quantized
type, as in ONNX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from onnxscript import opset18 as op

if TYPE_CHECKING:
    from compressor.graph import Graph


@torch.library.custom_op("compressor::quantize", mutates_args=())
def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX QuantizeLinear semantics: saturate(round_half_even(x / scale) + zero_point)."""
    info = torch.iinfo(zero_point.dtype)
    shape = _param_shape(x, scale, axis)
    q = torch.round(x / scale.reshape(shape)) + zero_point.reshape(shape).to(torch.int32)
    return torch.clamp(q, info.min, info.max).to(zero_point.dtype)


@quantize.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.empty_like(x, dtype=zero_point.dtype)


@torch.library.custom_op("compressor::dequantize", mutates_args=())
def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    """ONNX DequantizeLinear semantics: (q - zero_point) * scale, per tensor or along `axis`."""
    shape = _param_shape(q, scale, axis)
    return (q.to(torch.int32) - zero_point.reshape(shape).to(torch.int32)).to(torch.float32) * scale.reshape(shape)


@dequantize.register_fake
def _(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.empty_like(q, dtype=torch.float32)


def _param_shape(x: torch.Tensor, scale: torch.Tensor, axis: int) -> list[int]:
    if scale.dim() == 0:
        return []
    shape = [1] * x.dim()
    shape[axis] = -1
    return shape


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Quantize then dequantize: what the exported Q/DQ pair computes."""
    return dequantize(quantize(x, scale, zero_point, axis), scale, zero_point, axis)


@torch.library.custom_op("compressor::quantize_dequantize", mutates_args=())
def quantize_dequantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int) -> torch.Tensor:
    """A per-tensor quantizer on the b-bit grid [0, qmax] inside uint8, for low-bit activations:
    (clamp(round(x / scale) + zero_point, 0, qmax) − zero_point) · scale."""
    z = zero_point.to(torch.float32)
    return (torch.clamp(torch.round(x / scale) + z, 0, qmax) - z) * scale


@quantize_dequantize.register_fake
def _(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.empty_like(x)


def _quantize_dequantize_onnx(x, scale, zero_point, qmax: int):
    """Clip to the b-bit range in float, then a uint8 QuantizeLinear/DequantizeLinear pair: the clip
    makes uint8 saturation land on [0, qmax], and runtimes see an ordinary Q/DQ pair."""
    z = op.Cast(zero_point, to=1)  # FLOAT
    lo = op.Mul(op.Neg(z), scale)
    hi = op.Mul(op.Sub(op.CastLike(op.Constant(value_float=float(qmax)), z), z), scale)
    q = op.QuantizeLinear(op.Clip(x, lo, hi), scale, zero_point)
    return op.DequantizeLinear(q, scale, zero_point)


def _quantize_onnx(x, scale, zero_point, axis: int):
    return op.QuantizeLinear(x, scale, zero_point, axis=axis)


def _dequantize_onnx(q, scale, zero_point, axis: int):
    return op.DequantizeLinear(q, scale, zero_point, axis=axis)


#: The overloads that graph nodes call (a custom op's Python wrapper cannot be a node target).
QUANTIZE = torch.ops.compressor.quantize.default
DEQUANTIZE = torch.ops.compressor.dequantize.default
QUANTIZE_DEQUANTIZE = torch.ops.compressor.quantize_dequantize.default
ONNX_TRANSLATIONS = {QUANTIZE: _quantize_onnx, DEQUANTIZE: _dequantize_onnx,
                     QUANTIZE_DEQUANTIZE: _quantize_dequantize_onnx}


def graph_precision(graph: Graph) -> str:
    """What a low-bit pass recorded ('w4a4'), else 'int8' if any tensor is quantized, else 'fp32'
    (names artifacts in reports)."""
    if PRECISION_KEY in graph.gm.meta:
        return graph.gm.meta[PRECISION_KEY]
    return "int8" if any(n.target in ONNX_TRANSLATIONS for n in graph.nodes) else "fp32"


PRECISION_KEY = "compressor_precision"
# Annotation on a weight's or bias's DequantizeLinear: the float tensor it stands for (in the DQ's
# output layout), for passes that refine the rounding afterwards (bias correction, AdaRound).
FLOAT_VALUE = "float_value"
