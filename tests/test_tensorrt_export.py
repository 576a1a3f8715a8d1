"""TensorRT target: the explicit-quantization ONNX follows TensorRT's Q/DQ rules and still computes the model.

TensorRT itself cannot be installed here, so the engine is never built: the graph-structure tests
check the rules on the written ONNX, and ONNX Runtime stands in as the runtime to check that the
rewrite kept the model's accuracy (a check of the rewrite, not of TensorRT's numerics).
"""

from __future__ import annotations

import ast
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from compressor import zoo
from compressor.data import DataSource, Preprocess, open_source
from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from exporters import tensorrt as trt_export
from exporters.tensorrt import NOT_INSTALLED, TensorRTExporter, is_n_of_m, to_tensorrt_qdq
from tests.conftest import ROOT

WEIGHTED = ("Conv", "MatMul", "Gemm")
PASS_THROUGH = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "Concat", "Relu",
                "MaxPool")


# ---------------------------------------------------------------- helpers

def _ort_top1(model_path, x: torch.Tensor, y: torch.Tensor) -> float:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return float((out.argmax(1) == y.numpy()).mean() * 100)


def _top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean() * 100)


def _check_tensorrt_rules(model: onnx.ModelProto) -> dict[str, int]:
    """Assert TensorRT's explicit-quantization rules on a graph; return counts to compare."""
    onnx.checker.check_model(model, full_check=True)
    init = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def arr(name):
        return nh.to_array(init[name])

    def residual_add(add, tensor):  # TensorRT fuses it into the weighted op producing the other input
        other = [producer.get(i) for i in add.input if i != tensor]
        return add.op_type == "Add" and bool(other) and other[0] is not None and other[0].op_type in WEIGHTED

    def reaches_weighted(tensor, depth=0):
        return any(u.op_type in WEIGHTED or residual_add(u, tensor) or (u.op_type in PASS_THROUGH and depth < 16
                   and any(reaches_weighted(o, depth + 1) for o in u.output)) for u in consumers.get(tensor, []))

    counts = {"quantized_ops": 0, "per_channel": 0}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert len(n.input) == 3 and n.input[2] in init, f"{n.name}: explicit int8 zero point needed"
            zp = init[n.input[2]]
            assert zp.data_type == TensorProto.INT8 and not arr(n.input[2]).any(), f"{n.name}: not symmetric int8"
            assert arr(n.input[1]).min() > 0
        if n.op_type == "QuantizeLinear":
            users = consumers.get(n.output[0], [])
            assert users and all(u.op_type == "DequantizeLinear" for u in users), f"dangling Q {n.name}"
        if n.op_type == "DequantizeLinear":
            assert consumers.get(n.output[0]), f"dangling DQ {n.name}"
            data = init.get(n.input[0])
            assert data is None or data.data_type == TensorProto.INT8, f"{n.name}: {data.data_type} data (int32 bias?)"
            if data is None:  # activation: per tensor, feeding something TensorRT quantizes
                assert arr(n.input[1]).size == 1 and reaches_weighted(n.output[0]), f"unfused Q/DQ {n.name}"
        if n.op_type in WEIGHTED:
            dq = [producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input[:2]]
            assert all(dq) or not any(dq), f"{n.name}: Q/DQ on only one input forces a float fallback"
            if len(n.input) > 2 and n.input[2]:
                assert n.input[2] in init and init[n.input[2]].data_type == TensorProto.FLOAT, "bias must be float"
            if not all(dq):
                continue
            counts["quantized_ops"] += 1
            wdq = producer[n.input[1]]
            if wdq.input[0] in init:  # a weight: per output channel on TensorRT's axis
                w, scale = arr(wdq.input[0]), arr(wdq.input[1])
                axis = {a.name: a.i for a in wdq.attribute}.get("axis", 1)
                expected = 0 if n.op_type == "Conv" else 1  # Conv [K, C, R, S]; MatMul B [C, K]
                assert axis == expected and scale.shape == (w.shape[expected],), f"{n.name}: axis {axis}"
                counts["per_channel"] += 1
    assert not [i for i in model.graph.initializer if i.data_type == TensorProto.INT32]
    return counts


# ---------------------------------------------------------------- fixtures (quantize once per module)

