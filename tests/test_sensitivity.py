"""Per-layer sensitivity: the layers it finds, the exactness of its bypass, and that it blames the right layer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from compressor import zoo
from compressor.data import DataSource, Preprocess, open_source
from compressor.errors import CompressorError
from compressor.eval.sensitivity import layer_sensitivity, only_quantized, quantized_layers
from compressor.graph import Graph, capture
from compressor.passes import PASSES, PassContext
from compressor.passes.quant import ops

ROOT = Path(__file__).resolve().parent.parent
N_EVAL = 200  # enough digits for a delta to move, few enough for one pass per layer to stay quick


def _int8(model: torch.nn.Module, calib: DataSource, x: torch.Tensor) -> tuple[Graph, Graph]:
    f = capture(model, x[:2])
    q = f.clone()
    params = PASSES["quant.int8_ptq"].Params(activation_observer="minmax")  # mse is 3x slower, same structure
    PASSES["quant.int8_ptq"](params).run(q, PassContext(calib=calib))
    return f, q


@pytest.fixture(scope="module")
def vit_int8(mnist_vit):
    model, calib, x, y = mnist_vit
    f, q = _int8(model, calib, x)
    return f, q, DataSource("digits", x[:N_EVAL], labels=y[:N_EVAL].numpy()), x[:64]


def _weight_dqs(q: Graph) -> list[torch.fx.Node]:
    """Weight DequantizeLinears: DQ of int8 codes used as a MatMul/Conv weight (not the int32 biases)."""
    return [n for n in q.nodes if n.target is ops.DEQUANTIZE and q.is_constant(n.args[0])
            and q.attr(n.args[0]).dtype == torch.int8]


def test_one_row_per_quantized_layer_with_positive_sqnr(vit_int8):
    f, q, data, _ = vit_int8
    res = layer_sensitivity(f, q, data, "top1", batch_size=N_EVAL)
    attention = [n for n in q.find("matmul") if all(a.target is ops.DEQUANTIZE and not q.is_constant(a.args[0])
                                                    for a in n.args[:2])]
    assert len(res.rows) == len(_weight_dqs(q)) + len(attention) == 4 * 6 + 2  # 4 blocks, patch embed, head
    names = [r["layer"] for r in res.rows]
    assert names[:4] == ["patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.q@k", "blocks.0.attn.attn@v"]
    assert names[-1] == "head" and len(set(names)) == len(names)
    assert all(math.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 10 for r in res.rows)  # int8: measured 16-46 dB
    assert all(r["bits"] in ("w8a8", "w7a8", "a8") for r in res.rows)
    assert sorted(r["rank"] for r in res.rows) == list(range(1, len(res.rows) + 1))
    assert res.images == N_EVAL and res.float_accuracy > 95 and res.quantized_accuracy > 95


def test_bypass_is_exact_with_all_and_with_no_layer(vit_int8):
    f, q, _, x = vit_int8
    layers = quantized_layers(f, q)
    with torch.no_grad():
        everything = only_quantized(f, q, [la.name for la in layers], layers)
        assert torch.equal(everything(x), q(x))
        nothing = only_quantized(f, q, [], layers)
        torch.testing.assert_close(nothing(x), f(x), rtol=1e-5, atol=1e-5)
        assert not any(n.target in ops.ONNX_TRANSLATIONS for n in nothing.nodes)
        one = only_quantized(f, q, ["blocks.1.mlp.fc1"], layers)  # its input Q/DQ and weight DQ, nothing else
        kept = [n for n in one.nodes if n.target in ops.ONNX_TRANSLATIONS]
        assert {Graph.module_path(n) for n in kept} == {"blocks.1.mlp.fc1"}
        assert not torch.equal(one(x), nothing(x))


def test_a_crippled_layer_is_the_worst(vit_int8):
    f, q, data, _ = vit_int8
    bad = q.clone()
    scale = bad.gm.get_buffer("blocks_1_mlp_fc1_weight_scale")
    scale.mul_(20.0)  # a mis-calibrated weight quantizer: that layer's output is 20x too large
    res = layer_sensitivity(f, bad, data, "top1", batch_size=N_EVAL)
    rows = {r["layer"]: r for r in res.rows}
    worst = rows.pop("blocks.1.mlp.fc1")
    assert worst["rank"] == 1 and worst["delta"] < -5
    assert all(worst["delta"] < r["delta"] for r in rows.values())
    assert all(worst["sqnr_db"] < r["sqnr_db"] for r in rows.values())
    assert res.quantized_accuracy < res.float_accuracy


def test_refuses_graphs_it_cannot_bypass(vit_int8, mnist_vit):
    f, q, data, _ = vit_int8
    with pytest.raises(CompressorError, match="no quantized layers"):
        quantized_layers(f, f)
    other = zoo.build("vit_mnist", depth=4, embed_dim=64, num_heads=4, mlp_ratio=2.0, patch_size=7,
                      attn_impl="manual").eval()  # same shapes, other weights: not the model that was quantized
    with pytest.raises(CompressorError, match="does not compute the float model"):
        layer_sensitivity(capture(other, mnist_vit[2][:2]), q, data, "top1", batch_size=N_EVAL, limit=32)


def test_cnn_with_folded_batchnorm():
    ckpt = torch.load(ROOT / "cnn_mnist.pt", weights_only=True)
    model = zoo.build(ckpt["arch"], **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    spec = Preprocess(**ckpt["preprocess"])
    test = open_source(ROOT / "calibration_data/mnist/test", spec)
    x, _ = next(test.batches(64))
    f = capture(model.eval(), x[:2])
    folded = f.clone()
    PASSES["reparam.fold_bn"]().run(folded, PassContext())  # as the int8-ptq recipe does; f keeps its BatchNorms
    assert f.count("batch_norm") > 0 and folded.count("batch_norm") == 0
    q_graph = folded.clone()
    PASSES["quant.int8_ptq"](PASSES["quant.int8_ptq"].Params(activation_observer="minmax")).run(
        q_graph, PassContext(calib=open_source(ROOT / "calibration_data/mnist/calib", spec)))
    res = layer_sensitivity(f, q_graph, test, "top1", batch_size=100, limit=100)
    weighted = [r for r in res.rows if r["kind"] != "activation"]
    assert len(weighted) == f.count("conv") + f.count("linear") == len(_weight_dqs(q_graph))
    # the residual adds' quantizers belong to no layer: one activation row each, named by its module
    assert len(res.rows) - len(weighted) == f.count("add") and {r["kind"] for r in res.rows} == {"conv", "linear",
                                                                                                  "activation"}
    layers = quantized_layers(f, q_graph)
    with torch.no_grad():
        torch.testing.assert_close(only_quantized(f, q_graph, [], layers)(x), f(x), rtol=1e-4, atol=1e-4)
        assert torch.equal(only_quantized(f, q_graph, [la.name for la in layers], layers)(x), q_graph(x))


def test_w4a4_repq_lowered_graph(mnist_vit):
    model, calib, x, y = mnist_vit
    f = capture(model, x[:2])
    q = f.clone()
    repq = PASSES["quant.repq"]
    repq(repq.Params(w_bits=4, a_bits=4)).run(q, PassContext(calib=calib))
    layers = quantized_layers(f, q)
    assert len(layers) == 4 * 6 + 2
    assert sum(la.layer_norm is not None for la in layers) == 8  # qkv and fc1 carry RepQ's folded LayerNorm
    assert {la.bits for la in layers} >= {"w4a4", "w4a8", "a4"}  # the image entering the patch embedding: 8 bits
    x = x[:64]
    with torch.no_grad():
        assert torch.equal(only_quantized(f, q, [la.name for la in layers], layers)(x), q(x))
        torch.testing.assert_close(only_quantized(f, q, [], layers)(x), f(x), rtol=1e-4, atol=1e-4)
    data = DataSource("digits", x, labels=y[:64].numpy())
    res = layer_sensitivity(f, q, data, "agreement", batch_size=64)
    assert res.float_accuracy == 100.0 and all(math.isfinite(r["sqnr_db"]) and r["sqnr_db"] > 0 for r in res.rows)
