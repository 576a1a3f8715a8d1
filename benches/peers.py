"""Peer int8 quantizers, run on the same float ONNX and the same calibration tensors as compressor.

A claim that compressor's int8 beats the field is only worth something when the peers run in the
same process, on the same baseline file and the same calibration batches, and are timed in the
same interleaved rounds. Each function takes the float ONNX that compressor exported as its
baseline, writes the peer's quantized ONNX and returns its path; the caller runs it in ONNX
Runtime with compressor's own runner, so threads and session options are identical.

Peers (installed by the `bench` extra, never by the core package):
- ONNX Runtime `quantize_static` after `quant_pre_process`: QDQ, per-channel int8 weights, uint8
  activations, MinMax / Percentile / Entropy calibration (its defaults otherwise);
- NNCF `nncf.quantize` with its ONNX backend (default preset, fast bias correction on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from compressor.errors import MissingExtraError

PeerFn = Callable[[Path, Sequence[np.ndarray], Path], Path]
ORT_METHODS = ("MinMax", "Percentile", "Entropy")


def ort_quantize_static(method: str, op_types: Sequence[str] | None = None) -> PeerFn:
    """ONNX Runtime's static QDQ quantizer with calibration `method`; `op_types` restricts what it quantizes."""

    def run(float_onnx: Path, calib: Sequence[np.ndarray], out: Path) -> Path:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                # one image per call: the Percentile and Entropy calibrators stack the outputs of all
                # calls into one array, which fails on a shorter last batch
                self.batches: Iterator[np.ndarray] = (x[i:i + 1] for x in calib for i in range(len(x)))

            def get_next(self) -> dict[str, np.ndarray] | None:
                x = next(self.batches, None)
                return None if x is None else {input_name: x}

        import onnx

        input_name = onnx.load(str(float_onnx), load_external_data=False).graph.input[0].name
        prepared = out.with_name(out.stem + ".pre.onnx")
        quant_pre_process(str(float_onnx), str(prepared))
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method), op_types_to_quantize=op_types)
        prepared.unlink()
        return out

    return run


def nncf_onnx(float_onnx: Path, calib: Sequence[np.ndarray], out: Path) -> Path:
    """NNCF's post-training quantization with its ONNX backend (what `nncf.quantize(onnx_model)` ships)."""
    try:
        import nncf
        import onnx
    except ImportError:
        raise MissingExtraError("the NNCF peer", "bench", "nncf") from None
    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = onnx.load(str(float_onnx))
    name = model.graph.input[0].name
    images = [x[i:i + 1] for x in calib for i in range(len(x))]  # NNCF counts (and bias-corrects) per item
    quantized = nncf.quantize(model, nncf.Dataset(images, lambda x: {name: x}), subset_size=len(images))
    onnx.save(quantized, str(out))
    return out


def peers() -> dict[str, PeerFn]:
    """Every peer that is installed here, by the name the conformance table shows."""
    found: dict[str, PeerFn] = {}
    try:
        import onnxruntime.quantization  # noqa: F401

        found.update({f"ort-static-{m.lower()}": ort_quantize_static(m) for m in ORT_METHODS})
    except ImportError:
        pass
    try:
        import nncf  # noqa: F401

        found["nncf-onnx"] = nncf_onnx
    except ImportError:
        pass
    return found