@pytest.fixture(scope="module")
def vit_trt(mnist_vit, tmp_path_factory):
    model, calib, x, y = mnist_vit
    g = capture(model, x[:2])
    PASSES["quant.int8_ptq"]().run(g, PassContext(calib=calib))
    art = TensorRTExporter().export(g, tmp_path_factory.mktemp("vit") / "vit.tensorrt", "int8")
    return art, _top1(model, x, y), x, y


@pytest.fixture(scope="module")
def cnn_trt(tmp_path_factory):
    ckpt = torch.load(ROOT / "cnn_mnist.pt", weights_only=True)
    model = zoo.build(ckpt["arch"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    spec = Preprocess(**ckpt["preprocess"])
    x, y = map(torch.cat, zip(*open_source(ROOT / "calibration_data/mnist/test", spec).batches(1000), strict=True))
    calib = open_source(ROOT / "calibration_data/mnist/calib", spec)
    g = capture(model, x[:2])
    PASSES["reparam.fold_bn"]().run(g, PassContext(calib=calib))
    PASSES["quant.int8_ptq"]().run(g, PassContext(calib=calib))
    art = TensorRTExporter().export(g, tmp_path_factory.mktemp("cnn") / "cnn.tensorrt", "int8")
    return art, _top1(model, x, y), x, y


def _tiny_graph():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 26 * 26, 10)).eval()
    return capture(model, torch.randn(2, 1, 28, 28))


# ---------------------------------------------------------------- the int8 MNIST ViT and CNN

def test_vit_follows_tensorrt_qdq_rules(vit_trt):
    art, _, _, _ = vit_trt
    counts = _check_tensorrt_rules(onnx.load(str(art.onnx_path)))
    # patch-embed Conv, 17 Linear MatMuls, 8 attention matmuls (both operands quantized)
    assert counts == {"quantized_ops": 26, "per_channel": 18}
    meta = art.meta
    assert meta["quantized_ops"] == {"Conv": 1, "MatMul": 25} and meta["quantized_inputs"]["MatMul"] == 50
    assert meta["per_channel_weights"] == 18 and meta["partially_quantized_ops"] == []
    conv = meta["conversions"]
    assert conv["int32_biases_to_float"] == 18 and conv["activation_qdq_rescaled"] > 0
    assert meta["numerics_changed"] and any("activation_dtype: int8" in note for note in meta["notes"])
    assert sorted(p.name for p in art.path.iterdir()) == ["README.txt", "build_engine.py", "meta.json",
                                                          "model.onnx", "trtexec.sh"]
    assert json.loads((art.path / "meta.json").read_text())["quantized_ops"] == meta["quantized_ops"]


def test_vit_tensorrt_onnx_keeps_accuracy_in_onnxruntime(vit_trt):
    """ORT as a stand-in runtime: the rewritten graph (symmetric int8, float biases) still classifies."""
    art, float_top1, x, y = vit_trt
    top1 = _ort_top1(art.onnx_path, x, y)
    assert top1 >= float_top1 - 0.5, (top1, float_top1)  # measured 96.8 vs float 97.0 (default onnx 97.3)


def test_cnn_follows_rules_and_keeps_accuracy(cnn_trt):
    art, float_top1, x, y = cnn_trt
    counts = _check_tensorrt_rules(onnx.load(str(art.onnx_path)))
    assert counts == {"quantized_ops": 10, "per_channel": 10}  # 9 convs and the fc
    # the residual Adds: the Conv side is no longer re-quantized (Conv+Add fuse), the skip side still is
    assert art.meta["conversions"]["conv_output_qdq_removed_for_residual_fusion"] == 3
    model = onnx.load(str(art.onnx_path))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    adds = [n for n in model.graph.node if n.op_type == "Add" and len(n.input) == 2 and producer.get(n.input[1])]
    assert len(adds) == 3 and all(sorted(producer[i] for i in a.input) == ["Conv", "DequantizeLinear"] for a in adds)
    top1 = _ort_top1(art.onnx_path, x, y)
    assert top1 >= float_top1 - 0.5, (top1, float_top1)  # measured 97.7 vs float 97.7 (default onnx 97.6)


