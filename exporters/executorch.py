"""`executorch` target: an XNNPACK-delegated ExecuTorch program (`.pte`), run by the ExecuTorch runtime.

The mobile/edge CPU path of PyTorch itself: no ONNX in between, and the same file runs on Android,
iOS and Linux through the ExecuTorch C++ runtime. Pipeline: `torch.export` → `to_edge_transform_and_lower`
with `XnnpackPartitioner` → `to_executorch()`.

Quantized graphs go through `exporters.quantized_decomposed.to_pt2e` first, because XNNPACK's
partitioner only recognises convert_pt2e's `quantized_decomposed` spelling of Q/DQ. What XNNPACK
then runs in int8 is decided by its partitioner, not by us, and it needs the *output* of a GEMM to be
quantized too (DQ → conv/linear → [relu] → Q). `quant.int8_ptq` quantizes Conv outputs, so Convs
lower to int8 XNNPACK convolutions; its Linears keep a float output (the layout ONNX Runtime's
QGemm wants), so XNNPACK runs them as fp32 fully-connected layers on the dequantized int8 weights:
the numbers match our simulation, the speed and size do not improve there. `artifact.meta["delegation"]`
records, from the XNNPACK graphs actually serialized, how many convolutions / fully-connected layers /
batched matmuls run with int8 inputs, so a report can tell the two apart.

Batch: dynamic by default, but the bound the .pte really accepts is not the exported one: ExecuTorch's
memory planning re-derives it, and for the MNIST CNN exported with batch in [1, 64] (or [1, 4096])
the program's input is planned for 15 rows and larger batches fail in `set_inputs`. So the runner
reads the planned capacity from the method's metadata and splits bigger batches into chunks of at
most that size (no padding). `batch` pins a static batch instead; the runner then splits and pads.

Threads: the runtime's thread pool is process-wide (`_unsafe_reset_threadpool`, experimental in
the pybindings), so the runner resets it to `threads` before each call when another runner moved it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from compressor.errors import CompressorError
from compressor.eval.metrics import Runner
from exporters.base import Artifact, Exporter, ExportOptions, atomic_path, in_chunks, in_fixed_batches, quiet

if TYPE_CHECKING:
    from compressor.graph import Graph

_log = logging.getLogger(__name__)


class ExecuTorchArtifact(Artifact):
    def runner(self, threads: int) -> Runner:
        run = _PteRunner(self.path, threads)
        batch = self.meta.get("batch")
        return in_fixed_batches(run, int(batch)) if isinstance(batch, int) else in_chunks(run, run.capacity)


class ExecuTorchOptions(ExportOptions):
    batch: int | None = Field(None, ge=1, description="static batch compiled into the program; unset = dynamic "
                                                      "batch up to max_batch (a fixed-batch graph keeps its own)")
    max_batch: int = Field(64, ge=1, le=4096, description="upper bound of the dynamic batch (ExecuTorch plans "
                                                         "activation memory for it)")
    verify: bool = Field(True, description="run the written .pte on the example inputs and record its max "
                                           "|diff| to the graph")


class ExecuTorchExporter(Exporter):
    """fp32 graphs → XNNPACK fp32; int8 Q/DQ graphs → XNNPACK int8 where its partitioner accepts the pattern."""

    target: ClassVar[str] = "executorch"
    suffix: ClassVar[str] = ".pte"
    extra: ClassVar[str | None] = "executorch"
    Options: ClassVar[type[ExportOptions]] = ExecuTorchOptions

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import executorch.exir  # noqa: F401
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
        except ImportError:
            return False, "ExecuTorch is not installed: pip install 'compressor[executorch]'"
        return True, ""

    def export(self, graph: Graph, path: Path, precision: str) -> ExecuTorchArtifact:
        from exporters.quantized_decomposed import is_quantized, to_pt2e

        opts = self.options
        static = graph.fixed_batch or opts.batch
        start = time.perf_counter()
        program = _export(graph, static, opts.max_batch, to_pt2e)
        with quiet(), _capture_xnn_graphs() as xnn_graphs:
            try:
                edge = lower_to_edge(program)
                delegation = delegation_summary(edge.exported_program().graph_module, xnn_graphs)
                pte = edge.to_executorch().buffer
            except CompressorError:
                raise
            except Exception as e:
                raise CompressorError(f"ExecuTorch lowering of the {precision} graph failed: {type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}") from e
        if is_quantized(graph) and not delegation["int8_ops"]:
            _log.warning("executorch: no int8 op was delegated to XNNPACK; the int8 program runs in fp32")
        meta: dict[str, Any] = {"format": "ExecuTorch .pte (XNNPACK)", "batch": static or "dynamic",
                                "delegation": delegation}
        if not static:
            meta["max_batch"] = opts.max_batch
        with atomic_path(path) as tmp:
            tmp.write_bytes(pte)
            capacity = _PteRunner(tmp, 1).capacity  # a program that does not load must not ship
            if not static:
                meta["max_batch_planned"] = capacity
            if opts.verify:
                meta["max_abs_diff_vs_graph"] = _verify(tmp, graph, static)
        meta["export_s"] = round(time.perf_counter() - start, 2)
        with contextlib.suppress(Exception):
            meta["executorch"] = importlib.metadata.version("executorch")
        return ExecuTorchArtifact(self.target, path, precision, meta)


def _export(graph: Graph, static: int | None, max_batch: int, to_pt2e: Any) -> torch.export.ExportedProgram:
    """The graph as a program at the batch the .pte will have: dynamic up to max_batch, or static."""
    if static:
        if static != graph.example_inputs[0].shape[0]:
            graph = _with_batch(graph, static)
        return to_pt2e(graph, dynamic_batch=False, requantized_only=True)
    try:
        return to_pt2e(graph, dynamic_batch=True, max_batch=max_batch, requantized_only=True)
    except CompressorError as e:
        raise CompressorError(f"{e}. Set export option batch: N for a static-batch program.") from None


def _with_batch(graph: Graph, batch: int) -> Graph:
    from compressor.graph import Graph

    x = graph.example_inputs[0]
    reps = -(-batch // x.shape[0])
    return Graph(graph.gm, (x.repeat(reps, *([1] * (x.dim() - 1)))[:batch], *graph.example_inputs[1:]),
                 graph.fixed_batch)


def lower_to_edge(program: torch.export.ExportedProgram) -> Any:
    """`to_edge_transform_and_lower` with the XNNPACK partitioner: the EdgeProgramManager, whose
    `.exported_program()` shows the delegate calls and `.to_executorch().buffer` is the .pte."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])


