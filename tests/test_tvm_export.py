"""TVM target: integer graphs bit-exact vs ONNX Runtime, float graphs within float rounding."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

pytest.importorskip("tvm", reason="the tvm extra is not installed: pip install 'compressor[tvm]'")
ort = pytest.importorskip("onnxruntime")

from exporters.tvm import TvmExporter, TvmRunner, compile_onnx, host_target  # noqa: E402


def _c(name, value):
    return nh.from_array(np.asarray(value), name)


def _integer_model(batch_dim="batch") -> onnx.ModelProto:
    """The integer-only ViT op set: Q, casts, MatMulInteger (2-D, 4-D, u8), int64 arithmetic with
    truncating Div and floor Mod, reductions, Where, table Gather, BitShift, shape ops, per-axis DQ."""
    rng = np.random.default_rng(0)
    n = [
        h.make_node("QuantizeLinear", ["x", "qs", "qz"], ["q8"]),
        h.make_node("Cast", ["q8"], ["q"], to=TensorProto.INT64),
        # int8 x int8 (batched 4-D) and uint8 x int8 (2-D weight) integer matmuls
        h.make_node("Reshape", ["q8", "s4"], ["a4"]),
        h.make_node("Transpose", ["a4"], ["b4"], perm=[0, 1, 3, 2]),
        h.make_node("MatMulInteger", ["a4", "b4"], ["att"]),
        h.make_node("Add", ["q", "c128"], ["qu"]),
        h.make_node("Cast", ["qu"], ["u8"], to=TensorProto.UINT8),
        h.make_node("MatMulInteger", ["u8", "w8"], ["mm"]),
        h.make_node("Cast", ["mm"], ["m"], to=TensorProto.INT64),
        # fixed-point arithmetic: floor and truncation on negative values, clamps, reductions
        h.make_node("Mul", ["m", "c3"], ["m3"]),
        h.make_node("Div", ["m3", "cm7"], ["d"]),
        h.make_node("Mod", ["m3", "c7"], ["md"], fmod=0),
        h.make_node("Sub", ["d", "md"], ["e"]),
        h.make_node("Max", ["e", "cm900"], ["e1"]),
        h.make_node("Min", ["e1", "c900"], ["e2"]),
        h.make_node("Clip", ["e2", "cm500", "c500"], ["e3"]),
        h.make_node("ReduceMax", ["e3", "ax"], ["rmax"], keepdims=1),
        h.make_node("ReduceSum", ["e3", "ax"], ["rsum"], keepdims=1),
        h.make_node("Sub", ["e3", "rmax"], ["neg"]),
        h.make_node("GreaterOrEqual", ["neg", "cm255"], ["ge"]),
        h.make_node("Less", ["e3", "c0"], ["lt"]),
        h.make_node("Equal", ["e3", "c0"], ["eq"]),
        h.make_node("Max", ["neg", "cm255"], ["ni"]),
        h.make_node("Add", ["ni", "c255"], ["idx"]),
        h.make_node("Gather", ["tab", "idx"], ["lut"], axis=0),
        h.make_node("Where", ["ge", "lut", "c0"], ["w1"]),
        h.make_node("Where", ["lt", "w1", "rsum"], ["w2"]),
        h.make_node("Where", ["eq", "c7", "w2"], ["w3"]),
        h.make_node("Abs", ["w3"], ["wa"]),
        h.make_node("Cast", ["wa"], ["wu"], to=TensorProto.UINT64),
        h.make_node("Mul", ["wu", "big"], ["wb"]),
        h.make_node("BitShift", ["wb", "sh"], ["ws"], direction="RIGHT"),
        h.make_node("Cast", ["ws"], ["y64"], to=TensorProto.INT64),
        # shape ops on int64, then int32 -> float with a per-axis scale
        h.make_node("Transpose", ["y64"], ["t"], perm=[0, 2, 1]),
        h.make_node("Concat", ["t", "t"], ["cc"], axis=1),
        h.make_node("Slice", ["cc", "st", "en", "axs"], ["sl"]),
        h.make_node("Gather", ["sl", "gi"], ["ga"], axis=2),
        h.make_node("Unsqueeze", ["ga", "ua"], ["un"]),
        h.make_node("Expand", ["un", "es"], ["ex"]),
        h.make_node("Reshape", ["ex", "flat"], ["fl"]),
        h.make_node("Cast", ["att"], ["att64"], to=TensorProto.INT64),
        h.make_node("Reshape", ["att64", "flat"], ["attf"]),
        h.make_node("Concat", ["fl", "attf"], ["all"], axis=1),
        h.make_node("Cast", ["all"], ["f32"], to=TensorProto.INT32),
        h.make_node("DequantizeLinear", ["f32", "dqs"], ["y"], axis=1),
    ]
    # w8 within ±64: ONNX Runtime's u8 x s8 kernel without VNNI (AVX2) saturates pair sums above
    # 32767, which full-range weights reach; the reference must be exact on every CPU
    inits = [
        _c("qs", np.float32(0.02)), _c("qz", np.int8(0)), _c("s4", np.array([0, 2, 4, 4], np.int64)),
        _c("c128", np.int64(128)), _c("w8", rng.integers(-64, 64, (8, 16)).astype(np.int8)),
        _c("c3", np.int64(3)), _c("cm7", np.int64(-7)), _c("c7", np.int64(7)), _c("cm900", np.int64(-900000)),
        _c("c900", np.int64(900000)), _c("cm500", np.int64(-500000)), _c("c500", np.int64(500000)),
        _c("ax", np.array([-1], np.int64)), _c("cm255", np.int64(-255)), _c("c255", np.int64(255)),
        _c("c0", np.int64(0)), _c("tab", (np.arange(256, dtype=np.int64) ** 2) - 7000),
        _c("big", np.uint64(123457)), _c("sh", np.uint64(5)), _c("st", np.array([1], np.int64)),
        _c("en", np.array([30], np.int64)), _c("axs", np.array([1], np.int64)), _c("gi", np.array([0, 3], np.int64)),
        _c("ua", np.array([1], np.int64)), _c("es", np.array([1, 2, 1, 1], np.int64)),
        _c("flat", np.array([0, -1], np.int64)), _c("dqs", (np.arange(1, 149, dtype=np.float32) * 1e-3)),
    ]
    graph = h.make_graph(n, "int_ops", [h.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 4, 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 148])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_integer_graph_bit_exact_vs_onnxruntime(tmp_path):
    path = tmp_path / "int.onnx"
    onnx.save(_integer_model(), str(path))
    so = compile_onnx(path, tmp_path / "int.so", batch=3)
    x = (np.random.default_rng(1).standard_normal((7, 4, 8)) * 1.5).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = TvmRunner(so, batch=3, threads=2)(x)  # 7 rows through a batch-3 build: split and padded
    assert out.shape == ref.shape == (7, 148)
    assert np.array_equal(out, ref)
    assert not list(tmp_path.glob(".int.*"))  # the atomic write left no temporary behind


def test_scheduled_matmuls_match_onnxruntime(tmp_path):
    """Odd sizes (tiles padded), a bias + GELU epilogue, an int8 batched matmul."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 40)).astype(np.float32)
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "bias"], ["a"]),
        h.make_node("Div", ["a", "sq2"], ["d"]),
        h.make_node("Erf", ["d"], ["e"]), h.make_node("Add", ["e", "one"], ["e1"]),
        h.make_node("Mul", ["a", "e1"], ["f"]),
        h.make_node("QuantizeLinear", ["f", "qs", "qz"], ["q"]),
        h.make_node("Reshape", ["q", "s4"], ["q4"]),
        h.make_node("Transpose", ["q4"], ["k4"], perm=[0, 1, 3, 2]),
        h.make_node("MatMulInteger", ["q4", "k4"], ["att"]),
        h.make_node("Cast", ["att"], ["y"], to=TensorProto.FLOAT),
    ]
    inits = [_c("w", w), _c("bias", rng.standard_normal(40).astype(np.float32)), _c("sq2", np.float32(1.4142135)),
             _c("one", np.float32(1.0)), _c("qs", np.float32(0.05)), _c("qz", np.int8(0)),
             _c("s4", np.array([1, 37, 4, 10], np.int64))]
    graph = h.make_graph(nodes, "mm", [h.make_tensor_value_info("x", TensorProto.FLOAT, [37, 48])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 37, 4, 4])], inits)
    path = tmp_path / "mm.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=9), str(path))
    x = rng.standard_normal((37, 48)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = TvmRunner(compile_onnx(path, tmp_path / "mm.so", batch=37), batch=37)(x)
    # float rounding can move a value across a quantization step; nearly all must be exact
    assert out.shape == ref.shape and np.mean(out == ref) > 0.97


def test_float_vit_parity_and_exporter(tmp_path, vit_tiny):
    from compressor.graph import capture

    assert TvmExporter.available() == (True, "")
    assert host_target()["kind"] == "llvm" and host_target()["mcpu"] != "native"
    graph = capture(vit_tiny, torch.randn(2, 1, 28, 28))
    art = TvmExporter().export(graph, tmp_path / "model.so", "fp32")
    assert art.path.is_file() and art.meta["batch"] in (1, 2)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = vit_tiny(x).numpy()
    np.testing.assert_allclose(art.runner(2)(x.numpy()), ref, atol=1e-4, rtol=0)


def test_convs_become_im2col_matmuls_with_torch_parity(tmp_path):
    """Padded, strided, 1x1 and patch-embedding convs become slices/reshapes + MatMul; a dilated
    or grouped one stays a Conv. Outputs match PyTorch."""
    from compressor.graph import capture
    from exporters.onnx import OnnxExporter
    from exporters.tvm import _rewrite_onnx, convs_as_matmuls

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 4, stride=4), torch.nn.ReLU(),  # a patch embedding
        torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(12, 16, 3, stride=2, padding=1, bias=False),
        torch.nn.Conv2d(16, 16, 1, stride=1),
        torch.nn.Conv2d(16, 16, 3, padding=2, dilation=2),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=4),
    ).eval()
    graph = capture(model, torch.randn(2, 3, 16, 16))
    onnx_path = OnnxExporter().export(graph, tmp_path / "c.onnx", "fp32").path
    rewritten = _rewrite_onnx(onnx.load(str(onnx_path)), 2)
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("Conv") == 2 and ops.count("MatMul") == 4 and "Pad" in ops
    # a symbolic batch leaves nothing static to slice: only the batch-fixed model is rewritten
    assert [n.op_type for n in convs_as_matmuls(onnx.load(str(onnx_path))).graph.node].count("Conv") == 6
    art = TvmExporter(batch=2).export(graph, tmp_path / "c.so", "fp32")
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(art.runner(2)(x.numpy()), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("signed", "a_shape", "k", "n", "w_zero"), [
    (True, (2, 9, 32), 32, 48, None), (False, (5, 30), 30, 40, None), (True, (2, 9, 32), 32, 48, 128)])
