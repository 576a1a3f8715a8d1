import torch

from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.quant.quantizers import UniformQuantizer, fake_uniform
from compressor.passes.quant.repq import reparameterize_post_ln


def test_post_ln_reparameterization_keeps_the_float_function(vit_tiny):
    x = torch.randn(4, 1, 28, 28)
    g = capture(vit_tiny, x[:2])
    ref = g(x)
    gen = torch.Generator().manual_seed(0)
    pairs = g.match("layer_norm", "linear")
    assert len(pairs) == 4  # norm1 → qkv and norm2 → fc1 in both blocks
    for ln, lin in pairs:
        d_c = torch.rand(64, generator=gen) * 5 + 0.01  # channel scales spread 500x, as post-LN outliers are
        z_c = torch.randint(0, 16, (64,), generator=gen).float()
        reparameterize_post_ln(g, ln, lin, d_c, z_c, float(d_c.mean()), float(z_c.mean()))  # fractional z̃
    g.recompile()
    out = g(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5


def test_with_a_rounded_zero_point_the_layerwise_grid_is_the_channelwise_grid():
    """§1.5 'why lossless': quantizing x' = x/r − b with (Δ̃, z̃) equals quantizing x per channel, mapped."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(500, 16, generator=gen).double() * torch.rand(16, generator=gen).double() * 10
    per = UniformQuantizer.percentile(x, 4, axis=1)
    d_c, z_c = per.scale.double(), per.zero_point.double()
    d_t, z_t = d_c.mean(), z_c.mean().round()
    r = d_c / d_t
    b = (-z_c * d_c) / r + z_t * d_t
    layerwise = fake_uniform(x / r - b, d_t, z_t, 15)
    torch.testing.assert_close(layerwise, per.fake(x) / r - b, rtol=1e-9, atol=1e-9)


def test_repq_beats_naive_minmax_at_w4a4_on_the_mnist_vit(mnist_vit):
    model, calib, x, y = mnist_vit
    acc = {}
    for name, kw in {"minmax": {"range": "minmax", "post_ln": "layerwise", "softmax": "uniform"}, "repq": {}}.items():
        g = capture(model, x[:2])
        ctx = PassContext(calib=calib)
        PASSES["quant.repq"](PASSES["quant.repq"].Params(w_bits=4, a_bits=4, **kw)).run(g, ctx)
        acc[name] = float((g(x).argmax(1) == y).float().mean() * 100)
        if name == "repq":
            s = ctx.log[-1].summary
            assert len(s["reparameterized"]) == 8 and s["weights"] == 18  # 16 block Linears, patch conv, head
            assert any(a["quantizer"].startswith("log√2") for a in s["activations"])
    assert acc["repq"] > 95.5 and acc["repq"] >= acc["minmax"] + 0.8  # measured 96.6 vs 95.2 (float 97.0)


def _ort_logits(g, x, tmp_path):
    from exporters.onnx import OnnxExporter

    art = OnnxExporter().export(g, tmp_path / "m.onnx", "quantized")
    return art.op_counts(), art.runner(2)(x.numpy())


def test_w4a4_graph_exports_as_qdq_and_onnx_runtime_matches_the_simulation(mnist_vit, tmp_path):
    model, calib, x, _ = mnist_vit
    g = capture(model, x[:2])
    ctx = PassContext(calib=calib)
    PASSES["quant.repq"](PASSES["quant.repq"].Params(w_bits=4, a_bits=4)).run(g, ctx)
    assert ctx.log[-1].summary["lowered"] == {"qdq": 48, "float": 0}  # 18 weights, 30 activations
    counts, logits = _ort_logits(g, x[:300], tmp_path)
    assert counts["DequantizeLinear"] == 48 and counts["QuantizeLinear"] == 30
    assert counts["Log"] == 4 and counts["Ceil"] == 4  # the log2-form post-softmax subgraph, one per block
    sim = g(x[:300]).numpy()
    assert float(abs(logits - sim).max()) < 1e-3 * float(abs(sim).max())
    assert (logits.argmax(1) == sim.argmax(1)).all()


def test_a_fractional_zero_point_stays_a_float_simulation(mnist_vit):
    model, calib, x, _ = mnist_vit
    g = capture(model, x[:2])
    ctx = PassContext(calib=calib)
    PASSES["quant.repq"](PASSES["quant.repq"].Params(w_bits=4, a_bits=4, round_zero_point=False)).run(g, ctx)
    lowered = ctx.log[-1].summary["lowered"]
    assert lowered["float"] >= 1 and lowered["qdq"] + lowered["float"] == 48
