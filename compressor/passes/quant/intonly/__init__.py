"""I-ViT integer-only kernels (methods.md §2) as PyTorch custom ops on int64 tensors.

Each op has three faces built from one kernel function: the integer reference (the op itself,
int64), the float64 simulation (`SIMULATIONS`, used to calibrate and fine-tune, equal to the
reference bit for bit) and the ONNX translation (`ONNX_TRANSLATIONS`, integer operators only).
"""

from __future__ import annotations

from compressor.passes.quant.intonly import layernorm, matmul, requant, shiftgelu, shiftmax
from compressor.passes.quant.intonly.arith import TORCH, requantize_kernel
from compressor.passes.quant.intonly.layernorm import I_LAYERNORM, i_layernorm_kernel
from compressor.passes.quant.intonly.matmul import INT_LINEAR, INT_MATMUL, int_linear_kernel
from compressor.passes.quant.intonly.requant import (
    DEQUANTIZE_OUTPUT,
    INT_ADD,
    QUANTIZE_INPUT,
    REQUANTIZE,
    int_add_kernel,
)
from compressor.passes.quant.intonly.shiftgelu import SHIFTGELU, shiftgelu_kernel
from compressor.passes.quant.intonly.shiftmax import SHIFTMAX, shiftmax_kernel

ONNX_TRANSLATIONS = {
    QUANTIZE_INPUT: requant._quantize_input_onnx,
    REQUANTIZE: requant._requantize_onnx,
    INT_ADD: requant._int_add_onnx,
    DEQUANTIZE_OUTPUT: requant._dequantize_output_onnx,
    INT_LINEAR: matmul._int_linear_onnx,
    INT_MATMUL: matmul._int_matmul_onnx,
    SHIFTMAX: shiftmax._shiftmax_onnx,
    SHIFTGELU: shiftgelu._shiftgelu_onnx,
    I_LAYERNORM: layernorm._i_layernorm_onnx,
}

#: float64 versions of each op (same kernel, TorchArith on float64): what `simulate` runs.
SIMULATIONS = {
    QUANTIZE_INPUT: lambda x, scale: QUANTIZE_INPUT(x, scale).double(),
    REQUANTIZE: lambda x, m, e, lo, hi: requantize_kernel(TORCH, x, m, e, lo, hi),
    INT_ADD: lambda *args: int_add_kernel(TORCH, *args),
    DEQUANTIZE_OUTPUT: lambda x, scale: x.float() * scale,
    INT_LINEAR: int_linear_kernel,
    INT_MATMUL: lambda a, b, a_unsigned, a_wide: a @ b,
    SHIFTMAX: lambda x, x0, n, bits: shiftmax_kernel(TORCH, x, x0, n, bits),
    SHIFTGELU: lambda x, x0, n, bits: shiftgelu_kernel(TORCH, x, x0, n, bits),
    I_LAYERNORM: lambda x, bias, c: i_layernorm_kernel(TORCH, x, bias, c),
}
