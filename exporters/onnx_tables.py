"""Element-wise integer chains on a bounded input, evaluated once at export into lookup tables.

Why: the integer-only ViT's ShiftGELU is ~25 int64 element-wise operators (two ShiftExps, an
integer division per element) between an 8-bit requantization and the next one; ONNX Runtime runs
them one by one and TVM spent 35 of its 111 ms on their divisions. Every operator on that path is
a function of one 8-bit value and scalar constants, so the whole chain is a function of 256 inputs:
`tabulate_bounded_chains` runs the chain on every value of its input's range (in ONNX Runtime, the
artifact's own arithmetic) and replaces it by one Gather. The result is bit-exact by construction;
TFLite's int8 kernels use the same device for logistic and tanh. Shiftmax's exponential (a
function of x − rowmax, 511 values) folds the same way; chains whose inputs vary per channel
(per-channel requantizers) or per row are left as they are.

Ranges come from a small interval analysis: Clip with constant bounds, casts to 8/16-bit types,
row max/min of a bounded tensor, and sums/differences of bounded tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

MAX_VALUES = 4096  # largest input range tabulated (a 16 KB int32 table)
MIN_OPS = 4  # shorter chains cost less than the gather that would replace them
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Mod", "BitShift", "Cast", "Clip", "Max", "Min", "Where", "Less",
               "Greater", "LessOrEqual", "GreaterOrEqual", "Equal", "Neg", "Abs", "Not", "And", "Or", "Identity"}
_INT_TYPES = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
              onnx.TensorProto.INT16: (-(2**15), 2**15 - 1), onnx.TensorProto.UINT16: (0, 2**16 - 1)}
_INTEGER = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
            onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64}


def tabulate_bounded_chains(model: onnx.ModelProto) -> int:
    """Replace, in place, each element-wise chain of >= MIN_OPS operators whose only varying input
    has at most MAX_VALUES possible values by a table Gather; returns how many were replaced."""
    graph = model.graph
    scalars = _scalar_constants(graph)
    dtypes = _integer_dtypes(model)
    ranges = _ranges(graph, scalars, dtypes)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    taken: set[int] = set()
    replacements: dict[int, list[onnx.NodeProto]] = {}  # first node of a region -> its gather
    folded = 0
    for seed, (lo, hi) in ranges.items():
        if hi - lo + 1 > MAX_VALUES or dtypes.get(seed) not in _INTEGER:
            continue
        region = _grow(graph, seed, scalars, dtypes, consumers, taken)
        if len(region) < MIN_OPS:
            continue
        outputs = _region_outputs(graph, region, consumers)
        tables = _evaluate(graph, region, seed, lo, hi, outputs, scalars, dtypes)
        if tables is None:
            continue
        taken |= region
        replacements[min(region)], inits = _gathers(seed, dtypes[seed], lo, outputs, tables, f"_table{folded}")
        graph.initializer.extend(inits)
        folded += 1
    if folded:
        nodes = []
        for i, node in enumerate(graph.node):
            nodes.extend(replacements.get(i, []))
            if i not in taken:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        used = {name for node in graph.node for name in node.input}
        kept = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return folded


def _scalar_constants(graph: Any) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            if attr.name == "value":
                values[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name == "value_int":
                values[node.output[0]] = np.array(attr.i, np.int64)
    return {k: v for k, v in values.items() if v.size == 1 and v.ndim <= 1}


def _integer_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of the integer and boolean tensors (a chain may compare and select)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    kept = _INTEGER | {onnx.TensorProto.BOOL}
    return {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type in kept}


def _ranges(graph: Any, scalars: dict[str, np.ndarray], dtypes: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Intervals of integer tensors, in graph (topological) order."""
    ranges: dict[str, tuple[int, int]] = {}

    def of(name: str) -> tuple[int, int] | None:
        if name in scalars:
            v = int(scalars[name].reshape(()))
            return v, v
        return ranges.get(name)

    for node in graph.node:
        out = node.output[0] if node.output else ""
        ins = [of(n) for n in node.input]
        found: tuple[int, int] | None = None
        if node.op_type == "Clip" and len(node.input) == 3 and ins[1] and ins[2] and out in dtypes:
            found = ins[1][0], ins[2][1]
            if ins[0]:
                found = max(found[0], ins[0][0]), min(found[1], ins[0][1])
        elif node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            found = _INT_TYPES.get(to)
            if ins[0] and to in _INTEGER and (found is None or (found[0] <= ins[0][0] and ins[0][1] <= found[1])):
                found = ins[0]
        elif node.op_type in ("ReduceMax", "ReduceMin", "Identity", "Reshape", "Transpose", "Squeeze",
                              "Unsqueeze") and ins[0]:
            found = ins[0]
        elif node.op_type in ("Add", "Sub") and len(ins) == 2 and ins[0] and ins[1]:
            a, b = ins
            found = (a[0] + b[0], a[1] + b[1]) if node.op_type == "Add" else (a[0] - b[1], a[1] - b[0])
        if found is not None and out in dtypes:
            ranges[out] = found
    return ranges


