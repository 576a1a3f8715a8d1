"""`tensorrt` target: a folder with a TensorRT-ready explicit-quantization ONNX and the means to build it.

Why a folder and not an engine: an engine is tied to one GPU, TensorRT version and shape profile,
and TensorRT cannot be installed on most machines we export on. So the export always writes
`model.onnx` (rewritten for TensorRT's Q/DQ rules), `build_engine.py` (self-contained, TensorRT
Python API), `trtexec.sh` (the same build on the command line), `README.txt` and `meta.json`;
the engine is built where `import tensorrt` works, on first use of the runner, and cached in the
folder.

Why rewrite our ONNX at all: `quant.int8_ptq` lays Q/DQ out for ONNX Runtime's CPU kernels, and
three of its choices are not what TensorRT takes (TensorRT developer guide, "Explicit
Quantization": "Q/DQ Layer-Placement Recommendations", "Quantized Weights"; onnx-tensorrt
operator matrix: QuantizeLinear/DequantizeLinear "zero_point must be 0", INT8 only):

* asymmetric uint8 activations -> symmetric int8, zero point 0, scale widened so the grid covers
  the same [lo, hi] range: s' = s * max((z + 128) / 128, (127 - z) / 127) with z the zero point
  in int8 terms (uint8 zp - 128). Exact only when the uint8 zero point is 128; otherwise it is a
  coarser grid (about 1 bit lost for post-ReLU/Softmax tensors, whose uint8 zp is 0). TensorRT
  has no asymmetric int8, so no exact rewrite exists; quantize with `activation_dtype: int8` and
  the pass picks symmetric ranges itself (then nothing changes here).
* int32 biases behind DequantizeLinear (ORT's QGemm fusion) -> float biases: TensorRT quantizes
  only INT8 (and FP8/INT4/FP4) Q/DQ and fuses a float bias into the int8 Conv/GEMM itself. The
  float value is DQ's own product, so this step is exact.
* a Conv output quantized just before a residual Add -> that one Q/DQ removed: the guide's
  "sub-optimal fusion" example (Conv and Add fused separately because each is wrapped in Q/DQ);
  without it TensorRT fuses Conv+Add(+ReLU) with the int8 residual input ("quantize the residual
  input in skip-connections", which stays).

What stays as the guide recommends: Q/DQ on all inputs of weighted ops (Conv, MatMul/GEMM, both
operands of the attention matmuls), per-tensor activations, per-output-channel weights, outputs of
weighted ops not quantized. Weight axis: TensorRT wants the output-channel axis K. Conv weights
are [K, C, R, S] -> axis 0. Our Linear weights are stored [in, out] feeding MatMul as B, i.e. the
(C, K) layout the guide describes for TensorFlow exports, so axis 1 is already K and no transpose
is needed; a DQ(W[K, C], axis 0) -> Transpose -> MatMul chain (PyTorch-style export) is folded
into that layout. Q/DQ pairs whose output reaches no quantizable op are removed (they would only
add a float round trip), and per-tensor Q/DQ lose the meaningless `axis` attribute.

2:4 sparsity: TensorRT's sparse tactics need, for each output channel, at most 2 nonzeros in
every group of 4 along the reduction (input-channel) axis: Conv axis 1 at each kernel position,
MatMul B [in, out] axis 0. The int8 weights are copied untouched, so the pattern survives, and
`sparse_weights: auto` turns the builder flag on when any weight has it.

TensorRT versions: 11.x removed the precision builder flags (networks are strongly typed, int8
comes from the Q/DQ alone; fp16 needs an fp16 ONNX, e.g. from ModelOpt AutoCast); 10.x takes
`--int8/--fp16`. `build_engine` and `trtexec.sh` handle both. None of the engine code can run
here (no TensorRT wheel installs on our machines); it is typed and follows the documented API.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from pydantic import Field, model_validator

from compressor.errors import CompressorError
from compressor.eval.metrics import Runner
from exporters.base import Artifact, Exporter, ExportOptions, atomic_dir, in_fixed_batches
from exporters.onnx_index import OnnxIndex

if TYPE_CHECKING:
    from compressor.graph import Graph

_log = logging.getLogger(__name__)

NOT_INSTALLED = "engine not built: TensorRT not installed"
WEIGHTED = ("Conv", "MatMul", "Gemm")
# ops TensorRT moves Q/DQ across (they commute with scaling), so a DQ before them still feeds
# whatever quantizable op follows
COMMUTING = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Concat",
             "MaxPool", "Identity", "Relu", "Split")
SHAPE = tuple[int, ...]


# ---------------------------------------------------------------- the ONNX rewrite

def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _drop_attr(node: onnx.NodeProto, name: str) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def _add_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _remove_nodes(model: onnx.ModelProto, dead: list[onnx.NodeProto]) -> None:
    ids = {id(n) for n in dead}
    keep = [n for n in model.graph.node if id(n) not in ids]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _rewire(model: onnx.ModelProto, old: str, new: str) -> None:
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new


def _weight_axes(ix: OnnxIndex, dq: onnx.NodeProto, user: onnx.NodeProto, rank: int) -> tuple[int, int] | None:
    """(output-channel axis, reduction axis) TensorRT expects for a weight DQ feeding `user`."""
    if user.op_type == "Conv" and user.input[1] == dq.output[0]:
        return 0, 1
    if user.op_type == "MatMul" and user.input[1] == dq.output[0] and rank == 2:
        return 1, 0
    if user.op_type == "Gemm" and user.input[1] == dq.output[0]:
        return (0, 1) if _attr(user, "transB", 0) else (1, 0)
    return None


def is_n_of_m(w: np.ndarray, axis: int, n: int = 2, m: int = 4) -> bool:
    """At most n nonzeros in every group of m along `axis` (and the axis splits into whole groups)."""
    if w.shape[axis] % m or w.size == 0:
        return False
    groups = np.moveaxis(w, axis, -1).reshape(-1, m)
    return bool(((groups != 0).sum(1) <= n).all())


def _fold_weight_transposes(model: onnx.ModelProto) -> int:
    """DQ(W[K, C], axis 0) -> Transpose -> MatMul becomes DQ(W[C, K], axis 1) -> MatMul."""
    ix, folded, dead = OnnxIndex(model), 0, []
    for t in list(model.graph.node):
        dq = ix.producer.get(t.input[0]) if t.op_type == "Transpose" else None
        if (dq is None or dq.op_type != "DequantizeLinear" or not ix.is_int_init(dq.input[0], TensorProto.INT8)
                or len(ix.consumers.get(dq.output[0], [])) != 1 or _attr(t, "perm", None) != [1, 0]):
            continue
        w = ix.array(dq.input[0])
        if w.ndim != 2 or _attr(dq, "axis", 1) != 0:
            continue
        name = _add_init(model, f"{dq.input[0]}_t", np.ascontiguousarray(w.T))
        dq.input[0] = name
        for a in dq.attribute:
            if a.name == "axis":
                a.i = 1
        _rewire(model, t.output[0], dq.output[0])
        dead.append(t)
        folded += 1
    _remove_nodes(model, dead)
    return folded


def _biases_to_float(model: onnx.ModelProto) -> int:
    """int32 bias DQ -> float initializer with DQ's own value ((q - zp) * scale in float32)."""
    ix, dead = OnnxIndex(model), []
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or not ix.is_int_init(dq.input[0], TensorProto.INT32):
            continue
        q = ix.array(dq.input[0]).astype(np.int64)
        scale = ix.array(dq.input[1]).astype(np.float32)
        zp = ix.array(dq.input[2]).astype(np.int64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        shape = [1] * q.ndim
        if scale.ndim and q.ndim:
            shape[_attr(dq, "axis", 1)] = -1
        value = ((q - zp.reshape(shape)).astype(np.float32) * scale.reshape(shape)).astype(np.float32)
        name = _add_init(model, f"{dq.output[0]}_float_bias", value)
        _rewire(model, dq.output[0], name)
        dead.append(dq)
    _remove_nodes(model, dead)
    return len(dead)


def _symmetric_activations(model: onnx.ModelProto) -> dict[str, Any]:
    """Activation Q/DQ pairs -> int8, zero point 0, scale covering the original range."""
    ix = OnnxIndex(model)
    changed, exact, widen = 0, 0, []
    for q in list(model.graph.node):
        if q.op_type != "QuantizeLinear" or q.input[0] in ix.init:
            continue
        scale = float(ix.array(q.input[1]).reshape(-1)[0])
        zp_init = ix.init.get(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        zp_arr = numpy_helper.to_array(zp_init) if zp_init is not None else np.zeros((), np.uint8)
        if ix.array(q.input[1]).size != 1:
            raise CompressorError(f"TensorRT export: activation quantizer {q.name} is per-channel; TensorRT "
                                  "takes per-tensor activation scales.")
        z = int(zp_arr.reshape(-1)[0]) - (128 if zp_arr.dtype == np.uint8 else 0)
        new_scale = scale * max((z + 128) / 128, (127 - z) / 127)
        if zp_arr.dtype == np.int8 and z == 0:
            new_scale = scale  # already symmetric int8: keep the pass's grid bit for bit
        if new_scale == scale:
            exact += zp_arr.dtype == np.uint8
        else:
            changed += 1
            widen.append(new_scale / scale)
        s_name = _add_init(model, f"{q.output[0]}_trt_scale", np.array(new_scale, np.float32))
        z_name = _add_init(model, f"{q.output[0]}_trt_zero_point", np.array(0, np.int8))
        users = ix.consumers.get(q.output[0], [])
        if any(u.op_type != "DequantizeLinear" for u in users):
            raise CompressorError(f"TensorRT export: {q.name} feeds {[u.op_type for u in users]}; TensorRT "
                                  "expects every QuantizeLinear to be followed by DequantizeLinear.")
        for node in (q, *users):
            node.input[1:] = [s_name, z_name]
            _drop_attr(node, "axis")  # per-tensor: the attribute means nothing and old parsers reject it
    return {"activation_qdq_rescaled": changed, "activation_uint8_exact": exact,
            "activation_scale_widening_max": round(max(widen), 4) if widen else 1.0}


def _unfuse_conv_output_before_residual(model: onnx.ModelProto) -> int:
    """Drop the Q/DQ between a Conv and the residual Add it feeds (one input per Add)."""
    ix, dead, removed = OnnxIndex(model), [], 0
    for add in model.graph.node:
        if add.op_type != "Add" or len(add.input) != 2:
            continue
        chains = []
        for k, name in enumerate(add.input):
            dq = ix.producer.get(name)
            q = ix.producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            src = ix.producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            chains.append((k, dq, q, src))
        if not all(c[2] is not None for c in chains):
            continue  # the residual input is not quantized: nothing to fuse in int8
        for k, dq, q, src in chains:
            if (src is not None and src.op_type == "Conv" and len(ix.consumers[src.output[0]]) == 1
                    and len(ix.consumers[q.output[0]]) == 1 and len(ix.consumers[dq.output[0]]) == 1):
                add.input[k] = src.output[0]
                dead += [q, dq]
                removed += 1
                break
    _remove_nodes(model, dead)
    return removed


def _reaches_quantizable(ix: OnnxIndex, tensor: str, depth: int = 0) -> bool:
    for user in ix.consumers.get(tensor, []):
        if user.op_type in WEIGHTED:
            return True
        if user.op_type == "Add":
            other = [i for i in user.input if i != tensor]
            src = ix.producer.get(other[0]) if other else None
            # residual Add fused into the weighted op before it, or an int8 Add of two DQ inputs
            if src is not None and src.op_type in (*WEIGHTED, "DequantizeLinear"):
                return True
        if user.op_type in COMMUTING and depth < 16 and any(_reaches_quantizable(ix, o, depth + 1)
                                                            for o in user.output):
            return True
    return False


def _drop_useless_qdq(model: onnx.ModelProto) -> int:
    """Remove Q/DQ pairs (and DQ/Q left without users) that feed no quantizable op."""
    removed = 0
    while True:
        ix, dead = OnnxIndex(model), []
        for q in model.graph.node:
            if q.op_type != "QuantizeLinear":
                continue
            users = ix.consumers.get(q.output[0], [])
            if not users and q.output[0] not in ix.outputs:
                dead.append(q)
            elif users and all(u.op_type == "DequantizeLinear" for u in users) and not any(
                    _reaches_quantizable(ix, u.output[0]) or u.output[0] in ix.outputs for u in users):
                for u in users:
                    _rewire(model, u.output[0], q.input[0])
                dead += [q, *users]
        for dq in model.graph.node:
            if (dq.op_type == "DequantizeLinear" and not ix.consumers.get(dq.output[0])
                    and dq.output[0] not in ix.outputs and dq not in dead):
                dead.append(dq)
        if not dead:
            return removed
        removed += len(dead)
        _remove_nodes(model, dead)


def _check_weights(model: onnx.ModelProto) -> dict[str, Any]:
    """Weight DQs: zero point 0, one scale per output channel on the axis TensorRT expects, 2:4 count."""
    ix = OnnxIndex(model)
    per_channel, sparse, reduced, layers = 0, 0, True, []
    for dq in model.graph.node:
        if dq.op_type != "DequantizeLinear" or not ix.is_int_init(dq.input[0], TensorProto.INT8):
            continue
        w = ix.array(dq.input[0])
        scale = ix.array(dq.input[1])
        zp = ix.array(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros(1, np.int8)
        if np.any(zp != 0):
            raise CompressorError(f"TensorRT export: weight {dq.input[0]} has a nonzero zero point; TensorRT "
                                  "takes symmetric weights only.")
        users = ix.consumers.get(dq.output[0], [])
        axes = [_weight_axes(ix, dq, u, w.ndim) for u in users]
        if not users or any(a is None for a in axes):
            continue  # a weight DQ not feeding a weighted op: left as is, counted nowhere
        out_axis, red_axis = axes[0]
        if scale.size > 1:
            if _attr(dq, "axis", 1) % w.ndim != out_axis or scale.size != w.shape[out_axis]:
                raise CompressorError(
                    f"TensorRT export: weight {dq.input[0]} {list(w.shape)} is quantized per channel on axis "
                    f"{_attr(dq, 'axis', 1)}; TensorRT needs the output-channel axis {out_axis}.")
            per_channel += 1
        reduced &= bool(np.abs(w.astype(np.int16)).max(initial=0) <= 64)
        is_sparse = is_n_of_m(w, red_axis)
        sparse += is_sparse
        layers.append({"weight": dq.input[0], "op": users[0].op_type, "shape": list(w.shape),
                       "channel_axis": out_axis, "scales": int(scale.size), "sparse_2of4": is_sparse})
    return {"per_channel_weights": per_channel, "sparse_2of4_weights": sparse,
            "weights_7bit": bool(layers) and reduced, "weights": layers}


def _placement(model: onnx.ModelProto) -> dict[str, Any]:
    """How many weighted ops have DQ on all their data inputs, on some, or on none."""
    ix = OnnxIndex(model)
    counts: dict[str, int] = {}
    partial: list[str] = []
    for n in model.graph.node:
        if n.op_type not in WEIGHTED:
            continue
        data = n.input[:2]
        dq = [ix.producer.get(i) is not None and ix.producer[i].op_type == "DequantizeLinear" for i in data]
        if all(dq):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
        elif any(dq):
            partial.append(n.name)
    ops = [n.op_type for n in model.graph.node]
    return {"quantized_inputs": {k: 2 * v for k, v in sorted(counts.items())},
            "quantized_ops": dict(sorted(counts.items())), "partially_quantized_ops": partial,
            "quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear")}


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def to_tensorrt_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Rewrite an ONNX Q/DQ model for TensorRT explicit quantization (see the module docstring).

    Returns the new model and the placement summary that goes into `artifact.meta`.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.value_info[:]  # the exporter's inferred types (uint8 Q outputs) go stale; re-inferred on load
    conversions = {"weight_transposes_folded": _fold_weight_transposes(model),
                   "int32_biases_to_float": _biases_to_float(model)}
    conversions.update(_symmetric_activations(model))
    conversions["conv_output_qdq_removed_for_residual_fusion"] = _unfuse_conv_output_before_residual(model)
    conversions["unfused_qdq_nodes_removed"] = _drop_useless_qdq(model)
    _drop_unused_initializers(model)
    weights = _check_weights(model)
    summary = {**_placement(model), "per_channel_weights": weights["per_channel_weights"],
               "sparse_2of4_weights": weights["sparse_2of4_weights"], "conversions": conversions,
               "weights": weights["weights"]}
    notes = []
    if conversions["activation_qdq_rescaled"]:
        notes.append(f"{conversions['activation_qdq_rescaled']} asymmetric uint8 activation quantizers were "
                     "re-expressed as symmetric int8 over the same range (TensorRT has no zero points): the "
                     "grid is up to {:.2f}x coarser, so numerics differ from the onnx target; recipe option "
                     "`activation_dtype: int8` calibrates symmetric ranges and avoids this"
                     .format(conversions["activation_scale_widening_max"]))
    if weights["weights_7bit"]:
        notes.append("weights use 7 bits (`reduce_range`, an x86 ONNX Runtime workaround); TensorRT has no "
                     "such limit: set `reduce_range: false` for full 8-bit weights")
    if conversions["conv_output_qdq_removed_for_residual_fusion"]:
        notes.append("Conv outputs feeding a residual Add are no longer re-quantized (lets TensorRT fuse "
                     "Conv+Add); this removes a rounding step, so numerics differ slightly")
    if conversions["unfused_qdq_nodes_removed"]:
        notes.append(f"{conversions['unfused_qdq_nodes_removed']} Q/DQ nodes that fed no Conv/MatMul/Gemm (e.g. a "
                     "quantized Conv output read only by float ops) were removed: one rounding step fewer")
    summary["numerics_changed"] = bool(conversions["activation_qdq_rescaled"]
                                       or conversions["conv_output_qdq_removed_for_residual_fusion"]
                                       or conversions["unfused_qdq_nodes_removed"])
    summary["notes"] = notes
    return model, summary


def _fix_batch(model: onnx.ModelProto, batch: int) -> None:
    """Pin the symbolic batch axis of inputs and outputs (static-shape engine, no profile)."""
    for v in (*model.graph.input, *model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_value = batch


# ---------------------------------------------------------------- building and running (needs TensorRT)

def build_engine(onnx_path: str | Path, engine_path: str | Path, int8: bool = True, fp16: bool = False,
                 sparse: bool = False, workspace_mb: int = 1024, input_name: str | None = None,
                 profile: tuple[list[int], list[int], list[int]] | None = None) -> Path:
    """Build and serialize a TensorRT engine from an explicit-quantization ONNX file.

    TensorRT 11 networks are strongly typed: int8 comes from the Q/DQ nodes and the precision
    flags no longer exist, so `int8` is implied and `fp16` needs an fp16 ONNX. TensorRT 10 and
    older take the INT8/FP16 builder flags. `profile` is (min, opt, max) input shapes for a
    dynamic batch axis. The engine is written beside `engine_path` and renamed into place.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0
    if major < 10:  # explicit batch is the only mode from 10 on; 8.x/9.x must ask for it
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if major < 11:
        if int8:
            config.set_flag(trt.BuilderFlag.INT8)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
    elif fp16:
        raise RuntimeError("TensorRT >= 11 has no FP16 builder flag: convert the ONNX to mixed precision first "
                           "(modelopt.onnx.autocast.convert_to_mixed_precision, keep_io_types=True) or build "
                           "without fp16")
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if profile is not None:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(input_name or network.get_input(0).name, *profile)
        config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path = Path(engine_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{engine_path.name}.", dir=engine_path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(bytes(serialized))
    os.replace(tmp, engine_path)
    return engine_path


class TrtRunner:
    """Runs a serialized engine on float32 NCHW batches; device buffers are CUDA torch tensors.

    torch holds the buffers because it is already a dependency; it must be a CUDA build on the
    machine that runs the engine.
    """

    def __init__(self, engine_path: Path) -> None:
        import tensorrt as trt
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("running a TensorRT engine needs a CUDA build of torch for the device buffers")
        self.torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"could not deserialize {engine_path} (built by another TensorRT or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) != mode)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        self.context.set_input_shape(self.input, tuple(inp.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input, inp.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return out.cpu().numpy()


def tensorrt_version() -> str | None:
    """The importable TensorRT's version, or None (the wheel is absent or its CUDA libs are)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):
        return None
    return str(trt.__version__)


class TensorRTArtifact(Artifact):
    """The folder; `runner` builds (once, cached in the folder) and runs the engine."""

    @property
    def onnx_path(self) -> Path:
        return self.path / "model.onnx"

    def not_measured(self) -> str | None:
        return NOT_INSTALLED if tensorrt_version() is None else None

    def engine_path(self) -> Path:
        """Cache key: TensorRT version, GPU and build settings (an engine is valid for exactly these)."""
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "nogpu"
        key = json.dumps([tensorrt_version(), gpu, self.meta["build"]], sort_keys=True)
        return self.path / f"engine-{hashlib.sha256(key.encode()).hexdigest()[:12]}.plan"

    def runner(self, threads: int) -> Runner:
        """`threads` does not apply: the engine runs on the GPU."""
        if (reason := self.not_measured()) is not None:
            raise CompressorError(reason)
        engine = self.engine_path()
        if not engine.exists():
            build = self.meta["build"]
            profile = build["profile"]
            build_engine(self.onnx_path, engine, int8=build["int8"], fp16=build["fp16"], sparse=build["sparse"],
                         workspace_mb=build["workspace_mb"], input_name=build["input"],
                         profile=tuple(profile) if profile else None)
        run = TrtRunner(engine)
        build = self.meta["build"]
        if build["static_batch"]:
            return in_fixed_batches(run, build["static_batch"])
        most = build["profile"][2][0]  # the profile's max batch: larger inputs go through in slices

        def run_sliced(x: np.ndarray) -> np.ndarray:
            return np.concatenate([run(x[i:i + most]) for i in range(0, len(x), most)])

        return run_sliced


# ---------------------------------------------------------------- export

class TensorRTOptions(ExportOptions):
    fp16: bool = Field(False, description="let non-quantized layers run in fp16 (TensorRT 10 flag; on 11 the "
                                          "ONNX must be converted to fp16 first)")
    sparse_weights: bool | Literal["auto"] = Field(
        "auto", description="TensorRT 2:4 sparse tactics; auto = on if any weight has the 2:4 pattern")
    workspace_mb: int = Field(1024, ge=16, description="builder workspace memory pool")
    static_batch: int | None = Field(None, ge=1, description="pin the batch axis (no profile); a graph "
                                                             "captured with a fixed batch keeps its own")
    min_batch: int = Field(1, ge=1, description="dynamic-batch optimization profile: smallest batch")
    opt_batch: int = Field(32, ge=1, description="dynamic-batch profile: batch the tactics are timed at")
    max_batch: int = Field(256, ge=1, description="dynamic-batch profile: largest batch")

    @model_validator(mode="after")
    def _ordered(self) -> TensorRTOptions:
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {self.min_batch}, {self.opt_batch}, "
                             f"{self.max_batch}")
        return self


class TensorRTExporter(Exporter):
    """Always exports (only `onnx` needed); building and running the engine needs the `tensorrt` extra."""

    target: ClassVar[str] = "tensorrt"
    suffix: ClassVar[str] = ".tensorrt"
    extra: ClassVar[str | None] = "tensorrt"
    Options: ClassVar[type[ExportOptions]] = TensorRTOptions

    def export(self, graph: Graph, path: Path, precision: str) -> TensorRTArtifact:
        from exporters.onnx import OnnxOptions, to_onnx

        opts: TensorRTOptions = self.options  # type: ignore[assignment]
        model, summary = to_tensorrt_qdq(to_onnx(graph, precision, OnnxOptions())[0])
        static = graph.fixed_batch or opts.static_batch
        if static:
            _fix_batch(model, static)
        sample = tuple(graph.example_inputs[0].shape[1:])
        quantized = summary["quantize_linear"] > 0 or summary["dequantize_linear"] > 0
        sparse = summary["sparse_2of4_weights"] > 0 if opts.sparse_weights == "auto" else bool(opts.sparse_weights)
        build = {"int8": quantized, "fp16": opts.fp16, "sparse": sparse, "workspace_mb": opts.workspace_mb,
                 "input": model.graph.input[0].name, "static_batch": static,
                 "profile": None if static else [[b, *sample] for b in (opts.min_batch, opts.opt_batch,
                                                                         opts.max_batch)]}
        meta = {**summary, "build": build, "sparse_weights_option": opts.sparse_weights,
                "engine": NOT_INSTALLED if tensorrt_version() is None else "built on first run"}
        with atomic_dir(path) as tmp_dir:
            tmp_dir.mkdir()
            onnx.save(model, str(tmp_dir / "model.onnx"))
            onnx.checker.check_model(str(tmp_dir / "model.onnx"), full_check=True)
            _write_build_files(tmp_dir, build)
            (tmp_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return TensorRTArtifact(self.target, path, precision, meta)


def _trtexec_command(build: dict[str, Any]) -> str:
    args = ["--onnx=model.onnx", "--saveEngine=model.engine", f"--memPoolSize=workspace:{build['workspace_mb']}M"]
    if build["sparse"]:
        args.append("--sparsity=enable")
    if build["profile"]:
        name = build["input"]
        for flag, shape in zip(("min", "opt", "max"), build["profile"], strict=True):
            args.append(f"--{flag}Shapes={name}:{'x'.join(map(str, shape))}")
    return " ".join(args)


def _write_build_files(folder: Path, build: dict[str, Any]) -> None:
    """build_engine.py (self-contained: this module's `build_engine` plus the settings), trtexec.sh, README."""
    precision = (["--int8"] if build["int8"] else []) + (["--fp16"] if build["fp16"] else [])
    script = "\n".join([
        '"""Build model.engine from model.onnx with the TensorRT Python API (written by compressor)."""',
        "from __future__ import annotations", "", "import os", "import sys", "import tempfile",
        "from pathlib import Path", "", "BUILD = " + repr(build), "", "",
        inspect.getsource(build_engine), "",
        'if __name__ == "__main__":',
        "    here = Path(__file__).resolve().parent",
        '    out = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "model.engine"',
        '    profile = BUILD["profile"]',
        '    build_engine(here / "model.onnx", out, int8=BUILD["int8"], fp16=BUILD["fp16"], sparse=BUILD["sparse"],',
        '                 workspace_mb=BUILD["workspace_mb"], input_name=BUILD["input"],',
        "                 profile=tuple(profile) if profile else None)",
        '    print(f"wrote {out}")', ""])
    (folder / "build_engine.py").write_text(script)
    trtexec = "\n".join([
        "#!/bin/sh", "# Build model.engine with trtexec. TensorRT >= 11 is always strongly typed (int8 comes from the",
        "# Q/DQ nodes, the precision flags were removed); TensorRT 10 needs the precision flags.",
        "set -e", 'cd "$(dirname "$0")"',
        "if trtexec --help 2>&1 | grep -q -- '--int8'; then",
        f"  PRECISION=\"{' '.join(precision)}\"", "else", '  PRECISION="--stronglyTyped"', "fi",
        f"exec trtexec {_trtexec_command(build)} $PRECISION \"$@\"", ""])
    sh = folder / "trtexec.sh"
    sh.write_text(trtexec)
    sh.chmod(0o755)
    readme = "\n".join([
        "TensorRT bundle written by compressor.", "",
        "model.onnx       explicit-quantization ONNX (symmetric int8 Q/DQ on Conv/MatMul/Gemm inputs, per-channel",
        "                 weights on the output-channel axis, float biases); meta.json lists what was changed.",
        "build_engine.py  python build_engine.py [engine path]   (needs the tensorrt package and a GPU)",
        "trtexec.sh       the same build with trtexec:", "",
        f"  TensorRT 10:  trtexec {_trtexec_command(build)} {' '.join(precision)}".rstrip(),
        f"  TensorRT 11:  trtexec {_trtexec_command(build)} --stronglyTyped", "",
        "On TensorRT 11 fp16 needs a mixed-precision ONNX (ModelOpt AutoCast) instead of --fp16." if build["fp16"]
        else "", ""])
    (folder / "README.txt").write_text(readme)

