"""`openvino` target: OpenVINO IR (`model.xml` + `model.bin` in a folder), run by the OpenVINO runtime on CPU.

Pipeline: the ONNX exporter's file → the per-target rewrite below → `Core.read_model` →
`save_model(compress_to_fp16=False)` (the default would store float weights as fp16, a model the
simulation never computed). OpenVINO reads ONNX QuantizeLinear/DequantizeLinear pairs as
FakeQuantize and its low-precision transformations (LPT) move the dequantization scales past the
GEMMs, so the same Q/DQ graph ONNX Runtime runs also runs in int8 here.

Why a rewrite: `quant.int8_ptq` lays Q/DQ out for ONNX Runtime, and one of its choices costs
OpenVINO dearly. A Linear on (B, N, C) tokens is quantized on its 2-D (B·N, C) view, so the
QuantizeLinear sits after a Reshape (and q, k, v after Squeeze/Transpose). OpenVINO's CPU plugin
fuses a FakeQuantize into the op that produces its input (LayerNorm's MVN, the FC+GELU before fc2,
the attention MatMul) only when it follows that op directly; behind a Reshape it runs as its own
pass over the tensor. On DeiT-S (b8, Zen 3) those stand-alone FakeQuantize ops took 530 ms of
3.6 s, NNCF's IR 28 ms. Per-tensor quantization commutes with ops that only move elements, so each
such Q/DQ pair moves above its view op (exact), and the stand-alone FakeQuantize time fell to 95 ms.
Where the view's input has other consumers the pair stays (moving it would quantize them too).
int32 biases become the float value their DequantizeLinear computes (exact; OpenVINO adds a bias
in float after the int8 GEMM either way).

Inference precision: the CPU plugin picks its own for float ops (bf16 on CPUs with AVX512_BF16 or
AMX, f32 elsewhere) even for an fp32 model, so the float baseline may not run in fp32 at all.
`inference_precision` pins it; the default keeps OpenVINO's choice, the one a user gets, and
`checks.inference_precision` records what the compiled model reports.

`checks.runtime_int8` counts, from the compiled model's runtime graph (`get_runtime_model()`,
each node's `layerType` and `runtimePrecision`), how many FullyConnected (Linear), Convolution and
MatMul nodes execute with int8 inputs, beside how many Linears, convs and activation matmuls the
graph has: what OpenVINO decided, not what the Q/DQ layout hoped for.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import onnx
from pydantic import Field

from compressor.errors import CompressorError
from compressor.eval.metrics import Runner
from exporters.base import Artifact, Exporter, ExportOptions, atomic_dir
from exporters.onnx_index import OnnxIndex

if TYPE_CHECKING:
    from compressor.graph import Graph

#: ONNX ops that only move elements: a per-tensor quantizer gives the same codes before or after them.
VIEW_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")
#: runtime-graph layer types of the GEMMs, by the kind the graph calls them
RUNTIME_GEMMS = {"FullyConnected": "linear", "Convolution": "conv", "MatMul": "matmul"}
INT8 = ("u8", "i8")
XML = "model.xml"


class OpenVinoArtifact(Artifact):
    def runner(self, threads: int) -> Runner:
        compiled = compile_model(self.path / XML, threads, self.meta.get("inference_precision_hint", "default"))
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            out = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
            return np.asarray(out[compiled.output(0)], dtype=np.float32)

        return run


class OpenVinoOptions(ExportOptions):
    inference_precision: Literal["default", "f32", "bf16", "f16"] = Field(
        "default", description="precision of the CPU plugin's float ops: default = OpenVINO's own choice "
                               "(bf16 on CPUs with AVX512_BF16/AMX, f32 elsewhere); f32 forces full precision")
    verify: bool = Field(True, description="run the written IR on the example inputs and record its max |diff| "
                                           "to the graph")


class OpenVinoExporter(Exporter):
    """Any graph the ONNX exporter writes; int8 where OpenVINO's LPT accepts the Q/DQ pattern."""

    target: ClassVar[str] = "openvino"
    suffix: ClassVar[str] = ".openvino"
    extra: ClassVar[str | None] = "openvino"
    Options: ClassVar[type[ExportOptions]] = OpenVinoOptions

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False, "OpenVINO is not installed: pip install 'compressor[openvino]'"
        return True, ""

    def export(self, graph: Graph, path: Path, precision: str) -> OpenVinoArtifact:
        import openvino as ov

        from exporters.onnx import OnnxOptions, to_onnx

        opts: OpenVinoOptions = self.options  # type: ignore[assignment]
        with tempfile.TemporaryDirectory(prefix="openvino-export-") as tmp:
            model = to_onnx(graph, precision, OnnxOptions())[0]
            rewrite = for_openvino(model)
            adapted = Path(tmp) / "adapted.onnx"
            onnx.save(model, str(adapted))
            gemms = graph_gemms(model)
            try:
                ov_model = ov.Core().read_model(str(adapted))
            except Exception as e:
                raise CompressorError(f"OpenVINO could not read the {precision} ONNX: {type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}") from e
            meta: dict[str, Any] = {"format": "OpenVINO IR", "rewrite": rewrite, "inference_precision_hint":
                                    opts.inference_precision, "graph_gemms": gemms}
            with atomic_dir(path) as out:
                out.mkdir()
                ov.save_model(ov_model, str(out / XML), compress_to_fp16=False)
                # an IR that does not compile must not ship; what it compiled to is recorded
                compiled = compile_model(out / XML, 1, opts.inference_precision)
                meta["inference_precision"] = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
                meta["runtime_int8"] = runtime_int8(compiled, gemms)
                if opts.verify:
                    meta["max_abs_diff_vs_graph"] = _verify(compiled, graph)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            meta["openvino"] = importlib.metadata.version("openvino")
        return OpenVinoArtifact(self.target, path, precision, meta)