def _grow(graph: Any, seed: str, scalars: dict, dtypes: dict[str, int], consumers: dict[str, list[int]],
          taken: set[int]) -> set[int]:
    """Indices of the element-wise integer nodes computed from `seed` and scalar constants alone."""
    region: set[int] = set()
    inside = {seed}
    frontier = list(consumers.get(seed, []))
    while frontier:
        i = frontier.pop()
        node = graph.node[i]
        if i in region or i in taken or node.op_type not in ELEMENTWISE:
            continue
        if not all(n == "" or n in inside or n in scalars for n in node.input) or not all(
                o in dtypes for o in node.output):
            continue
        region.add(i)
        inside.update(node.output)
        for out in node.output:
            frontier.extend(consumers.get(out, []))
    return region


def _region_outputs(graph: Any, region: set[int], consumers: dict[str, list[int]]) -> list[str]:
    graph_outputs = {o.name for o in graph.output}
    return [out for i in sorted(region) for out in graph.node[i].output
            if out in graph_outputs or any(c not in region for c in consumers.get(out, []))]


def _evaluate(graph: Any, region: set[int], seed: str, lo: int, hi: int, outputs: list[str],
              scalars: dict[str, np.ndarray], dtypes: dict[str, int]) -> list[np.ndarray] | None:
    """The region's outputs for every seed value lo..hi, computed by ONNX Runtime."""
    import onnxruntime as ort

    nodes = [graph.node[i] for i in sorted(region)]
    used = {n for node in nodes for n in node.input if n in scalars}
    produced = {o for node in nodes for o in node.output}
    inits = [numpy_helper.from_array(np.asarray(scalars[n]), n) for n in sorted(used - produced)]
    sub = helper.make_graph(nodes, "table", [helper.make_tensor_value_info(seed, dtypes[seed], [hi - lo + 1])],
                            [helper.make_tensor_value_info(o, dtypes[o], None) for o in outputs], inits)
    model = helper.make_model(sub, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    values = np.arange(lo, hi + 1).astype(helper.tensor_dtype_to_np_dtype(dtypes[seed]))
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        results = session.run(outputs, {seed: values})
    except Exception:  # a chain ONNX Runtime cannot run on its own stays in the graph
        return None
    if any(np.asarray(r).size != values.size for r in results):
        return None  # a constant broadcast the chain to more elements than its input
    return [np.asarray(r).reshape(-1) for r in results]


def _gathers(seed: str, dtype: int, lo: int, outputs: list[str], tables: list[np.ndarray], tag: str
             ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Gather(table, seed − lo) per output; the tables and the offset as initializers (TVM's
    importer reads no scalar `value_int` Constants)."""
    index, nodes, inits = seed, [], []
    # Gather takes int32/int64 indices and the offset is int64: an int64 seed (the ViT's) is used as is
    if dtype != onnx.TensorProto.INT64 and (lo or dtype != onnx.TensorProto.INT32):
        nodes.append(helper.make_node("Cast", [index], [f"{tag}_i64"], to=onnx.TensorProto.INT64))
        index = f"{tag}_i64"
    if lo:
        inits.append(numpy_helper.from_array(np.array(lo, np.int64), f"{tag}_lo"))
        nodes.append(helper.make_node("Sub", [index, f"{tag}_lo"], [f"{tag}_index"]))
        index = f"{tag}_index"
    for k, (out, table) in enumerate(zip(outputs, tables, strict=True)):
        inits.append(numpy_helper.from_array(table, f"{tag}_{k}"))
        nodes.append(helper.make_node("Gather", [f"{tag}_{k}", index], [out], axis=0))
    return nodes, inits