# ---------------------------------------------------------------- delegation summary

_GEMMS = {"XNNConv2d": "conv", "XNNDepthwiseConv2d": "conv", "XNNConvTranspose2d": "conv",
          "XNNFullyConnected": "linear", "XNNBatchMatrixMultiply": "bmm"}


@contextlib.contextmanager
def _capture_xnn_graphs() -> Iterator[list[Any]]:
    """Record the XNNGraph of every delegate as the XNNPACK backend serializes it.

    Why a wrapper on a backend function: the dtypes XNNPACK will compute in (qint8 vs fp32) exist
    only in that graph; the partitioned FX graph still shows Q/DQ around float ops either way.
    If the hook point moves in a later ExecuTorch, the summary falls back to FX-level counts.
    """
    graphs: list[Any] = []
    try:
        import executorch.backends.xnnpack.xnnpack_preprocess as pre
    except ImportError:
        yield graphs
        return
    original = getattr(pre, "serialize_xnnpack_binary", None)
    if original is None:
        yield graphs
        return

    def spy(xnn_graph: Any, *args: Any, **kwargs: Any) -> Any:
        graphs.append(xnn_graph)
        return original(xnn_graph, *args, **kwargs)

    pre.serialize_xnnpack_binary = spy
    try:
        yield graphs
    finally:
        pre.serialize_xnnpack_binary = original


