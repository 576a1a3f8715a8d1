"""ONNX export through torch's own (dynamo) exporter, run in ONNX Runtime.

Quantize/dequantize custom ops translate to QuantizeLinear/DequantizeLinear (onnxscript), the
batch axis stays symbolic, and the file is checked by onnx.checker before it is renamed into
place.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import onnx
import torch
from pydantic import Field

from compressor.errors import CompressorError
from compressor.eval.metrics import Runner
from compressor.passes.quant import intonly, ops
from exporters.base import Artifact, Exporter, ExportOptions, atomic_path
from exporters.onnx_tables import MAX_VALUES, tabulate_bounded_chains

if TYPE_CHECKING:
    from compressor.graph import Graph

OPSET = 18
TRANSLATIONS = {**ops.ONNX_TRANSLATIONS, **intonly.ONNX_TRANSLATIONS}
KEPT_METADATA = "namespace"


class OnnxArtifact(Artifact):
    def runner(self, threads: int) -> Runner:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle intra-op workers spin by default. The report times every artifact interleaved, and on
        # a 2-core machine ORT's spinning threads took the cores from the next runtime: a TVM float
        # CNN ran at 83 ms instead of 45, an ORT int8 one right after TVM at 5.0 ms instead of 0.9.
        # Without spinning the same artifacts time alike alone and interleaved. The price: ORT alone
        # on ViT-S is about 10 % slower (61-72 vs 70-74 ms at batch 1), as a serving process would
        # not see it; the comparison between runtimes is what the report is for.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

        return run

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in onnx.load(str(self.path), load_external_data=False).graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return counts


class OnnxOptions(ExportOptions):
    opset: int = Field(OPSET, ge=18, description="ONNX opset (18 or newer: per-axis Q/DQ and BitShift)")
    tables: bool = Field(True, description="evaluate integer element-wise chains on an input of at most "
                                           f"{MAX_VALUES} values (ShiftGELU, ShiftExp) as lookup tables, "
                                           "bit-exact (exporters/onnx_tables.py)")
    pack_int4: bool = Field(False, description="store weights whose codes fit in 4 bits as INT4 (opset 21): half "
                                               "the bytes on disk, exactly the same values; ONNX Runtime has no "
                                               "int4 GEMM on CPU, so those layers run as float MatMul after "
                                               "dequantization (compress search sets it for --objective size)")


class OnnxExporter(Exporter):
    target: ClassVar[str] = "onnx"
    suffix: ClassVar[str] = ".onnx"
    Options: ClassVar[type[ExportOptions]] = OnnxOptions

    def export(self, graph: Graph, path: Path, precision: str) -> OnnxArtifact:
        model, tables = to_onnx(graph, precision, self.options)  # type: ignore[arg-type]
        model, packed = pack_int4(model) if self.options.pack_int4 else (model, 0)  # type: ignore[attr-defined]
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
            onnx.checker.check_model(str(tmp), full_check=True)
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        return OnnxArtifact("onnx", path, precision, {"opset": opset, "tables": tables, "int4_weights": packed})


def to_onnx(graph: Graph, precision: str, options: OnnxOptions) -> tuple[onnx.ModelProto, int]:
    """(the graph as ONNX before any runtime's adaptation, element-wise chains tabulated): the one
    quantized graph every ONNX-fed target (ORT, OpenVINO, TensorRT) adapts in its own way."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = _quiet_export(graph.gm, graph.example_inputs, options.opset, ({0: batch},))
    if program is None:  # the graph was captured with a static batch
        program = _quiet_export(graph.gm, graph.example_inputs, options.opset, None)
    if program is None:
        raise CompressorError(f"ONNX export of the {precision} graph failed; run with -v for the exporter's log.")
    model = program.model_proto
    strip_debug_metadata(model)
    return model, tabulate_bounded_chains(model) if options.tables else 0


def pack_int4(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """(the model with every int8 weight whose codes all lie in [-8, 7] stored as INT4, how many).

    Such a weight came from a grid of 4 bits or fewer (an 8-bit per-channel grid uses ±127 in every
    channel), and int4 holds its codes exactly, so the file shrinks and nothing else changes. INT4
    DequantizeLinear needs opset 21: the model is converted (onnx.version_converter) only when
    there is something to pack. Each packed weight gets its own INT4 zero point (the weight's type).
    """
    from onnx import helper, numpy_helper, version_converter

    if not _packable(model):
        return model, 0
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 21:
        model = version_converter.convert_version(model, 21)
    inits = {i.name: i for i in model.graph.initializer}
    packable = _packable(model)
    for node in packable:
        for pos, suffix in ((0, "int4"), (2, "zero_point_int4")):
            a = numpy_helper.to_array(inits[node.input[pos]])
            t = helper.make_tensor(f"{node.input[0]}_{suffix}", onnx.TensorProto.INT4, a.shape, a.ravel().tolist())
            model.graph.initializer.append(t)
            node.input[pos] = t.name
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model, len(packable)


def _packable(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """DequantizeLinear nodes of a constant int8 weight (rank >= 2) on a 4-bit grid, with a constant zero point."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 2
            and n.input[0] in inits and n.input[2] in inits and _fits_int4(inits[n.input[0]])]


def _fits_int4(t: onnx.TensorProto) -> bool:
    from onnx import numpy_helper

    if t.data_type != onnx.TensorProto.INT8 or len(t.dims) < 2:
        return False
    a = numpy_helper.to_array(t)
    return bool(a.min() >= -8 and a.max() <= 7)


def strip_debug_metadata(model: onnx.ModelProto) -> None:
    """Keep each node's module path; drop the exporter's stack traces and FX dumps.

    They are debugging aids that grow a small model's file by half and carry the exporting
    machine's source paths into a shipped artifact.
    """
    for node in model.graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key == KEPT_METADATA]
        del node.metadata_props[:]
        for key, value in keep:
            node.metadata_props.add(key=key, value=value)


def _quiet_export(gm: torch.nn.Module, example: tuple, opset: int, dynamic: tuple | None):
    """Run torch.onnx.export without its console chatter; None if this shape mode fails."""
    log = logging.getLogger(__name__)
    sink = io.StringIO()
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)  # "torchvision is not installed" is noise for us
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return torch.onnx.export(gm, example, dynamo=True, opset_version=opset,
                                     custom_translation_table=TRANSLATIONS, dynamic_shapes=dynamic,
                                     verbose=False, optimize=True)
    except Exception as e:
        log.debug("ONNX export (dynamic=%s) failed: %s\n%s", dynamic is not None, e, sink.getvalue())
        return None
    finally:
        registry_log.setLevel(level)