def test_build_files_describe_the_engine(vit_trt):
    art, _, _, _ = vit_trt
    build = art.meta["build"]
    assert build["int8"] and not build["sparse"] and build["profile"][0] == [1, 1, 28, 28]
    script = (art.path / "build_engine.py").read_text()
    tree = ast.parse(script)  # self-contained and valid Python: runs on a machine without compressor
    assert any(isinstance(n, ast.FunctionDef) and n.name == "build_engine" for n in tree.body)
    assert "import compressor" not in script and "from compressor" not in script and "from exporters" not in script
    sh = (art.path / "trtexec.sh").read_text()
    assert "--onnx=model.onnx" in sh and "--saveEngine=model.engine" in sh and '"--int8"' in sh
    assert "--minShapes=x:1x1x28x28" in sh and "--maxShapes=x:256x1x28x28" in sh and "--sparsity" not in sh


# ---------------------------------------------------------------- 2:4 sparsity

def test_2of4_pattern_survives_and_is_detected(vit_tiny, mnist_calib_tensor, tmp_path):
    g = capture(vit_tiny, mnist_calib_tensor[:2])
    ctx = PassContext(calib=DataSource("t", mnist_calib_tensor))
    PASSES["prune.nm"](PASSES["prune.nm"].Params(method="magnitude")).run(g, ctx)
    pruned = len(list(g.annotated("sparsity")))
    PASSES["quant.int8_ptq"]().run(g, ctx)
    art = TensorRTExporter().export(g, tmp_path / "sparse.tensorrt", "int8")
    proto = onnx.load(str(art.onnx_path))
    _check_tensorrt_rules(proto)
    weights = [nh.to_array(i) for i in proto.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 2]
    # MatMul B is [in, out]: the groups of 4 run along the reduction axis 0, not along the output axis
    assert pruned == 8 and sum(is_n_of_m(w, 0) for w in weights) == pruned
    assert sum(is_n_of_m(w, 1) for w in weights) == 0
    assert art.meta["sparse_2of4_weights"] == pruned and art.meta["build"]["sparse"]
    assert "--sparsity=enable" in (art.path / "trtexec.sh").read_text()
    assert sum(layer["sparse_2of4"] for layer in art.meta["weights"]) == pruned


# ---------------------------------------------------------------- the rewrite rules on small graphs

