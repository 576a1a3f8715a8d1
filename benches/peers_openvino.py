"""OpenVINO-side peers and the runtime-graph counts a conformance table needs, importable by any harness.

Every peer takes the float ONNX that compressor exported as its baseline, the calibration batches
compressor used (float32 NCHW arrays) and an output path, and returns the file it wrote, so a
harness gives all of them the same model and the same tensors (the `PeerFn` shape of
`benches/peers.py`). Runners load a file into its runtime with the thread count and session
options compressor's own artifacts use, so what is timed differs only in the model.

Peers (the `bench` extra installs NNCF; OpenVINO is the `openvino` extra):
- `nncf_openvino`: `nncf.quantize` on the OpenVINO model read from the float ONNX, default preset,
  `model_type=TRANSFORMER` for ViTs (its ignored scopes and SmoothQuant for attention models),
  saved as IR without fp16 weight compression;
- `ort_static_gemms`: ONNX Runtime `quantize_static` (QDQ, per-channel int8 weights, uint8
  activations, MinMax) restricted to MatMul/Conv/Gemm: its default op list also quantizes
  Add/Mul/Softmax/LayerNorm inputs and dropped DeiT-S agreement to about 52 % (../shared/deps.md §8);
- `ort_dynamic`: ONNX Runtime `quantize_dynamic` (int8 weights, activations quantized per batch at
  run time, no calibration);
- the float model in OpenVINO at f32 and at OpenVINO's default inference precision (bf16 where the
  CPU has it) are `openvino_runner(baseline, threads, "f32" | "default")`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from compressor.errors import MissingExtraError
from compressor.eval.metrics import Runner

PeerFn = Callable[[Path, Sequence[np.ndarray], Path], Path]
GEMM_OPS = ("MatMul", "Conv", "Gemm")
#: ONNX Runtime's fused kernels after graph optimization that compute a GEMM on int8 operands
ORT_INT8_GEMMS = ("QGemm", "QLinearMatMul", "QLinearConv", "MatMulInteger", "MatMulIntegerToFloat",
                  "ConvInteger", "DynamicQuantizeMatMul", "QAttention", "NhwcQLinearConv")
ORT_FLOAT_GEMMS = ("MatMul", "Gemm", "Conv", "FusedConv", "FusedMatMul", "FusedGemm", "NhwcFusedConv")


def _input_name(onnx_path: Path) -> str:
    import onnx

    return onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name


def nncf_openvino(float_onnx: Path, calib: Sequence[np.ndarray], out: Path, transformer: bool = False) -> Path:
    """NNCF post-training quantization with its OpenVINO backend, written as `out` (.xml + .bin)."""
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        raise MissingExtraError("the NNCF OpenVINO peer", "bench" if e.name == "nncf" else "openvino",
                                e.name or "nncf") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = ov.Core().read_model(str(float_onnx))
    items = [x[i:i + 1] for x in calib for i in range(len(x))]  # NNCF counts (and bias-corrects) per item
    quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def ort_static_gemms(float_onnx: Path, calib: Sequence[np.ndarray], out: Path) -> Path:
    """ONNX Runtime static QDQ quantization of MatMul/Conv/Gemm only (after `quant_pre_process`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = _input_name(float_onnx)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {name: x}

    prepared = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(float_onnx), str(prepared))
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=GEMM_OPS)
    prepared.unlink()
    return out


def ort_dynamic(float_onnx: Path, calib: Sequence[np.ndarray], out: Path) -> Path:
    """ONNX Runtime dynamic quantization (int8 weights; activation ranges computed per run, so `calib` is unused)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    del calib
    quantize_dynamic(str(float_onnx), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=GEMM_OPS)
    return out


def openvino_runner(path: Path, threads: int, precision: str = "default") -> Runner:
    """An IR or ONNX file compiled for OpenVINO's CPU plugin exactly as the `openvino` target compiles its artifacts."""
    from exporters.openvino import compile_model

    compiled = compile_model(path, threads, precision)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})[compiled.output(0)])

    return run


def openvino_int8(path: Path, float_onnx: Path) -> dict[str, dict[str, int]]:
    """`checks.runtime_int8` for any OpenVINO-readable file; the GEMM census comes from the float ONNX."""
    import onnx

    from exporters.openvino import compile_model, graph_gemms, runtime_int8

    return runtime_int8(compile_model(path, 1), graph_gemms(onnx.load(str(float_onnx))))


def ort_int8(onnx_path: Path) -> dict[str, int]:
    """GEMMs in ONNX Runtime's optimized graph (CPU, all optimizations): int8 kernels vs float ones."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    return {"int8": sum(ops[o] for o in ORT_INT8_GEMMS), "float": sum(ops[o] for o in ORT_FLOAT_GEMMS)}


def peers(transformer: bool) -> dict[str, PeerFn]:
    """The quantizing peers installed here, by the name the tables show."""
    found: dict[str, PeerFn] = {}
    try:
        import onnxruntime.quantization  # noqa: F401

        found.update({"ort-static-gemms": ort_static_gemms, "ort-dynamic": ort_dynamic})
    except ImportError:
        pass
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401

        found["nncf-openvino"] = lambda f, c, o: nncf_openvino(f, c, o, transformer)
    except ImportError:
        pass
    return found
