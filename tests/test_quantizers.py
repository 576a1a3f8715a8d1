import math

import torch

from compressor.passes.quant.quantizers import (
    Log2Quantizer,
    LogSqrt2Quantizer,
    TanQuantizer,
    UniformQuantizer,
    attention_output_error,
    quantile,
    search_tan_theta,
)


def _heavy_tailed(n: int = 20000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    x[:3] *= 40  # a few outliers, as in post-LayerNorm ViT activations
    return x


def test_percentile_search_picks_a_candidate_and_beats_minmax_on_outliers():
    x = _heavy_tailed()
    mm, pc = UniformQuantizer.minmax(x, 4), UniformQuantizer.percentile(x, 4)
    err = lambda q: float((q.fake(x) - x).pow(2).mean())  # noqa: E731
    assert err(pc) < 0.5 * err(mm)
    spreads = {round(float(quantile(x.reshape(1, -1), p) - quantile(x.reshape(1, -1), 1 - p)), 4)
               for p in (0.999, 0.9999, 0.99999)}
    assert round(float(pc.scale) * 15, 4) in spreads  # the range is one of RepQ's three candidates


def test_per_channel_ranges_follow_each_channel_and_codes_stay_in_range():
    x = torch.randn(4, 100, 8) * torch.tensor([0.1, 1, 10, 100, 1, 1, 1, 1])
    q = UniformQuantizer.omse(x, 6, axis=2)
    assert q.scale.shape == (8,)
    assert q.scale[3] > 100 * q.scale[0]
    codes = q.codes(x)
    assert codes.min() >= 0 and codes.max() <= 63 and torch.equal(codes, codes.round())
    assert float((q.fake(x) - x).abs().max(dim=0).values.max(dim=0).values[0]) < 0.1 * 4 / 63 * 2


def test_quantile_beyond_torch_limits_matches_interpolation(monkeypatch):
    from compressor.passes.quant import quantizers

    x = torch.rand(3, 5000, dtype=torch.float64)
    expect = torch.quantile(x, 0.999, dim=-1)
    monkeypatch.setattr(quantizers, "KTHVALUE_LIMIT", 100)  # force the kthvalue path big tensors take
    torch.testing.assert_close(quantile(x, 0.999), expect)


def test_log_sqrt2_to_log2_form_is_exact():
    """§1.6: the codes split exactly into a shift k and a parity (q = 2k − odd), and s·2^(−k)·(√2 if odd)
    is the calibration form s·2^(−q/2) to the last bit of float64 (√2 and exp2 round separately)."""
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(torch.randn(64, 197, generator=g) * 4, -1).double()
    a[0, :5] = torch.tensor([0.0, 1.0, 1e-30, 0.5, 0.25], dtype=torch.float64)
    q = LogSqrt2Quantizer.calibrate(a, 4)
    k, odd, alive = q.log2_form(a)
    codes, _ = q.codes(a)
    assert torch.equal(2 * k - odd.double(), codes)
    inference = torch.where(alive, q.scale * torch.exp2(-k) * (1 + (math.sqrt(2) - 1) * odd.double()), 0.0)
    torch.testing.assert_close(inference, q.fake(a), rtol=4e-16, atol=0)
    assert q.fake(a)[0, 0] == 0 and q.fake(a)[0, 2] == 0  # zero and underflow flush to 0


def test_log2_levels_are_powers_of_two_of_the_scale():
    q = Log2Quantizer(3, 0.5)
    out = q.fake(torch.tensor([0.5, 0.26, 0.1, 0.01, 0.9]))
    assert out.tolist() == [0.5, 0.25, 0.125, 2**-7, 0.5]


def test_tanq_is_uniform_at_small_theta_and_dense_at_both_ends_at_large_theta():
    uniform = TanQuantizer(3, 1e-4).levels()
    assert torch.allclose(uniform, torch.linspace(0, 1, 8, dtype=torch.float64), atol=1e-6)
    lv = TanQuantizer(3, 1.3).levels()
    gaps = lv[1:] - lv[:-1]
    assert lv[0] == 0 and abs(float(lv[-1]) - 1) < 1e-12
    assert gaps[0] < gaps[3] and gaps[-1] < gaps[3]  # dense near 0 and near 1
    x = torch.rand(1000, dtype=torch.float64)
    assert ((TanQuantizer(3, 1.3).fake(x) - x).abs() <= gaps.max() / 2 + 1e-12).all()


def test_theta_search_minimises_the_attention_output_error():
    g = torch.Generator().manual_seed(0)
    attn = torch.softmax(torch.randn(8, 17, 17, generator=g) * 3, -1)
    v = torch.randn(8, 17, 16, generator=g)
    best = search_tan_theta(attn, v, 3)
    errors = [attention_output_error(TanQuantizer(3, t).fake, attn, v) for t in (0.05, 0.5, 1.0, 1.5)]
    assert attention_output_error(best.fake, attn, v) <= min(errors) + 1e-12


def test_the_graph_log2_form_gives_the_calibration_codes_and_values():
    from compressor.passes.quant.quantizers import fake_log, log_sqrt2_as_log2

    g = torch.Generator().manual_seed(1)
    a = torch.softmax(torch.randn(32, 64, generator=g) * 5, -1)
    a[0, :3] = torch.tensor([0.0, 1.0, 1e-30])
    s = torch.tensor(0.9)
    for bits in (3, 4):
        ref, got = fake_log(a, s, bits, 0.5), log_sqrt2_as_log2(a, s, bits)
        torch.testing.assert_close(got, ref, rtol=2.5e-7, atol=0)  # √2 and exp2 round separately: ≤ 1 ulp
        assert torch.equal(got == 0, ref == 0)