def _qdq_model(zero_point: np.ndarray, consumer: str = "MatMul") -> onnx.ModelProto:
    """x -> Q/DQ (given zero point) -> consumer with an int8 per-channel weight and an int32 bias."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 4)).astype(np.int8)
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], axis=0),
             h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], axis=0),
             h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
             h.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0)]
    if consumer == "MatMul":
        nodes += [h.make_node("MatMul", ["xd", "wd"], ["m"]), h.make_node("Add", ["m", "bd"], ["y"])]
    else:  # the Q/DQ feeds only a Softmax: nothing TensorRT would run in int8
        nodes += [h.make_node("Softmax", ["xd"], ["sm"]), h.make_node("MatMul", ["sm", "wd"], ["m"]),
                  h.make_node("Add", ["m", "bd"], ["y"])]
    inits = [nh.from_array(np.array(0.05, np.float32), "s"), nh.from_array(zero_point, "z"),
             nh.from_array(w, "w"), nh.from_array(rng.uniform(0.01, 0.02, 4).astype(np.float32), "ws"),
             nh.from_array(np.zeros(4, np.int8), "wz"), nh.from_array(np.array([5, -3, 0, 100], np.int32), "b"),
             nh.from_array(np.full(4, 0.001, np.float32), "bs"), nh.from_array(np.zeros(4, np.int32), "bz")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=10)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The ONNX semantics (DQ then float ops): ORT's fused integer kernels may saturate, which is not the point."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_uint8_zero_point_128_is_exact_and_bias_becomes_float():
    model = _qdq_model(np.array(128, np.uint8))
    new, summary = to_tensorrt_qdq(model)
    x = np.random.default_rng(1).uniform(-7, 7, (16, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(new, x), _run(model, x))  # same grid, bias value = DQ's product
    assert summary["conversions"]["activation_uint8_exact"] == 1 and not summary["numerics_changed"]
    assert summary["conversions"]["int32_biases_to_float"] == 1
    _check_tensorrt_rules(new)


def test_uint8_zero_point_0_widens_the_scale_to_cover_the_range():
    model = _qdq_model(np.array(0, np.uint8))
    new, summary = to_tensorrt_qdq(model)
    scales = {i.name: float(nh.to_array(i)) for i in new.graph.initializer if i.name.endswith("_trt_scale")}
    assert list(scales.values()) == [pytest.approx(0.05 * 255 / 127)]  # [0, 255·s] now needs 127 steps
    assert summary["numerics_changed"] and summary["conversions"]["activation_scale_widening_max"] > 2
    x = np.random.default_rng(1).uniform(0, 12, (16, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(new, x), _run(model, x), atol=0.5)  # close, not equal: a coarser grid


def test_qdq_feeding_nothing_quantizable_is_removed():
    model = _qdq_model(np.array(0, np.int8), consumer="Softmax")
    new, summary = to_tensorrt_qdq(model)
    assert summary["conversions"]["unfused_qdq_nodes_removed"] == 2
    assert [n.op_type for n in new.graph.node].count("QuantizeLinear") == 0
    assert summary["partially_quantized_ops"] == [new.graph.node[-2].name]  # MatMul: weight DQ only (reported)


def test_pytorch_style_weight_transpose_is_folded():
    """DQ(W[K, C], axis 0) -> Transpose -> MatMul becomes DQ(W[C, K], axis 1) -> MatMul."""
    model = _qdq_model(np.array(0, np.int8))
    w = next(i for i in model.graph.initializer if i.name == "w")
    w.CopyFrom(nh.from_array(np.ascontiguousarray(nh.to_array(w).T), "w"))
    dq = next(n for n in model.graph.node if n.output[0] == "wd")
    dq.attribute[0].i = 0
    dq.output[0] = "wd_kc"
    model.graph.node.insert(3, h.make_node("Transpose", ["wd_kc"], ["wd"], perm=[1, 0]))
    new, summary = to_tensorrt_qdq(model)
    assert summary["conversions"]["weight_transposes_folded"] == 1 and "Transpose" not in [
        n.op_type for n in new.graph.node]
    x = np.random.default_rng(1).uniform(-5, 5, (16, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(new, x), _run(model, x), rtol=1e-6, atol=1e-6)
    _check_tensorrt_rules(new)


def test_weight_quantized_on_the_wrong_axis_is_rejected():
    model = _qdq_model(np.array(0, np.int8))
    for init in model.graph.initializer:
        if init.name in ("ws", "wz"):
            value = nh.to_array(init)
            init.CopyFrom(nh.from_array(np.resize(value, 8), init.name))
    next(n for n in model.graph.node if n.output[0] == "wd").attribute[0].i = 0  # per input channel
    with pytest.raises(CompressorError, match="output-channel axis 1"):
        to_tensorrt_qdq(model)


# ---------------------------------------------------------------- artifact behaviour

def test_not_measured_without_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as on every machine we have
    art = TensorRTExporter(static_batch=4).export(_tiny_graph(), tmp_path / "t.tensorrt", "fp32")
    assert art.not_measured() == NOT_INSTALLED and art.meta["engine"] == NOT_INSTALLED
    with pytest.raises(CompressorError, match="TensorRT not installed"):
        art.runner(1)
    # a float graph: no Q/DQ, so no int8; the static batch is pinned in the ONNX and needs no profile
    assert not art.meta["build"]["int8"] and art.meta["build"]["profile"] is None
    dim = onnx.load(str(art.onnx_path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 4
    assert TensorRTExporter.available() == (True, "")
    assert not art.meta["build"]["sparse"]  # auto: no 2:4 weight in this graph
    forced = TensorRTExporter(sparse_weights=True).export(_tiny_graph(), tmp_path / "s.tensorrt", "fp32")
    assert forced.meta["build"]["sparse"] and "--sparsity=enable" in (forced.path / "trtexec.sh").read_text()


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def boom(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trt_export, "_write_build_files", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        TensorRTExporter().export(_tiny_graph(), out / "m.tensorrt", "fp32")
    assert list(out.iterdir()) == []


def test_options_are_validated():
    with pytest.raises(CompressorError, match="min_batch <= opt_batch <= max_batch"):
        TensorRTExporter(min_batch=8, opt_batch=4)
    with pytest.raises(CompressorError, match=r"Allowed:.*sparse_weights"):
        TensorRTExporter(int4=True)
