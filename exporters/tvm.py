"""`tvm` target: the ONNX file compiled by Apache TVM (relax) into a CPU shared library.

Why hand-written schedules: MetaSchedule crashes in the 0.27 wheel (`tvm.ir.save_json` segfaults,
so `tune_tir` dies at start) and the CPU dlight rules cover only GEMV and reductions, which leaves
every matmul as a naive triple loop (~50x slower than ONNX Runtime). `schedule_module` walks the
fused PrimFuncs, finds matmul-like blocks (one reduction iter, >= 2 spatial iters, `C += A * B`),
and gives them a register-blocked schedule: the output rows x vector columns tile accumulates in a
local buffer, the innermost loop is a SIMD vector, the outer tile loop is parallel. Element-wise
and reduction functions are computed row by row under one parallel loop (`_schedule_other`).

The library is compiled for this host's CPU (`host_target`): it is not portable to older CPUs.

Integer ONNX: every op of the integer-only ViT set (QuantizeLinear, Cast, MatMulInteger 2-D/4-D and
u8 x s8, int64 Add/Sub/Mul/Div (truncating)/Mod (fmod=0, floor), Max/Min/Clip, ReduceMax/ReduceSum,
comparisons, Where, Gather, BitShift on uint64, shape ops, per-axis DequantizeLinear) imports
through 0.27's `from_onnx` and is bit-exact vs ONNX Runtime, QuantizeLinear's round-half-to-even
included, so `_rewrite_onnx` fixes the batch axis and otherwise only turns Conv into im2col + MatMul
(`convs_as_matmuls`: the matmul is what the schedules make fast). In relax, narrowing casts are
moved ahead of data movement (`tvm_casts`), and on an AVX-512 VNNI CPU every 8-bit MatMulInteger
becomes a `vpdpbusd` kernel (`tvm_vnni`); elsewhere it lowers to int32 x int32 with the casts
inlined into the loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from compressor.cpu import cpu_flags
from compressor.eval.metrics import Runner
from exporters.base import Artifact, Exporter, ExportOptions, atomic_path, in_fixed_batches
from exporters.tvm_casts import sink_narrowing_casts
from exporters.tvm_vnni import find_vnni_block, has_vnni, schedule_vnni_matmul, vnni_matmuls

if TYPE_CHECKING:
    from compressor.graph import Graph

_log = logging.getLogger(__name__)


def _host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# TVM sizes its thread pool once, when first used (compiling can be that first use), from
# TVM_NUM_THREADS or else half the logical CPUs: 1 on a 2-core VM. Size it to every core before
# tvm can start it; `set_threads` then narrows it per runner.
os.environ.setdefault("TVM_NUM_THREADS", str(_host_cores()))
# Idle workers spin by default; beside another runtime (the report times artifacts interleaved)
# the spinning threads took the cores from it: a ViT-S ran at 11 s per image whose kernels add up
# to 0.2 s. With 0 they sleep as soon as the queue is empty.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")


def host_target() -> dict[str, Any]:
    """LLVM target for this machine's CPU, by name: TVM 0.27 rejects the "-mcpu=native" string and
    its bundled LLVM does not resolve "native" for its conda triple, so it would build generic x86."""
    import tvm.target.codegen as codegen

    cpu = codegen.llvm_get_system_cpu()
    if not codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
        cpu = "x86-64-v3" if "avx2" in cpu_flags() else "x86-64"
    return {"kind": "llvm", "mcpu": cpu, "num-cores": _host_cores()}


def __getattr__(name: str) -> Any:
    if name == "TVM_TARGET":  # lazily: asking LLVM for the host CPU needs tvm imported
        return host_target()
    raise AttributeError(name)


class TvmArtifact(Artifact):
    def runner(self, threads: int) -> Runner:
        return TvmRunner(self.path, int(self.meta["batch"]), threads)


class TvmOptions(ExportOptions):
    batch: int = Field(1, ge=1, description="static batch compiled into the library (a fixed-batch graph keeps "
                                         "its own)")


class TvmExporter(Exporter):
    """ONNX (the `onnx` target's file) compiled by TVM for this CPU, with a static batch.

    The batch is the graph's own fixed batch if it has one, else `batch` (1: the latency case);
    the runner splits and pads other batch sizes.
    """

    target: ClassVar[str] = "tvm"
    suffix: ClassVar[str] = ".so"
    extra: ClassVar[str | None] = "tvm"

    Options: ClassVar[type[ExportOptions]] = TvmOptions

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import tvm  # noqa: F401
        except ImportError:
            return False, "TVM is not installed: pip install 'compressor[tvm]'"
        return True, ""

    def export(self, graph: Graph, path: Path, precision: str) -> TvmArtifact:
        from exporters.onnx import OnnxExporter

        batch = graph.fixed_batch or self.options.batch
        with tempfile.TemporaryDirectory(prefix="tvm-export-") as tmp:
            onnx_path = OnnxExporter().export(graph, Path(tmp) / "model.onnx", precision).path
            compile_onnx(onnx_path, path, batch)
        import tvm

        return TvmArtifact(self.target, path, precision,
                           {"batch": batch, "target": host_target(), "tvm": tvm.__version__})


# ---------------------------------------------------------------- compile and run

def compile_onnx(onnx_path: str | Path, out_path: str | Path, batch: int, schedule: bool = True) -> Path:
    """Compile an ONNX file with its batch axis fixed to `batch` into a CPU shared library.

    Static shapes because a symbolic batch does not import through Q/DQ in 0.27 ("Reshape expects
    input with known shape"). The library is written beside `out_path` and renamed into place.
    """
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = _rewrite_onnx(onnx.load(str(onnx_path)), batch)
    target = tvm.target.Target(host_target())
    mod = from_onnx(model, keep_params_in_input=False)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    if schedule:
        mod = sink_narrowing_casts(mod)
        if has_vnni(target):
            mod = vnni_matmuls(mod)
    with target:
        mod = tvm.transform.Sequential([
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])(mod)
        if schedule:
            mod = schedule_module(mod, target)
        executable = tvm.compile(mod, target)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        executable.export_library(str(tmp))
    return out


def _rewrite_onnx(model: Any, batch: int) -> Any:
    """Fix the batch axis of every input and output, then turn Convs into matmuls `schedule_module` handles."""
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    del model.graph.value_info[:]  # symbolic intermediate shapes; relax infers the static ones
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return convs_as_matmuls(model)


MAX_TAPS = 49  # kernel positions up to which a Conv becomes slices + one matmul (7x7)


def convs_as_matmuls(model: Any) -> Any:
    """Rewrite each 2-D Conv (one group, no dilation) as an im2col MatMul, because the matmul is
    the one block `schedule_module` knows how to make fast: relax's own conv2d loops are the
    untuned default (the MNIST CNN took 47 ms at batch 8 where ONNX Runtime takes 1.2).

    Columns are the kernel's taps taken as strided Slices of the padded input and concatenated on
    channels (tap-major), or, when the stride equals the kernel and there is no padding (a patch
    embedding), one Reshape/Transpose. The weight [K, C, kh, kw] is permuted to [K, kh·kw·C] to
    match; for a quantized Conv that permutes the DequantizeLinear's output, a constant TVM folds.
    """
    import onnx
    from onnx import helper, numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    shapes.update({i.name: list(i.dims) for i in model.graph.initializer})
    nodes = []
    for k, node in enumerate(model.graph.node):
        replaced = _im2col_matmul(node, shapes, f"_im2col{k}", helper, numpy_helper)
        nodes.extend(replaced if replaced is not None else [node])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _im2col_matmul(node: Any, shapes: dict[str, list[int]], tag: str, helper: Any, numpy_helper: Any) -> list | None:
    if node.op_type != "Conv":
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    x_shape, w_shape = shapes.get(node.input[0]), shapes.get(node.input[1])
    if (not x_shape or not w_shape or len(x_shape) != 4 or 0 in x_shape or len(w_shape) != 4
            or attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1]))
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    n, c, h, w = x_shape
    k_out, _, kh, kw = w_shape
    sh, sw = attrs.get("strides", [1, 1])
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0])
    oh, ow = (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1
    patchify = (sh, sw) == (kh, kw) and not any((top, left, bottom, right)) and h % kh == 0 and w % kw == 0
    if not patchify and kh * kw > MAX_TAPS:
        return None

    def const(name: str, values: list[int]) -> Any:
        return helper.make_node("Constant", [], [f"{tag}_{name}"],
                                value=numpy_helper.from_array(np.asarray(values, np.int64), f"{tag}_{name}"))

    out = [const("wshape", [k_out, kh * kw * c]), const("cshape", [n, kh * kw * c, oh * ow]),
           const("oshape", [n, k_out, oh, ow])]
    out.append(helper.make_node("Transpose", [node.input[1]], [f"{tag}_wt"], perm=[0, 2, 3, 1]))
    out.append(helper.make_node("Reshape", [f"{tag}_wt", f"{tag}_wshape"], [f"{tag}_wmat"]))
    if patchify:  # [N, C, OH, kh, OW, kw] -> [N, kh, kw, C, OH, OW]
        out.append(const("pshape", [n, c, oh, kh, ow, kw]))
        out.append(helper.make_node("Reshape", [node.input[0], f"{tag}_pshape"], [f"{tag}_p"]))
        out.append(helper.make_node("Transpose", [f"{tag}_p"], [f"{tag}_cols4"], perm=[0, 3, 5, 1, 2, 4]))
    else:
        src = node.input[0]
        if any((top, left, bottom, right)):
            out.append(const("pads", [0, 0, top, left, 0, 0, bottom, right]))
            out.append(helper.make_node("Pad", [src, f"{tag}_pads"], [f"{tag}_xp"]))
            src = f"{tag}_xp"
        taps = []
        out.append(const("axes", [2, 3]))
        for i in range(kh):
            for j in range(kw):
                name = f"{tag}_t{i}_{j}"
                out += [const(f"s{i}_{j}", [i, j]), const(f"e{i}_{j}", [i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1]),
                        const(f"st{i}_{j}", [sh, sw])]
                out.append(helper.make_node("Slice", [src, f"{tag}_s{i}_{j}", f"{tag}_e{i}_{j}", f"{tag}_axes",
                                                      f"{tag}_st{i}_{j}"], [name]))
                taps.append(name)
        out.append(helper.make_node("Concat", taps, [f"{tag}_cols4"], axis=1))
    out.append(helper.make_node("Reshape", [f"{tag}_cols4", f"{tag}_cshape"], [f"{tag}_cols"]))
    out.append(helper.make_node("MatMul", [f"{tag}_wmat", f"{tag}_cols"], [f"{tag}_y"]))
    result = node.output[0]
    has_bias = len(node.input) > 2 and node.input[2]
    out.append(helper.make_node("Reshape", [f"{tag}_y", f"{tag}_oshape"], [f"{tag}_y4" if has_bias else result]))
    if has_bias:
        out.append(const("bshape", [1, k_out, 1, 1]))
        out.append(helper.make_node("Reshape", [node.input[2], f"{tag}_bshape"], [f"{tag}_b"]))
        out.append(helper.make_node("Add", [f"{tag}_y4", f"{tag}_b"], [result]))
    return out


class TvmRunner:
    """A compiled library run by the relax VM; batches of any size through a fixed-batch build."""

    def __init__(self, path: str | Path, batch: int, threads: int | None = None) -> None:
        import tvm
        from tvm import relax

        if threads:
            set_threads(threads)
        self.batch = batch
        self._device = tvm.cpu()
        self._vm = relax.VirtualMachine(_load_fresh(Path(path)), self._device)
        self._tensor = tvm.runtime.tensor
        self._run = in_fixed_batches(self._run_batch, batch)

    def _run_batch(self, x: np.ndarray) -> np.ndarray:
        out = self._vm["main"](self._tensor(x, self._device))
        return (out[0] if not hasattr(out, "numpy") else out).numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._run(x)


def _load_fresh(path: Path) -> Any:
    """Load a private copy that lives as long as the process.

    dlopen returns an already-loaded library for a file with the same device and inode, not only
    the same name: loading a re-exported `model.so` returned the library loaded first (a W8 model
    run as the W4 one), and so did a deleted copy whose inode the next copy reused (the earlier fix,
    a copy deleted right after loading, failed that way when one process compiled several models).
    """
    import tvm

    copy = Path(_LOADED.name) / f"{uuid.uuid4().hex}_{path.name}"
    shutil.copyfile(path, copy)
    return tvm.runtime.load_module(str(copy))


_LOADED = tempfile.TemporaryDirectory(prefix="tvm-loaded-")  # removed at exit


def set_threads(threads: int) -> None:
    """Use `threads` worker threads in TVM's runtime pool.

    `runtime.config_threadpool` can only shrink the pool sized at import (see TVM_NUM_THREADS
    above); mode 1 ("big cores") is every core on a homogeneous CPU.
    """
    import tvm  # noqa: F401  (registers the runtime functions)
    import tvm_ffi

    tvm_ffi.get_global_func("runtime.config_threadpool")(1, threads)  # 1: kBig, all cores here


# ---------------------------------------------------------------- schedules

def schedule_module(mod: Any, target: Any) -> Any:
    """Schedule every PrimFunc of a legalized, fused IRModule for the CPU `target`.

    A function whose schedule raises keeps its default (correct, slow) loops: a schedule is an
    optimization, never a reason for an export to fail.
    """
    from tvm import s_tir, tirx

    lanes = max(4, _vector_bits(target) // 32)
    updated = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        sch = s_tir.Schedule(func)
        try:
            _schedule_func(sch, lanes)
        except Exception as e:  # TVM raises several unrelated error types
            _log.debug("no schedule for %s: %s", gvar.name_hint, e)
            continue
        updated[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    for gvar, func in updated.items():
        mod[gvar] = func
    return mod


def _vector_bits(target: Any) -> int:
    import tvm.target.codegen as codegen

    with contextlib.suppress(Exception):
        return int(codegen.llvm_get_vector_width(target))
    return 256


def _iter_kinds(sch: Any, block: Any) -> str:
    from tvm import tirx

    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(iv.iter_type, "O") for iv in sch.get(block).iter_vars)


def _is_matmul(sch: Any, block: Any) -> bool:
    """A `C[..., i, j] += A[..., i, k] * B[..., k, j]`-like block: S...SR, two inputs, a product."""
    from tvm import tirx

    stmt = sch.get(block)
    kinds = _iter_kinds(sch, block)
    if kinds.count("R") != 1 or not kinds.endswith("R") or kinds.count("S") < 2 or stmt.init is None:
        return False
    store = stmt.body
    if not isinstance(store, tirx.BufferStore) or not isinstance(store.value, tirx.Add):
        return False
    reads = [r for r in stmt.reads if not r.source.same_as(store.buffer.data)]
    return len(reads) == 2 and isinstance(_strip_casts(store.value.b), tirx.Mul)


def _strip_casts(expr: Any) -> Any:
    from tvm import tirx

    while isinstance(expr, tirx.Cast):
        expr = expr.value
    return expr


def _schedule_func(sch: Any, lanes: int) -> None:
    root = sch.get_sblock("root") if _has_root(sch) else None
    blocks = sch.get_child_blocks(root) if root is not None else []
    vnni = find_vnni_block(sch, blocks)
    if vnni is not None:
        _inline_all_but(sch, vnni)
        _fold_epilogue(sch, schedule_vnni_matmul(sch, vnni), lanes)
        return
    matmuls = [b for b in blocks if _is_matmul(sch, b)]
    if len(matmuls) == 1:
        _schedule_matmul(sch, matmuls[0], lanes)
    elif not matmuls:
        _schedule_other(sch, blocks, lanes)
    else:
        raise _NotApplicable("several matmuls in one function")


def _has_root(sch: Any) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:
        return False
    return True


class _NotApplicable(Exception):
    """The function is outside what the hand-written schedules handle; keep its default loops."""


def _extent(sch: Any, loop: Any) -> int | None:
    from tvm import tirx

    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, tirx.IntImm) else None


def _schedule_matmul(sch: Any, block: Any, lanes: int) -> None:
    """Register-blocked matmul: rows x (vectors x lanes) accumulators, k innermost-but-two.

    Loop order per output: [batch.., j0, i0] (parallel, fused), k, i1 (unrolled), j1 (unrolled),
    j2 (vector). j0 outside i0 keeps one K x tile panel of B hot in cache across row tiles.
    Every other non-output block is inlined first: producers (int8 -> int32 casts, transposes) so
    the loop reads the narrow type, and epilogue intermediates so a single elementwise block is left
    to fold into the tile's write-back (reverse-inlining a block with two intermediate inputs, as in
    GELU's `x * erf(x)`, drops an allocation in 0.27).
    """
    _inline_all_but(sch, block)
    n_spatial = len(sch.get(block).iter_vars) - 1
    loops = sch.get_loops(block)
    m, n = _extent(sch, loops[n_spatial - 2]), _extent(sch, loops[n_spatial - 1])
    if m is None or n is None:
        raise _NotApplicable("dynamic matmul shape")
    nv = 2 if n >= 2 * lanes else 1
    mr = 4 if nv == 2 else 6
    if n % lanes:
        # Pad rows and columns to whole tiles: a column tail would scalarize the vector loop, and
        # padding only the columns makes reverse_compute_inline drop the row predicate (0.27 bug).
        pad = [1] * (n_spatial + 1)
        pad[n_spatial - 2], pad[n_spatial - 1] = mr, nv * lanes
        sch.pad_einsum(block, pad)
        for producer in sch.get_producers(block):  # the zero-padded copies of the inputs
            with contextlib.suppress(Exception):
                _parallel_vector(sch, producer, lanes)
    acc = sch.cache_write(block, 0, "local")
    *batch, i, j, k = sch.get_loops(block)
    i0, i1 = sch.split(i, [None, mr])
    j0, j1, j2 = sch.split(j, [None, nv, lanes])
    sch.reorder(*batch, j0, i0, k, i1, j1, j2)
    outer = sch.fuse(*batch, j0, i0)
    sch.parallel(outer)
    sch.reverse_compute_at(acc, outer)
    sch.unroll(i1)
    sch.unroll(j1)
    sch.vectorize(j2)
    sch.decompose_reduction(block, k)  # last: the loop primitives above need the block's init
    _fold_epilogue(sch, acc, lanes)


def _inline_all_but(sch: Any, block: Any) -> None:
    for other in reversed(sch.get_child_blocks(sch.get_sblock("root"))):
        if not sch.get(other).same_as(sch.get(block)):
            with contextlib.suppress(Exception):
                sch.compute_inline(other)


def _fold_epilogue(sch: Any, acc: Any, lanes: int) -> None:
    """The write-back tile, with the elementwise epilogue folded in, is contiguous in its last axis."""
    consumers = sch.get_consumers(acc)
    if len(consumers) == 1:
        with contextlib.suppress(Exception):
            sch.reverse_compute_inline(consumers[0])
    _vectorize_inner(sch, acc, lanes)


def _vectorize_inner(sch: Any, block: Any, lanes: int) -> None:
    loops = sch.get_loops(block)
    ext = _extent(sch, loops[-1])
    if ext is None or ext < lanes:
        return
    if ext % lanes == 0:
        _, inner = sch.split(loops[-1], [None, lanes])
        sch.vectorize(inner)


def _schedule_other(sch: Any, blocks: list[Any], lanes: int) -> None:
    """Injective and reduction blocks, computed row by row: one parallel loop over the rows of the
    last block, every earlier block computed inside it for that row, the innermost loops vectors.

    Why rows: the integer kernels are chains of 10-70 element-wise blocks; each block with its own
    parallel loop paid a thread-pool launch and wrote a whole tensor (I-LayerNorm's per-row Newton
    steps took 2.8 ms for 197 rows in 70 launches). Inside one row the intermediates stay in L1.
    A function whose blocks do not share the last block's rows (a transpose between them) keeps
    one parallel loop per block, its pure data-movement blocks inlined into one pass: computed per
    row, the whole transposed input would be recomputed for every row (a transposing copy took 4 ms
    instead of 0.1).
    """
    if len(blocks) > 1 and _share_rows(sch, blocks):
        with contextlib.suppress(Exception):
            rows = _row_loop(sch, blocks[-1])
            for block in reversed(blocks[:-1]):
                sch.compute_at(block, rows)
            for block in blocks:  # each block's own loop over the row (a per-row value has none)
                inner = sch.get_loops(block)[-1]
                if "R" not in _iter_kinds(sch, block) and not sch.get(inner).same_as(sch.get(rows)):
                    with contextlib.suppress(Exception):
                        _vectorize_inner(sch, block, lanes)
            return
    for block in reversed(blocks[:-1]):
        if _moves_data(sch, block):
            with contextlib.suppress(Exception):
                sch.compute_inline(block)
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        _parallel_vector(sch, block, lanes)


def _moves_data(sch: Any, block: Any) -> bool:
    """A block storing a (cast) load, or a pad's if_then_else of one: inlining recomputes nothing."""
    from tvm import tirx

    store = sch.get(block).body
    if not isinstance(store, tirx.BufferStore):
        return False
    value = _strip_casts(store.value)
    if str(getattr(getattr(value, "op", None), "name", "")).endswith("if_then_else"):
        value = _strip_casts(value.args[1])
    return type(value).__name__ in ("TensorLoad", "BufferLoad")  # 0.27 names a buffer load TensorLoad


def _share_rows(sch: Any, blocks: list[Any]) -> bool:
    """Every block iterates over as many rows as the last block (the product of all its loop
    extents but the innermost): true through a reshape of the leading axes ([1, 197, 384] ->
    [197, 384]), false through a transpose of the rows."""
    def rows(block: Any) -> int | None:
        extents = [_extent(sch, loop) for loop in sch.get_loops(block)]
        return None if None in extents else int(np.prod(extents[:-1], dtype=np.int64))

    last = rows(blocks[-1])
    return last is not None and all(rows(b) == last for b in blocks)


def _row_loop(sch: Any, block: Any) -> Any:
    """The block's spatial loops but the last, fused and made parallel (raises if there are none)."""
    kinds = _iter_kinds(sch, block)
    loops = sch.get_loops(block)
    n_spatial = len(kinds) - len(kinds.lstrip("S"))
    outer = loops[: max(1, n_spatial - 1) if "R" not in kinds else n_spatial]
    if len(loops) != len(kinds) or not outer:
        raise _NotApplicable("not a plain loop nest")
    rows = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    sch.parallel(rows)
    return rows


def _parallel_vector(sch: Any, block: Any, lanes: int) -> None:
    kinds = _iter_kinds(sch, block)
    loops = sch.get_loops(block)
    if len(loops) != len(kinds) or not kinds.startswith("S"):
        return  # not a plain loop nest (already scheduled, or opaque)
    if "R" not in kinds and len(loops) > 1:
        with contextlib.suppress(Exception):
            _vectorize_inner(sch, block, lanes)
        loops = sch.get_loops(block)
        loops = loops[: len(kinds) - 1]
    else:
        loops = loops[: len(kinds) - len(kinds.lstrip("S"))]
    if loops:
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])