def test_vnni_matmul_is_exact_and_used(tmp_path, signed, a_shape, k, n, w_zero):
    """int8/uint8 x constant int8 through `vnni_matmul`: signed A shifted by 128 and corrected, K and
    N padded to whole quads/vectors, 2-D and 3-D A, a weight stored as uint8 + 128 with zero point
    128 (the integer ViT's form); equal to numpy's int32 product. The rewrite is checked on every
    CPU, the run only where there is VNNI."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from exporters.tvm_vnni import KERNEL, has_vnni, vnni_matmuls

    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    zero = np.zeros((), np.int8 if signed else np.uint8)
    stored = [_c("w", w)] if w_zero is None else [_c("w", (w.astype(np.int16) + w_zero).astype(np.uint8)),
                                                  _c("wz", np.array(w_zero, np.uint8))]
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["a"]),
             h.make_node("MatMulInteger", ["a", "w"] + ([] if w_zero is None else ["", "wz"]), ["acc"]),
             h.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT)]
    graph = h.make_graph(nodes, "vnni", [h.make_tensor_value_info("x", TensorProto.FLOAT, list(a_shape))],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [*a_shape[:-1], n])],
                         [_c("s", np.float32(1.0)), _c("z", zero), *stored])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    model.ir_version = 8
    assert any(KERNEL in gv.name_hint for gv, _ in vnni_matmuls(from_onnx(model)).functions_items())
    if not has_vnni(tvm.target.Target(host_target())):
        pytest.skip("this CPU has no AVX-512 VNNI")
    onnx.save(model, tmp_path / "m.onnx")
    lo, hi = (-128, 127) if signed else (0, 255)
    a = rng.integers(lo, hi + 1, a_shape).astype(np.float32)
    a.flat[:2] = lo, hi  # the extremes of the range, where the +128 shift would overflow a byte
    out = TvmRunner(compile_onnx(tmp_path / "m.onnx", tmp_path / "m.so", a_shape[0]), a_shape[0])(a)
    assert np.array_equal(out, (a.astype(np.int64) @ w.astype(np.int64)).astype(np.float32))
