"""Bounded-input element-wise chains folded into lookup tables: bit-exact, and only where sound."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from exporters.onnx_tables import tabulate_bounded_chains

ort = pytest.importorskip("onnxruntime")


def _model(chain: list, extra_inits: tuple = (), lo: int = -128, hi: int = 127) -> onnx.ModelProto:
    """float x -> int64 codes clipped to [lo, hi] -> `chain` (ending in `y`) -> float output."""
    nodes = [h.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
             h.make_node("Clip", ["xi", "lo", "hi"], ["c"]), *chain,
             h.make_node("Cast", ["y"], ["out"], to=TensorProto.FLOAT)]
    inits = [nh.from_array(np.array(v, np.int64), name) for name, v in
             (("lo", lo), ("hi", hi), ("three", 3), ("seven", 7), ("one", 1), *extra_inits)]
    inits.append(nh.from_array(np.array(7, np.uint64), "s"))
    graph = h.make_graph(nodes, "t", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                         [h.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 8])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


# a ShiftExp-like chain: multiply, truncating division, floor via Mod, clamp, shift
SHIFTY = [h.make_node("Mul", ["c", "three"], ["a"]), h.make_node("Div", ["a", "seven"], ["b"]),
          h.make_node("Mod", ["a", "seven"], ["r"], fmod=0), h.make_node("Sub", ["b", "r"], ["d"]),
          h.make_node("Max", ["d", "one"], ["e"]), h.make_node("Cast", ["e"], ["u"], to=TensorProto.UINT64),
          h.make_node("BitShift", ["u", "s"], ["v"], direction="LEFT"),
          h.make_node("Cast", ["v"], ["y"], to=TensorProto.INT64)]


def test_chain_on_an_8bit_input_becomes_one_gather_and_is_bit_exact():
    model = _model(SHIFTY)
    x = np.random.default_rng(0).integers(-300, 300, (64, 8)).astype(np.float32)
    x[0, :2] = -128, 127  # both ends of the clip: the table's first and last entries
    expected = _run(model, x)
    assert tabulate_bounded_chains(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gather") == 1 and "BitShift" not in ops and "Mod" not in ops
    assert np.array_equal(_run(model, x), expected)


def test_difference_of_two_bounded_tensors_is_tabulated_over_its_range():
    """Shiftmax's x − rowmax: both 8-bit, so the difference spans [−255, 255]."""
    chain = [h.make_node("ReduceMax", ["c"], ["m"], keepdims=1, axes=None),
             h.make_node("Sub", ["c", "m"], ["z"]), h.make_node("Mul", ["z", "three"], ["a"]),
             h.make_node("Div", ["a", "seven"], ["b"]), h.make_node("Add", ["b", "one"], ["d"]),
             h.make_node("Mul", ["d", "d"], ["y"])]
    model = _model(chain)
    x = np.random.default_rng(1).integers(-128, 128, (16, 8)).astype(np.float32)
    expected = _run(model, x)
    assert tabulate_bounded_chains(model) == 1
    table = next(i for i in model.graph.initializer if i.name.startswith("_table0_0"))
    assert nh.to_array(table).size == 511
    assert np.array_equal(_run(model, x), expected)


def test_chains_that_are_not_functions_of_one_bounded_value_stay():
    per_channel = [h.make_node("Mul", ["c", "w"], ["a"]), h.make_node("Div", ["a", "seven"], ["b"]),
                   h.make_node("Add", ["b", "one"], ["d"]), h.make_node("Mul", ["d", "three"], ["y"])]
    model = _model(per_channel, extra_inits=(("w", np.arange(8)),))
    assert tabulate_bounded_chains(model) == 0  # the multiplier varies per channel
    assert tabulate_bounded_chains(_model([SHIFTY[0], h.make_node("Add", ["a", "one"], ["y"])])) == 0  # too short
    wide = _model(SHIFTY, lo=-(2**20), hi=2**20)
    assert tabulate_bounded_chains(wide) == 0  # a 2^21-entry table is no saving
