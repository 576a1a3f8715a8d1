"""`quant.dopq`: DopQ-ViT's two changes to RepQ-ViT (methods.md §3), as a float simulation with the
same Q/DQ export as `quant.repq`.

MOSF — which layer-wise (Δ̃, z̃) the post-LayerNorm channels are folded onto:
- `median`: Δ̃ = median Δ_c, z̃ = median z_c (DopQ v2; the paper leaves z̃ open, we take the median
  too, rounded when `round_zero_point`).
- `mad` (default; our reading of v3's "MAD-guided" rule, whose exact form is not public): among
  the candidates (mean Δ, mean z) and (median Δ, median z) — plus both with z̃ rounded when z̃ may
  be fractional — take the one whose layer-wise quantization of the reparameterized activations
  has the smallest mean absolute error measured back in the LayerNorm's own units,
  mean |(Q̃(x') − x')·r|. Calibration data only, no extra inference cost.
- `mean`: RepQ-ViT's rule.

What we found: with an integer z̃ and per-output-channel weight quantizers, the choice of Δ̃ does
not change the quantized model at all. Scaling Δ̃ by c scales every r_c by 1/c and W' = W·r by
1/c, which a per-row weight quantizer undoes exactly, and the activation grid maps back onto the
per-channel grid (§1.5) for any Δ̃. The target matters only through a fractional z̃, where MOSF
picks the offset. `tests/test_dopq.py` checks the invariance.

TanQ — the post-softmax quantizer: `TanQuantizer` (our tan-companding formula, see
`quantizers.py`), θ searched per attention by the error of softmax·V.

DopQ-ViT also reconstructs; its details are unknown (§3) and this pass does not.
`quant.aphq` is the reconstruction method here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from compressor.passes.base import register_pass
from compressor.passes.quant.quantizers import fake_tan, fake_uniform, search_tan_theta
from compressor.passes.quant.repq import RepQ, RepQParams, reparam_factors


class DopQParams(RepQParams):
    target: Literal["mad", "median", "mean"] = "mad"
    softmax: Literal["tanq", "log_sqrt2", "uniform"] = "tanq"  # type: ignore[assignment]


@register_pass
class DopQ(RepQ):
    name = "quant.dopq"
    Params = DopQParams
    description = "DopQ-ViT PTQ simulation: MOSF layer-wise target for post-LN channels, TanQ post-softmax"

    def layerwise_target(self, d_c: torch.Tensor, z_c: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
        p = self.params
        stats = {"mean": (d_c.mean(), z_c.mean()), "median": (d_c.median(), z_c.median())}
        if p.target != "mad":
            d_t, z_t = stats[p.target]
            return float(d_t), float(z_t.round() if p.round_zero_point else z_t)
        candidates = {(float(d), float(z.round())) for d, z in stats.values()}
        if not p.round_zero_point:
            candidates |= {(float(d), float(z)) for d, z in stats.values()}
        return min(sorted(candidates), key=lambda t: mosf_error(x, d_c, z_c, *t, 2**p.a_bits - 1))

    def softmax_quantizer(self, a: torch.Tensor, v: torch.Tensor | None) -> tuple[Any, tuple, str]:
        if self.params.softmax != "tanq":
            return super().softmax_quantizer(a, v)
        if v is None:
            raise ValueError("TanQ searches its θ on softmax·V, but this softmax does not feed a matmul with V")
        q = search_tan_theta(a, v, self.params.a_bits)
        return fake_tan, (q.levels().float(),), f"TanQ θ={q.theta:.2f}"


def mosf_error(x: torch.Tensor, d_c: torch.Tensor, z_c: torch.Tensor, d_t: float, z_t: float, qmax: int) -> float:
    """Mean |error| of the layer-wise quantized x' = x/r − b, in x's units (the MAD rule's criterion)."""
    x = x.double().reshape(-1, x.shape[-1])
    r, b = reparam_factors(d_c, z_c, d_t, z_t)
    xr = x / r - b
    return float(((fake_uniform(xr, torch.tensor(d_t), torch.tensor(z_t), qmax) - xr) * r).abs().mean())