def delegation_summary(gm: torch.fx.GraphModule, xnn_graphs: list[Any]) -> dict[str, Any]:
    """What runs where: delegate calls, ops left to ExecuTorch's portable kernels, and per GEMM
    kind (conv / linear / bmm) how many XNNPACK runs in int8 vs fp32."""
    outside = Counter(_op_name(n.target) for n in gm.graph.nodes
                      if n.op == "call_function" and "getitem" not in str(n.target)
                      and "executorch_call_delegate" not in str(n.target) and "sym_size" not in str(n.target))
    delegates = sum(1 for n in gm.graph.nodes if n.op == "call_function"
                    and "executorch_call_delegate" in str(n.target))
    inside: Counter = Counter()
    for n in gm.graph.nodes:
        if n.op == "get_attr" and str(n.target).startswith("lowered_module"):
            sub = getattr(gm, str(n.target)).original_module.graph_module
            inside.update(_op_name(m.target) for m in sub.graph.nodes if m.op == "call_function")
    gemms: dict[str, dict[str, int]] = {}
    for kind, dtype in _xnn_gemms(xnn_graphs):
        gemms.setdefault(kind, {"int8": 0, "fp32": 0})[dtype] += 1
    return {
        "delegate_calls": delegates,
        "delegated_ops": sum(inside.values()),
        "non_delegated_ops": sum(outside.values()),
        "non_delegated": dict(outside.most_common()),
        "xnnpack_gemms": gemms,
        "int8_ops": sum(g["int8"] for g in gemms.values()),
    }


def _xnn_gemms(xnn_graphs: list[Any]) -> Iterator[tuple[str, str]]:
    """(kind, 'int8' | 'fp32') per GEMM node, from the input activation's XNNPACK datatype."""
    for xg in xnn_graphs:
        dtypes = {}
        for v in xg.xvalues:
            tv = getattr(v.xvalue_union, "tensor_value", v.xvalue_union)
            dtypes[tv.id_out] = tv.datatype.name
        for node in xg.xnodes:
            kind = _GEMMS.get(type(node.xnode_union).__name__)
            if kind is not None:
                dtype = dtypes.get(node.xnode_union.input1_id, "")
                yield kind, "int8" if "int8" in dtype else "fp32"


def _op_name(target: Any) -> str:
    name = getattr(target, "__name__", None) or str(target)
    return str(name).removeprefix("aten.")


# ---------------------------------------------------------------- run

class _PteRunner:
    """A loaded `forward` method; resets the process-wide thread pool to `threads` when needed."""

    def __init__(self, path: Path, threads: int) -> None:
        self.threads = threads
        self._set_threads()
        with quiet():
            from executorch.runtime import Runtime

            program = Runtime.get().load_program(Path(path))
            self.method = program.load_method("forward")
        if self.method is None:
            raise CompressorError(f"{path}: the program has no forward method")
        self.capacity = int(self.method.metadata.input_tensor_meta(0).sizes()[0])

    def _set_threads(self) -> None:
        try:
            from executorch.extension.pybindings import portable_lib as lib
        except ImportError:
            return
        with contextlib.suppress(AttributeError):  # an experimental API: absent means the runtime's default
            if lib._threadpool_get_thread_count() != self.threads:
                lib._unsafe_reset_threadpool(self.threads)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._set_threads()
        out = self.method.execute([torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])
        return np.asarray(out[0].numpy() if isinstance(out[0], torch.Tensor) else out[0], dtype=np.float32)


def _verify(path: Path, graph: Graph, static: int | None) -> float:
    x = graph.example_inputs[0]
    pte = _PteRunner(path, torch.get_num_threads())
    run = in_fixed_batches(pte, static) if static else in_chunks(pte, pte.capacity)
    got = run(x.numpy())
    with torch.no_grad():
        want = graph.gm(*graph.example_inputs)
    want = (want[0] if isinstance(want, (tuple, list)) else want).numpy()
    if got.shape != want.shape:
        raise CompressorError(f"the .pte returned shape {got.shape}, the graph {want.shape}")
    return float(np.abs(got - want).max())
