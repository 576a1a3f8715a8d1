"""int8 PTQ on depthwise/ReLU6 CNNs: quantizers where the runtime builds one integer chain.

A small EfficientNet-Lite (TF-same padding, ReLU6, depthwise convs, residual Adds, mean pooling)
with random weights: the structure is what these tests check; accuracy on the real pretrained
model is the conformance suite's job (benches/conformance.py).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compressor import zoo
from compressor.data import DataSource
from compressor.errors import CompressorError
from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.quant.ops import DEQUANTIZE, QUANTIZE

TINY_STAGES = ((1, 3, 1, 8, 8, 1), (4, 3, 2, 8, 16, 2), (4, 5, 1, 16, 16, 2))


@pytest.fixture(scope="module")
def tiny_lite() -> torch.nn.Module:
    torch.manual_seed(0)
    model = zoo.build("efficientnet_lite", stages=TINY_STAGES, stem=8, head=32, num_classes=10, img_size=32)
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding moves real numbers
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _int8(model: torch.nn.Module, x: torch.Tensor, **params):
    g = capture(model, x[:2])
    ctx = PassContext(calib=DataSource("test", x), calib_batch_size=16)
    PASSES["reparam.fold_bn"]().run(g, ctx)
    PASSES["quant.int8_ptq"](PASSES["quant.int8_ptq"].Params(**params)).run(g, ctx)
    return g, ctx.log[-1]


@pytest.fixture(scope="module")
def quantized(tiny_lite, images):
    return _int8(tiny_lite, images)


def _qparams(g, q):
    return g.attr(q.args[1]), g.attr(q.args[2])


def test_relu6_output_owns_the_quantizer(quantized) -> None:
    g, _ = quantized
    relu6 = [n for n in g.nodes if n.target == torch.ops.aten.relu6.default]
    assert relu6
    for r in relu6:
        q = next(u for u in r.users if u.target is QUANTIZE)
        scale, zp = _qparams(g, q)
        assert int(zp) == 0 and float(scale * 255) <= 6.0  # the grid lies inside [0, 6]: the clamp is redundant
        conv = r.args[0]
        assert not any(u.target is QUANTIZE for u in conv.users)  # no quantizer on the raw pre-activation


def test_zero_pad_reads_the_dequantized_source(quantized) -> None:
    g, _ = quantized
    pads = [n for n in g.nodes if n.target == torch.ops.aten.pad.default]
    assert pads
    for pad in pads:
        assert pad.args[0].target is DEQUANTIZE  # quantized before the pad, so the pad folds into the Conv
        assert all(u.target != QUANTIZE for u in pad.users)


def test_residual_adds_are_quantized(quantized, tiny_lite) -> None:
    g, _ = quantized
    adds = g.find("add")
    residual = [a for a in adds if all(getattr(x, "target", None) is DEQUANTIZE for x in a.args)]
    assert len(residual) == sum(b.skip for b in tiny_lite._blocks) == 4
    for a in residual:
        assert any(u.target is QUANTIZE for u in a.users)


def test_onnx_runtime_builds_one_integer_chain(quantized, images, tmp_path: Path) -> None:
    import onnxruntime as ort

    from exporters.onnx import OnnxExporter

    g, _ = quantized
    art = OnnxExporter().export(g, tmp_path / "m.onnx", "int8")
    raw = collections.Counter(n.op_type for n in onnx.load(str(art.path)).graph.node)
    assert raw["Pad"] == 0  # folded into the Convs' pads
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(art.path), opts, providers=["CPUExecutionProvider"])
    fused = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    n_conv = len(g.find("conv"))
    assert fused["QLinearConv"] == n_conv and fused["Conv"] == 0
    assert fused["QLinearAdd"] == 4 and fused["Clip"] == 0 and fused["Add"] == 0
    assert fused["QuantizeLinear"] <= 2  # the image, and the pooled features before the classifier
    out = art.runner(2)(images.numpy())
    sim = g(images).numpy()
    assert (out.argmax(1) == sim.argmax(1)).mean() >= 0.95
    assert np.abs(out - sim).max() < 0.1 * np.abs(sim).max()


def test_dead_channels_never_saturate_the_int32_bias(tiny_lite, images) -> None:
    model = zoo.build("efficientnet_lite", stages=TINY_STAGES, stem=8, head=32, num_classes=10, img_size=32).eval()
    model.load_state_dict(tiny_lite.state_dict())
    with torch.no_grad():  # a dead channel: weight ~0 after BN folding, yet a large bias
        model._blocks[1]._bn0.weight[:3] = 1e-14
        model._blocks[1]._bn0.bias[:3] = 3.0
    g, record = _int8(model, images)
    layer = next(r for r in record.summary["layers"] if r["module"] == "_blocks.1._expand_conv")
    assert layer["bias_saturated"] == 0 and layer["dead_channels"] >= 3
    bias = next(g.attr(n.args[0]) for n in g.nodes
                if n.target is DEQUANTIZE and g.attr(n.args[0]) is not None and g.attr(n.args[0]).dtype == torch.int32
                and g.module_path(n) == "_blocks.1._expand_conv")
    assert int(bias.abs().max()) < 2**31 - 1
    with torch.no_grad():
        reference = model(images)
    assert float(((g(images) - reference) ** 2).mean() / (reference**2).mean()) < 0.05


def test_skip_names_layers_by_module_path(tiny_lite, images) -> None:
    g, record = _int8(tiny_lite, images, skip=["_blocks.1.*", "_fc"])
    assert record.summary["quantized_ops"]["conv"] == len(g.find("conv")) - 3
    assert "linear" not in record.summary["quantized_ops"]
    with pytest.raises(CompressorError, match=r"'_blokcs\.1\.\*' matches no layer.*_blocks\.1\."):
        _int8(tiny_lite, images, skip=["_blokcs.1.*"])


def test_sensitivity_rows_are_named_by_the_paths_skip_accepts(tiny_lite, images) -> None:
    from compressor.eval.sensitivity import layer_sensitivity

    float_graph = capture(tiny_lite, images[:2])
    g, _ = _int8(tiny_lite, images)
    rows = layer_sensitivity(float_graph, g, DataSource("t", images), metric="agreement", limit=16).rows
    names = [r["layer"] for r in rows if r["kind"] == "conv"]
    assert "_blocks.1._depthwise_conv" in names and "_conv_stem" in names
    _, record = _int8(tiny_lite, images, skip=[names[3]])  # a row's name is a skip pattern for exactly that layer
    assert record.summary["quantized_ops"]["conv"] == len(g.find("conv")) - 1
