import torch

from compressor.graph import capture
from compressor.passes import PASSES, PassContext
from compressor.passes.quant.dopq import mosf_error
from compressor.passes.quant.quantizers import UniformQuantizer


def _post_ln_like(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Activations with a few outlier channels (the reason for MOSF), and their per-channel quantizer."""
    gen = torch.Generator().manual_seed(seed)
    spread = torch.ones(32, dtype=torch.float64)
    spread[:3] = 40.0
    x = torch.randn(2000, 32, generator=gen, dtype=torch.float64) * spread + torch.randn(32, generator=gen)
    q = UniformQuantizer.percentile(x, 4, axis=1)
    return x, q.scale.double(), q.zero_point.double()


def test_with_an_integer_zero_point_the_target_scale_does_not_matter():
    """Every integer (Δ̃, z̃) maps the layer-wise grid back onto the per-channel grid (§1.5), so mean,
    median and anything else give the per-channel error exactly."""
    x, d_c, z_c = _post_ln_like()
    per_channel = float((UniformQuantizer(4, d_c, z_c, 1).fake(x) - x).abs().mean())
    for d_t, z_t in ((d_c.mean(), z_c.mean().round()), (d_c.median(), z_c.median()), (d_c.max() * 3, 2.0)):
        assert abs(mosf_error(x, d_c, z_c, float(d_t), float(z_t), 15) - per_channel) < 1e-7 * per_channel


def test_per_row_weight_quantization_is_blind_to_the_target_scale():
    """W' = W·r with r = Δ_c/Δ̃: scaling Δ̃ scales W' uniformly, which per-row ranges undo."""
    gen = torch.Generator().manual_seed(1)
    w, r = torch.randn(48, 32, generator=gen, dtype=torch.float64), torch.rand(32, generator=gen, dtype=torch.float64)
    a = UniformQuantizer.percentile(w * r, 4, axis=0).fake(w * r)
    b = UniformQuantizer.percentile(w * r / 7.3, 4, axis=0).fake(w * r / 7.3)
    torch.testing.assert_close(b * 7.3, a, rtol=1e-6, atol=1e-9)  # the range search runs in float32


def test_mad_rule_is_never_worse_than_mean_or_median():
    x, d_c, z_c = _post_ln_like(2)
    pass_ = PASSES["quant.dopq"](PASSES["quant.dopq"].Params(round_zero_point=False))
    chosen = mosf_error(x, d_c, z_c, *pass_.layerwise_target(d_c, z_c, x), 15)
    for d_t, z_t in ((d_c.mean(), z_c.mean()), (d_c.median(), z_c.median())):
        assert chosen <= mosf_error(x, d_c, z_c, float(d_t), float(z_t), 15) + 1e-15


def test_dopq_with_tanq_quantizes_the_mnist_vit_and_exports(mnist_vit, tmp_path):
    from exporters.onnx import OnnxExporter

    model, calib, x, y = mnist_vit
    g = capture(model, x[:2])
    ctx = PassContext(calib=calib)
    PASSES["quant.dopq"](PASSES["quant.dopq"].Params(w_bits=4, a_bits=4)).run(g, ctx)
    tanq = [a for a in ctx.log[-1].summary["activations"] if a["quantizer"].startswith("TanQ")]
    assert len(tanq) == 4
    sim = g(x)
    assert float((sim.argmax(1) == y).float().mean()) > 0.95  # measured 96.0 (float 97.0)
    logits = OnnxExporter().export(g, tmp_path / "m.onnx", "quantized").runner(2)(x[:300].numpy())
    assert (logits.argmax(1) == sim[:300].numpy().argmax(1)).all()
