"""Deployment targets, one module each. `get_exporter(name)` resolves `--export` names."""

from __future__ import annotations

from compressor.errors import CompressorError
from exporters.base import Artifact, Exporter, ExportOptions, atomic_dir, atomic_path
from exporters.coreml import CoreMLArtifact, CoreMLExporter
from exporters.executorch import ExecuTorchArtifact, ExecuTorchExporter
from exporters.onnx import OnnxArtifact, OnnxExporter
from exporters.openvino import OpenVinoArtifact, OpenVinoExporter
from exporters.tensorrt import TensorRTArtifact, TensorRTExporter
from exporters.torch_program import TorchArtifact, TorchExporter
from exporters.tvm import TvmArtifact, TvmExporter

EXPORTERS: dict[str, type[Exporter]] = {
    e.target: e
    for e in (CoreMLExporter, ExecuTorchExporter, OnnxExporter, OpenVinoExporter, TensorRTExporter, TorchExporter,
              TvmExporter)
}


def get_exporter(name: str, **options: object) -> Exporter:
    """The exporter for `name` with its options, or a clear error naming the available targets /
    the missing extra / the bad option."""
    cls = EXPORTERS.get(name)
    if cls is None:
        raise CompressorError(f"unknown export target {name!r}; available here: {', '.join(sorted(EXPORTERS))}.")
    ok, reason = cls.available()
    if not ok:
        raise CompressorError(reason)
    return cls(**options)


__all__ = [
    "EXPORTERS", "Artifact", "CoreMLArtifact", "CoreMLExporter", "ExecuTorchArtifact", "ExecuTorchExporter",
    "ExportOptions", "Exporter", "OnnxArtifact", "OnnxExporter", "OpenVinoArtifact", "OpenVinoExporter",
    "TensorRTArtifact", "TensorRTExporter",
    "TorchArtifact", "TorchExporter", "TvmArtifact", "TvmExporter", "atomic_dir", "atomic_path", "get_exporter",
]
