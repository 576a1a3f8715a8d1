import numpy as np
import onnx
import pytest
import torch

from compressor.data import DataSource
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from exporters import get_exporter
from exporters.base import atomic_path


@pytest.fixture(scope="module")
def quantized(vit_tiny, mnist_calib_tensor):
    g = capture(vit_tiny, mnist_calib_tensor[:2])
    PASSES["quant.int8_ptq"]().run(g, PassContext(calib=DataSource("t", mnist_calib_tensor)))
    return g


def test_quantized_onnx_has_int8_weights_and_qdq(tmp_path, quantized, mnist_calib_tensor):
    art = get_exporter("onnx").export(quantized, tmp_path / "model.onnx", "int8")
    model = onnx.load(str(art.path))
    ops = art.op_counts()
    # 19 activations, 10 weights, 10 biases (int32 on the s_x·s_w grid, which ORT needs to fuse QGemm)
    assert ops["QuantizeLinear"] == 19 and ops["DequantizeLinear"] == 19 + 10 + 10
    dtype = {i.name: (i.data_type, len(i.dims)) for i in model.graph.initializer}
    dq_inputs = [dtype.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq_inputs.count((onnx.TensorProto.INT8, 2)) + dq_inputs.count((onnx.TensorProto.INT8, 4)) == 10
    assert dq_inputs.count((onnx.TensorProto.INT32, 1)) == 10
    # batch axis is symbolic and ORT equals the PyTorch simulation on real digits
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    run = art.runner(threads=2)
    x = mnist_calib_tensor[:13]
    out = run(x.numpy())
    np.testing.assert_allclose(out, quantized(x).numpy(), atol=1e-4, rtol=0)


def test_pack_int4_stores_4_bit_weights_in_half_the_bytes_exactly(tmp_path, vit_tiny, mnist_calib_tensor, quantized):
    g = capture(vit_tiny, mnist_calib_tensor[:2])
    layers = [{"match": "blocks.*", "weight_bits": 4}]  # 8 of the 10 weights on a 4-bit grid
    PASSES["quant.int8_ptq"](PASSES["quant.int8_ptq"].Params(layers=layers)).run(
        g, PassContext(calib=DataSource("t", mnist_calib_tensor)))
    plain = get_exporter("onnx").export(g, tmp_path / "plain.onnx", "int8")
    packed = get_exporter("onnx", pack_int4=True).export(g, tmp_path / "packed.onnx", "int8")
    model = onnx.load(str(packed.path))
    int4 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT4 and len(i.dims) >= 2]
    assert packed.meta["int4_weights"] == len(int4) == 8 and packed.meta["opset"] == 21
    weights = sum(int(np.prod(i.dims)) for i in int4)
    assert plain.size_bytes - packed.size_bytes >= weights // 2 - 64  # each code went from 8 bits to 4
    x = mnist_calib_tensor[:13].numpy()
    np.testing.assert_allclose(packed.runner(2)(x), plain.runner(2)(x), atol=1e-5, rtol=0)
    # nothing on a 4-bit grid: the file is left as it was (opset 18, no conversion)
    eight = get_exporter("onnx", pack_int4=True).export(quantized, tmp_path / "eight.onnx", "int8")
    assert eight.meta["int4_weights"] == 0 and eight.meta["opset"] == 18


def test_float_export_matches_torch(tmp_path, vit_tiny):
    g = capture(vit_tiny, torch.randn(2, 1, 28, 28))
    art = get_exporter("onnx").export(g, tmp_path / "baseline.onnx", "fp32")
    x = torch.randn(3, 1, 28, 28)
    np.testing.assert_allclose(art.runner(1)(x.numpy()), vit_tiny(x).detach().numpy(), atol=1e-5)
    assert art.size_bytes > 4 * sum(p.numel() for p in vit_tiny.parameters())


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a.onnx"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unknown_target_names_available():
    from compressor.errors import CompressorError

    with pytest.raises(CompressorError, match=r"unknown export target 'tflite'.*onnx"):
        get_exporter("tflite")
