"""OpenVINO target: the IR reloads and computes the simulation, its int8 GEMMs really run in int8 in the
CPU plugin (read from the compiled runtime graph), the per-target ONNX rewrites are exact, and a failed
export leaves no folder behind."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install 'compressor[openvino]'")

from compressor.data import DataSource
from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from exporters import openvino as ov_export
from exporters.openvino import OpenVinoExporter, conv_biases_as_add, hoist_qdq_above_views

N_EVAL = 300


@pytest.fixture(scope="module")
def vit_graphs(mnist_vit):
    """(float graph, int8-ptq graph, N_EVAL test digits, labels) of the bundled trained MNIST ViT."""
    model, calib, x, y = mnist_vit
    g = capture(model, x[:2])
    g8 = g.clone()
    calib = DataSource("calib", torch.cat([b[0] for b in calib.batches(64)])[:64])
    PASSES["quant.int8_ptq"]().run(g8, PassContext(calib=calib))
    return g, g8, x[:N_EVAL], y[:N_EVAL]


@pytest.fixture(scope="module")
def int8_ir(vit_graphs, tmp_path_factory):
    _, g8, _, _ = vit_graphs
    return OpenVinoExporter().export(g8, tmp_path_factory.mktemp("ov") / "model.openvino", "int8")


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _q_dq(name: str, src: str, scale: float, zp: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    inits = [nh.from_array(np.array(scale, np.float32), f"{name}_s"),
             nh.from_array(np.array(zp, np.uint8), f"{name}_z")]
    nodes = [h.make_node("QuantizeLinear", [src, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
             h.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_dq"])]
    return nodes, inits


def _view_model(shared: bool) -> onnx.ModelProto:
    """x → Relu → Reshape(-1, 8) → Q → DQ → MatMul(W); with `shared`, the Relu output also feeds an output."""
    rng = np.random.default_rng(0)
    qdq, inits = _q_dq("a", "flat", 0.05, 0)
    nodes = [h.make_node("Relu", ["x"], ["r"]), h.make_node("Reshape", ["r", "shape"], ["flat"]), *qdq,
             h.make_node("MatMul", ["a_dq", "w"], ["y"])]
    inits += [nh.from_array(np.array([-1, 8], np.int64), "shape"),
              nh.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")]
    outputs = [h.make_tensor_value_info("y", TensorProto.FLOAT, [6, 4])]
    if shared:
        outputs.append(h.make_tensor_value_info("r", TensorProto.FLOAT, [2, 3, 8]))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])], outputs, inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def test_qdq_moves_above_a_view_and_computes_the_same():
    model = _view_model(shared=False)
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    want = _ort(model, x)
    assert hoist_qdq_above_views(model) == 1
    onnx.checker.check_model(model)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    assert q.input[0] == "r"  # the quantizer now reads the Relu directly, where OpenVINO fuses it
    np.testing.assert_array_equal(_ort(model, x), want)


def test_qdq_stays_where_moving_it_would_quantize_another_consumer():
    model = _view_model(shared=True)
    assert hoist_qdq_above_views(model) == 0


def test_conv_bias_becomes_an_add_before_the_quantizer_exactly():
    rng = np.random.default_rng(0)
    qdq, inits = _q_dq("o", "c", 0.02, 128)
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"]), *qdq]
    inits += [nh.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
              nh.from_array(rng.standard_normal(4).astype(np.float32), "b")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                         [h.make_tensor_value_info("o_dq", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    want = _ort(model, x)
    assert conv_biases_as_add(model) == 1
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert len(conv.input) == 2
    np.testing.assert_allclose(_ort(model, x), want, atol=1e-6)


def test_float_ir_reloads_and_matches_torch(vit_graphs, tmp_path):
    g, _, x, _ = vit_graphs
    art = OpenVinoExporter(inference_precision="f32").export(g, tmp_path / "baseline.openvino", "fp32")
    assert sorted(p.name for p in art.path.iterdir()) == ["model.bin", "model.xml"]
    assert art.meta["inference_precision"] == "f32"
    assert all(v["int8"] == 0 for v in art.meta["runtime_int8"].values())
    run = art.runner(2)
    for b in (1, 7, 64):  # the batch axis stays dynamic
        with torch.no_grad():
            np.testing.assert_allclose(run(x[:b].numpy()), g.gm(x[:b]).numpy(), atol=1e-4, rtol=1e-4)


def test_int8_ir_runs_its_gemms_in_int8_and_computes_the_simulation(vit_graphs, int8_ir):
    _, g8, x, y = vit_graphs
    art = int8_ir
    counts = art.meta["runtime_int8"]
    # what the CPU plugin compiled, not what the Q/DQ layout hoped for: every Linear and the patch conv in int8
    assert counts["linear"] == {"graph": 17, "int8": 17, "float": 0}  # 4 blocks x (qkv, proj, fc1, fc2) + head
    assert counts["conv"] == {"graph": 1, "int8": 1, "float": 0}
    assert art.meta["rewrite"]["qdq_moved_above_views"] > 0
    got = art.runner(2)(x.numpy())
    with torch.no_grad():
        sim = g8.gm(x).numpy()
    agreement = float((got.argmax(1) == sim.argmax(1)).mean() * 100)
    assert agreement >= 99.0  # rounding ties alone may flip a digit or two
    top1 = [float((o.argmax(1) == y.numpy()).mean() * 100) for o in (got, sim)]
    assert abs(top1[0] - top1[1]) <= 100 * 2 / len(y)


def test_graph_gemm_census_tells_linears_from_activation_matmuls(int8_ir):
    # 4 blocks x (qkv, proj, fc1, fc2) + head; q·kᵀ and attn·v per block; the patch conv
    assert int8_ir.meta["graph_gemms"] == {"linear": 17, "conv": 1, "matmul": 8}


def test_failed_export_leaves_nothing(vit_graphs, tmp_path, monkeypatch):
    g, _, _, _ = vit_graphs

    def boom(*args, **kwargs):
        raise RuntimeError("the CPU plugin refused the IR")

    monkeypatch.setattr(ov_export, "compile_model", boom)
    with pytest.raises(RuntimeError, match="refused"):
        OpenVinoExporter().export(g, tmp_path / "model.openvino", "fp32")
    assert list(tmp_path.iterdir()) == []


def test_options_and_availability():
    ok, reason = OpenVinoExporter.available()
    assert ok, reason
    with pytest.raises(CompressorError, match="inference_precision"):
        OpenVinoExporter(inference_precision="int4")
