"""`quant.repq`: RepQ-ViT low-bit PTQ, as a float simulation on the captured graph (methods.md §1).

- Weights of every Linear and Conv (head and patch embedding included): asymmetric uniform per
  output channel, range by RepQ's percentile-MSE search (§1.3), at `w_bits`.
- Activations, per tensor: the inputs of every Linear, both operands of q·kᵀ, and V, at
  `a_bits`; the image entering the patch embedding at 8 bits (§1.2).
- Post-LayerNorm activations (the inputs of qkv and fc1, found as LayerNorm → Linear): calibrated
  per channel, then reparameterized to one layer-wise (Δ̃, z̃) by folding r_c = Δ_c/Δ̃ and the
  offset b_c into the LayerNorm affine and the Linear's weight and bias (§1.5, exact in float).
  The weight quantizer of that Linear is fitted after the fold (§1.7b). `round_zero_point`
  rounds z̃ (APHQ-ViT; integer deployable); off is RepQ-ViT's fractional z̃.
- Post-softmax: log√2 (§1.4), scale by the percentile-MSE rule.

Calibration differs from RepQ-ViT in one documented way: every quantizer is fitted on the float
model's activations (APHQ-ViT's order), from one pass over `calib_images` images, rather than
sequentially inside a quantized forward. `range: minmax`, `post_ln: layerwise` and
`softmax: uniform` turn the method off piece by piece, which gives the naive baselines of the
comparison table. The quantizers are graph nodes calling float functions (`fake_uniform`,
`fake_log`); no integer export exists yet.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import fx, nn

from compressor.graph.graph import Graph, is_kind, layer_norm_args
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.calibrate import calibrate, insert_observers, observer_of, remove_observer
from compressor.passes.quant.quantizers import (
    LogSqrt2Quantizer,
    UniformQuantizer,
    fake_log,
    fake_uniform,
)

aten = torch.ops.aten


class RepQParams(PassParams):
    w_bits: int = Field(4, ge=2, le=8)
    a_bits: int = Field(4, ge=2, le=8)
    input_bits: int = Field(8, ge=2, le=8, description="bits of the image entering the patch embedding")
    calib_images: int = Field(32, ge=1, description="RepQ-ViT calibrates on one batch of 32 images")
    range: Literal["percentile", "minmax"] = "percentile"
    post_ln: Literal["reparam", "layerwise"] = "reparam"
    softmax: Literal["log_sqrt2", "uniform"] = "log_sqrt2"
    round_zero_point: bool = Field(False, description="round the reparameterized z̃ (APHQ); RepQ keeps it fractional")


class TensorStore(nn.Module):
    """Keeps every calibration tensor it sees (a few dozen images: small enough to hold)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x

    def value(self) -> torch.Tensor:
        return torch.cat(self.seen)


