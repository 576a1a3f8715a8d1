"""Our quantize/dequantize ops must equal ONNX QuantizeLinear/DequantizeLinear in ONNX Runtime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from compressor.passes.quant.ops import dequantize, fake_quantize, quantize


def _ort_qdq(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    zp_type = TensorProto.UINT8 if zp.dtype == np.uint8 else TensorProto.INT8
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("q", zp_type, x.shape), helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                                x.shape)],
        [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return tuple(sess.run(None, {"x": x}))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_per_tensor_matches_onnxruntime_including_ties(dtype):
    scale = torch.tensor(0.05)
    zp = torch.tensor(128 if dtype == torch.uint8 else 0, dtype=dtype)
    x = torch.cat([torch.randn(1000) * 5, (torch.arange(-20, 20) + 0.5) * 0.05, torch.tensor([1e6, -1e6])])
    q_ref, y_ref = _ort_qdq(x.numpy(), scale.numpy(), zp.numpy(), 0)
    q = quantize(x, scale, zp, 0)
    assert q.dtype == dtype
    np.testing.assert_array_equal(q.numpy(), q_ref)
    np.testing.assert_array_equal(dequantize(q, scale, zp, 0).numpy(), y_ref)


def test_per_channel_matches_onnxruntime():
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    scale = w.abs().amax(0) / 127
    zp = torch.zeros(10, dtype=torch.int8)
    q_ref, y_ref = _ort_qdq(w.numpy(), scale.numpy(), zp.numpy(), 1)
    np.testing.assert_array_equal(quantize(w, scale, zp, 1).numpy(), q_ref)
    np.testing.assert_allclose(fake_quantize(w, scale, zp, 1).numpy(), y_ref, rtol=0, atol=0)
