import numpy as np
import pytest
import torch

from compressor.passes.quant.observers import (
    HistogramObserver,
    MinMaxObserver,
    affine_qparams,
    symmetric_weight_qparams,
)


def test_histogram_range_doubling_is_exact():
    """Merging bins on growth gives the same counts as one histogram over the final range."""
    torch.manual_seed(0)
    batches = [torch.randn(1000) * s for s in (0.5, 1.0, 3.0, 9.0)]
    obs = HistogramObserver(bins=256)
    for b in batches:
        obs(b)
    direct = torch.histc(torch.cat(batches), 256, -obs.radius, obs.radius).double()
    # values on a bin edge can land on either side depending on the range they were binned in
    assert torch.abs(obs.hist - direct).sum() <= 4
    assert obs.hist.sum() == 4000
    assert obs.lo == pytest.approx(float(torch.cat(batches).min()))


def test_percentile_clips_outliers():
    x = torch.cat([torch.rand(100_000), torch.tensor([50.0])])
    obs = HistogramObserver(bins=4096)
    obs(x)
    lo, hi = obs.percentile_range(99.9)
    assert 0.95 < hi < 1.1 and lo >= 0
    assert MinMaxObserver()(x) is x


def test_mse_range_beats_minmax_error_with_outliers():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(200_000), torch.tensor([40.0, -35.0])])
    obs = HistogramObserver()
    obs(x)
    lo, hi = obs.mse_range(256, symmetric=False)
    assert hi < 40 and lo > -35

    def err(a, b):
        s, z = affine_qparams(a, b, torch.uint8)
        q = torch.clamp(torch.round(x / s) + z.int(), 0, 255)
        return float(((q - z.int()) * s - x).pow(2).mean())

    assert err(lo, hi) < err(obs.lo, obs.hi)


@pytest.mark.parametrize("lo, hi", [(-1.3, 2.7), (0.2, 5.0), (-4.0, -0.5)])
def test_affine_qparams_represent_zero_exactly(lo, hi):
    s, z = affine_qparams(lo, hi, torch.uint8)
    assert z.dtype == torch.uint8
    assert float((torch.round(torch.tensor(0.0) / s) + z.int() - z.int()) * s) == 0.0
    s8, z8 = affine_qparams(lo, hi, torch.int8)
    assert int(z8) == 0 and float(s8) == pytest.approx(max(abs(lo), abs(hi)) / 127)


def test_weight_scales_per_channel_and_mse_not_worse():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    w[3, 5] = 25.0
    s = symmetric_weight_qparams(w, axis=0, qmax=127)
    np.testing.assert_allclose(s.numpy(), (w.abs().amax(1) / 127).numpy())
    s_mse = symmetric_weight_qparams(w, axis=0, qmax=127, mse=True)

    def err(scale):
        return ((torch.clamp(torch.round(w / scale[:, None]), -127, 127) * scale[:, None] - w) ** 2).mean(1)

    assert torch.all(err(s_mse) <= err(s) + 1e-12)