def compile_model(xml: Path, threads: int, precision: str = "default") -> Any:
    """The IR compiled for the CPU plugin as the report times it: `threads` inference threads, latency hint."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(str(xml), "CPU", config)


def _precision_name(value: Any) -> str:
    """OpenVINO's element type as the short name it prints in runtime graphs (f32, bf16, f16)."""
    name = str(getattr(value, "get_type_name", lambda: value)())
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(name, name)


# ---------------------------------------------------------------- the ONNX rewrite

def for_openvino(model: onnx.ModelProto) -> dict[str, int]:
    """Adapt the quantized ONNX to OpenVINO in place (see the module docstring); both edits are exact."""
    from exporters.tensorrt import _biases_to_float

    return {"qdq_moved_above_views": hoist_qdq_above_views(model), "float_biases": _biases_to_float(model),
            "conv_biases_as_add": conv_biases_as_add(model)}


def conv_biases_as_add(model: onnx.ModelProto) -> int:
    """Conv(x, W, b) becomes Add(Conv(x, W), b[1, C, 1, ...]) where the Conv's output is quantized.

    Why: with the bias inside the Conv, OpenVINO 2026.4's low-precision transformations moved it past
    the output's FakeQuantize on the ViT patch embedding (Conv → Q → DQ → Reshape → Transpose →
    Concat with the class token), so the rounding saw the sum without the bias: about half of the
    tokens one or two codes off and DeiT-S agreement with the simulation at 70 % instead of 92 %.
    As a separate Add the bias is applied before the quantizer, as the simulation does (the same
    float sum)."""
    ix, split = OnnxIndex(model), 0
    nodes = list(model.graph.node)
    for conv in [n for n in nodes if n.op_type == "Conv" and len(n.input) > 2 and n.input[2]]:
        users = ix.consumers.get(conv.output[0], [])
        if not (len(users) == 1 and users[0].op_type == "QuantizeLinear") or conv.input[2] not in ix.init:
            continue
        bias = ix.array(conv.input[2])
        weight = ix.producer.get(conv.input[1])
        rank = len(ix.init[weight.input[0] if weight is not None else conv.input[1]].dims)
        name = f"{conv.output[0]}_bias_nc"
        model.graph.initializer.append(onnx.numpy_helper.from_array(
            bias.reshape(1, -1, *([1] * (rank - 2))).astype(np.float32), name))
        out = conv.output[0]
        conv.output[0] = f"{out}_without_bias"
        del conv.input[2]
        add = onnx.helper.make_node("Add", [conv.output[0], name], [out], name=f"{conv.name}_bias")
        nodes.insert(nodes.index(conv) + 1, add)
        split += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return split