@register_pass
class RepQ(Pass):
    name = "quant.repq"
    Params = RepQParams
    needs_calibration = True
    description = "RepQ-ViT PTQ simulation: post-LN scale reparameterization, log√2 post-softmax, percentile ranges"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        p = self.params
        sites = _activation_sites(graph)
        acts = self._collect(graph, ctx, sites)
        post_ln = {lin: ln for ln, lin in graph.match("layer_norm", "linear")} if p.post_ln == "reparam" else {}
        report = {"reparameterized": [], "activations": [], "weights": 0}
        for (node, i), x in acts.items():
            layerwise = None
            if i == 0 and node in post_ln:
                x, layerwise = self._reparameterize(graph, post_ln[node], node, x, report)
            self._quantize_input(graph, node, i, x, layerwise, report)
        report["weights"] = self._quantize_weights(graph)
        graph.drop_unused_attrs()
        graph.recompile()
        return report

    def _collect(self, graph: Graph, ctx: PassContext, sites: list[tuple[fx.Node, int]]) -> dict:
        observed = insert_observers(graph, [(n, [i]) for n, i in sites], TensorStore)
        limit = ctx.calib_limit
        ctx.calib_limit = min(limit or self.params.calib_images, self.params.calib_images)
        try:
            calibrate(graph, ctx, "collecting activations")
        finally:
            ctx.calib_limit = limit
        values = {(n, i): observer_of(graph, n.args[i]).value() for n, i in sites}
        for obs in observed.values():
            remove_observer(graph, obs)
        return values

    def _reparameterize(self, graph: Graph, ln: fx.Node, lin: fx.Node, x: torch.Tensor,
                        report: dict) -> tuple[torch.Tensor, tuple[float, float]]:
        """Calibrate the LN output per channel and fold it to layer-wise; returns x' = x/r − b and (Δ̃, z̃)."""
        per = UniformQuantizer.percentile(x, self.params.a_bits, axis=x.dim() - 1)
        d_t, z_t, r, b = reparameterize_post_ln(graph, ln, lin, per.scale, per.zero_point,
                                                self.params.round_zero_point)
        report["reparameterized"].append({"layer_norm": graph.module_path(ln), "linear": graph.module_path(lin),
                                          "scale_spread": float(r.max() / r.min())})
        return (x.double() / r - b).float(), (d_t, z_t)

    def _fit_uniform(self, x: torch.Tensor, bits: int, axis: int | None = None) -> UniformQuantizer:
        fit = UniformQuantizer.percentile if self.params.range == "percentile" else UniformQuantizer.minmax
        return fit(x, bits, axis)

    def _quantize_input(self, graph: Graph, node: fx.Node, i: int, x: torch.Tensor,
                        layerwise: tuple[float, float] | None, report: dict) -> None:
        """Route input `i` of `node` through a fake quantizer; `layerwise` is a reparameterized (Δ̃, z̃)."""
        p = self.params
        src = node.args[i]
        if is_kind(src, "softmax") and p.softmax == "log_sqrt2":
            q = LogSqrt2Quantizer.calibrate(x, p.a_bits)
            fn, args, what = fake_log, (torch.tensor(q.scale), p.a_bits, 0.5), f"log√2 s={q.scale:.4g}"
        else:
            bits = p.input_bits if is_kind(node, "conv") and i == 0 else p.a_bits
            if layerwise is not None:
                scale, zero = torch.tensor(layerwise[0]), torch.tensor(layerwise[1])
            else:
                q = self._fit_uniform(x, bits)
                scale, zero = q.scale, q.zero_point
            fn, args, what = fake_uniform, (scale, zero, 2**bits - 1), f"uniform {bits}b Δ={float(scale):.4g}"
        path = graph.module_path(node) or node.name
        consts = [graph.add_buffer(f"{path}.aq{i}_{k}", a, before=node) if isinstance(a, torch.Tensor) else a
                  for k, a in enumerate(args)]
        node.update_arg(i, graph.call(fn, (src, *consts), before=node, like=node))
        report["activations"].append({"node": f"{path}[{i}]", "quantizer": what})

    def _quantize_weights(self, graph: Graph) -> int:
        p, count = self.params, 0
        for node in graph.nodes:
            if (is_kind(node, "linear") or is_kind(node, "conv")) and graph.is_constant(node.args[1]):
                w = graph.attr(node.args[1]).detach()
                wq = self._fit_uniform(w, p.w_bits, axis=0).fake(w)
                node.update_arg(1, graph.add_buffer(f"{graph.module_path(node)}.weight_w{p.w_bits}", wq, before=node))
                count += 1
        return count


def _activation_sites(graph: Graph) -> list[tuple[fx.Node, int]]:
    """(consumer, argument index) of every quantized activation: Linear/Conv inputs, matmul operands."""
    sites = []
    for node in graph.nodes:
        if is_kind(node, "linear") or is_kind(node, "conv"):
            sites.append((node, 0))
        elif is_kind(node, "matmul"):
            sites += [(node, 0), (node, 1)]
    return sites


def reparameterize_post_ln(graph: Graph, ln: fx.Node, lin: fx.Node, d_c: torch.Tensor, z_c: torch.Tensor,
                           round_zero_point: bool) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """§1.5 on the graph: with per-channel (Δ_c, z_c) of the LN output, the layer-wise target is
    Δ̃ = mean Δ_c, z̃ = mean z_c (rounded if asked); r = Δ_c/Δ̃, b = m_c/r − m̃ with m = −zΔ.
    LN: γ' = γ/r, β' = β/r − b; Linear: W' = W·r (input columns), bias' = bias + W'b. The float
    function is unchanged. Returns (Δ̃, z̃, r, b)."""
    d_c, z_c = d_c.double(), z_c.double()
    d_t, z_t = d_c.mean(), z_c.mean()
    if round_zero_point:
        z_t = z_t.round()
    r = d_c / d_t
    b = (-z_c * d_c) / r + z_t * d_t
    c = len(d_c)
    gamma, beta = (graph.attr(a).double() if isinstance(a, fx.Node) else torch.full((c,), fill, dtype=torch.float64)
                   for a, fill in zip(layer_norm_args(ln)[2:4], (1.0, 0.0), strict=True))
    w = graph.attr(lin.args[1]).double()
    bias = graph.attr(lin.args[2]).double() if len(lin.args) > 2 and lin.args[2] is not None else 0.0
    w_new = w * r
    path = graph.module_path(lin)
    ln.args = (*ln.args[:2], graph.add_buffer(f"{path}.ln_weight_repq", (gamma / r).float(), before=ln),
               graph.add_buffer(f"{path}.ln_bias_repq", (beta / r - b).float(), before=ln), *ln.args[4:])
    lin.update_arg(1, graph.add_buffer(f"{path}.weight_repq", w_new.float(), before=lin))
    b_node = graph.add_buffer(f"{path}.bias_repq", (bias + w_new @ b).float(), before=lin)
    lin.args = (*lin.args[:2], b_node, *lin.args[3:])
    return float(d_t), float(z_t), r, b