def hoist_qdq_above_views(model: onnx.ModelProto) -> int:
    """view → Q → DQ becomes Q → DQ → view wherever the view's input and output have one consumer each
    and the quantizer is per tensor; repeated, so a pair climbs a chain of views (Squeeze → Transpose)."""
    moved = 0
    while (pair := _next_hoist(model)) is not None:
        view, q, dq = pair
        x, y, out = view.input[0], view.output[0], dq.output[0]
        q.input[0], dq.output[0], view.input[0], view.output[0] = x, y, y, out
        nodes = [n for n in model.graph.node if n is not view]
        nodes.insert(next(i for i, n in enumerate(nodes) if n is dq) + 1, view)  # keep topological order
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        moved += 1
    return moved


def _next_hoist(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto] | None:
    ix = OnnxIndex(model)
    for q in model.graph.node:
        view = ix.producer.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
        if view is None or view.op_type not in VIEW_OPS or not _per_tensor(ix, q):
            continue
        users = ix.consumers.get(q.output[0], [])
        if (len(users) == 1 and users[0].op_type == "DequantizeLinear" and q.output[0] not in ix.outputs
                and len(ix.consumers.get(view.input[0], [])) == 1 and view.input[0] not in ix.outputs
                and len(ix.consumers.get(view.output[0], [])) == 1 and view.output[0] not in ix.outputs):
            return view, q, users[0]
    return None


def _per_tensor(ix: Any, q: onnx.NodeProto) -> bool:
    return q.input[1] in ix.init and ix.array(q.input[1]).size == 1


def graph_gemms(model: onnx.ModelProto) -> dict[str, int]:
    """Linears (MatMul/Gemm with a constant B), convs and activation × activation matmuls in the ONNX."""
    ix, counts = OnnxIndex(model), Counter()
    for n in model.graph.node:
        if n.op_type == "Conv":
            counts["conv"] += 1
        elif n.op_type in ("MatMul", "Gemm"):
            counts["linear" if _constant(ix, n.input[1]) else "matmul"] += 1
    return {k: counts[k] for k in ("linear", "conv", "matmul")}


def _constant(ix: Any, name: str) -> bool:
    """Whether `name` is computed from initializers alone (a weight, possibly through its DequantizeLinear)."""
    if name in ix.init:
        return True
    node = ix.producer.get(name)
    if node is None:
        return False
    return node.op_type == "Constant" or (len(node.input) > 0 and all(_constant(ix, i) for i in node.input if i))


def runtime_int8(compiled: Any, gemms: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per GEMM kind: how many the graph has, and how many runtime-graph nodes of that kind run in int8
    and in float.

    A MatMul the CPU plugin folds into a fused subgraph (its MHA kernel) no longer appears as a MatMul
    node; it counts as not int8 unless that subgraph runs in int8."""
    found: dict[str, Counter] = {k: Counter() for k in gemms}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = RUNTIME_GEMMS.get(str(info["layerType"].astype(str)))
        if kind is not None:
            found[kind]["int8" if str(info["runtimePrecision"].astype(str)) in INT8 else "float"] += 1
    return {k: {"graph": n, "int8": found[k]["int8"], "float": found[k]["float"]} for k, n in gemms.items()}


def _verify(compiled: Any, graph: Graph) -> float:
    import torch

    x = graph.example_inputs[0].numpy()
    got = np.asarray(compiled.create_infer_request().infer({0: x})[compiled.output(0)])
    with torch.no_grad():
        want = graph.gm(*graph.example_inputs)
    want = (want[0] if isinstance(want, (tuple, list)) else want).numpy()
    if got.shape != want.shape:
        raise CompressorError(f"the OpenVINO IR returned shape {got.shape}, the graph {want.shape}")
    return float(np.abs(got - want).max())
