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
comparison table.

While passes work, quantizers are graph nodes calling float functions (`fake_uniform` on weights
and activations; every quantizer node is annotated `lowbit` with its role: weight, act, softmax),
which reconstruction (`quant.aphq`) can train.
`lower_to_qdq` then turns them into what ONNX runs as Q/DQ: weights become uint8 codes with a
per-channel DequantizeLinear, activations a uint8 Q/DQ pair clipped to the b-bit grid. An
activation whose zero point is fractional (RepQ's un-rounded z̃) has no Q/DQ form and stays a
float simulation; the report counts both. Post-softmax log√2 is emitted in its inference form
(`log_sqrt2_as_log2`, §1.6), an explicit float subgraph in ONNX.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

import torch
from pydantic import Field
from torch import fx, nn

from compressor.errors import CompressorError
from compressor.graph.graph import Graph, is_kind, layer_norm_args
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.calibrate import calibrate, insert_observers, observer_of, remove_observer
from compressor.passes.quant import ops
from compressor.passes.quant.quantizers import (
    LogSqrt2Quantizer,
    UniformQuantizer,
    fake_uniform,
    log_sqrt2_as_log2,
    uniform_codes,
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
    round_zero_point: bool = Field(
        True, description="round the reparameterized z̃ (APHQ; needed for Q/DQ export); false = RepQ-ViT's fractional z̃")


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
        report = self.quantize(graph, ctx)
        report["lowered"] = lower_to_qdq(graph)
        graph.drop_unused_attrs()
        graph.recompile()
        return report

    def quantize(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        """Calibrate and insert every quantizer in its trainable float form (see the module docstring)."""
        p = self.params
        if not graph.find("layer_norm") and not graph.find("softmax"):
            raise CompressorError(f"{self.name} is a ViT method (RepQ-ViT's scale reparameterization of post-LayerNorm "
                                  "activations and log√2 post-softmax quantizers), and this model has neither a "
                                  "LayerNorm nor a softmax. For a CNN use int8-ptq.")
        sites = _activation_sites(graph)
        acts = self._collect(graph, ctx, sites)
        post_ln = {lin: ln for ln, lin in graph.match("layer_norm", "linear")} if p.post_ln == "reparam" else {}
        report: dict[str, Any] = {"reparameterized": [], "activations": [], "weights": 0}
        for (node, i), x in acts.items():
            layerwise = None
            if i == 0 and node in post_ln:
                x, layerwise = self._reparameterize(graph, post_ln[node], node, x, report)
            self._quantize_input(graph, node, i, x, acts.get((node, 1)), layerwise, report)
        report["weights"] = self._quantize_weights(graph)
        graph.recompile()
        return report

    def _collect(self, graph: Graph, ctx: PassContext, sites: list[tuple[fx.Node, int]]) -> dict:
        observed = insert_observers(graph, [(n, [i]) for n, i in sites], TensorStore)
        with ctx.limited(self.params.calib_images):
            calibrate(graph, ctx, "collecting activations")
        values = {(n, i): observer_of(graph, n.args[i]).value() for n, i in sites}
        for obs in observed.values():
            remove_observer(graph, obs)
        return values

    def _reparameterize(self, graph: Graph, ln: fx.Node, lin: fx.Node, x: torch.Tensor,
                        report: dict) -> tuple[torch.Tensor, tuple[float, float]]:
        """Calibrate the LN output per channel and fold it to layer-wise; returns x' = x/r − b and (Δ̃, z̃)."""
        per = UniformQuantizer.percentile(x, self.params.a_bits, axis=x.dim() - 1)
        d_t, z_t = self.layerwise_target(per.scale.double(), per.zero_point.double(), x)
        r, b = reparameterize_post_ln(graph, ln, lin, per.scale, per.zero_point, d_t, z_t)
        report["reparameterized"].append({"layer_norm": graph.module_path(ln), "linear": graph.module_path(lin),
                                          "scale_spread": float(r.max() / r.min()), "target": [d_t, z_t]})
        return (x.double() / r - b).float(), (d_t, z_t)

    def layerwise_target(self, d_c: torch.Tensor, z_c: torch.Tensor, x: torch.Tensor) -> tuple[float, float]:
        """RepQ-ViT's (Δ̃, z̃): the means of the channel parameters, z̃ rounded if asked (§1.5)."""
        z_t = z_c.mean()
        return float(d_c.mean()), float(z_t.round() if self.params.round_zero_point else z_t)

    def softmax_quantizer(self, a: torch.Tensor, v: torch.Tensor | None) -> tuple[Any, tuple, str]:
        """(graph function, its constant arguments, description) for the post-softmax input of A·V."""
        q = LogSqrt2Quantizer.calibrate(a, self.params.a_bits)
        return log_sqrt2_as_log2, (torch.tensor(q.scale), q.bits), f"log√2 s={q.scale:.4g}"

    def _fit_uniform(self, x: torch.Tensor, bits: int, axis: int | None = None) -> UniformQuantizer:
        fit = UniformQuantizer.percentile if self.params.range == "percentile" else UniformQuantizer.minmax
        return fit(x, bits, axis)

    def _quantize_input(self, graph: Graph, node: fx.Node, i: int, x: torch.Tensor, other: torch.Tensor | None,
                        layerwise: tuple[float, float] | None, report: dict) -> None:
        """Route input `i` of `node` through a quantizer; `layerwise` is a reparameterized (Δ̃, z̃)
        and `other` the node's second operand (V, when input 0 is an attention map)."""
        p = self.params
        src = node.args[i]
        if is_kind(src, "softmax") and p.softmax != "uniform":
            (fn, args, what), role = self.softmax_quantizer(x, other), "softmax"
        else:
            bits = p.input_bits if is_kind(node, "conv") and i == 0 else p.a_bits
            if layerwise is not None:
                scale, zero = torch.tensor(layerwise[0]), torch.tensor(layerwise[1])
            else:
                q = self._fit_uniform(x, bits)
                scale, zero = q.scale, q.zero_point
            fn, args, role = fake_uniform, (scale, zero, 2**bits - 1), "act"
            what = f"uniform {bits}b Δ={float(scale):.4g}"
        path = graph.module_path(node) or node.name
        qnode = self._insert(graph, fn, src, args, f"{path}.aq{i}", node)
        graph.annotate(qnode, "lowbit", role)
        node.update_arg(i, qnode)
        report["activations"].append({"node": f"{path}[{i}]", "quantizer": what})

    @staticmethod
    def _insert(graph: Graph, fn: Any, src: fx.Node, args: tuple, name: str, before: fx.Node) -> fx.Node:
        consts = [graph.add_buffer(f"{name}_{k}", a, before=before) if isinstance(a, torch.Tensor) else a
                  for k, a in enumerate(args)]
        return graph.call(fn, (src, *consts), before=before, like=before)

    def _quantize_weights(self, graph: Graph) -> int:
        p, count = self.params, 0
        for node in graph.nodes:
            if (is_kind(node, "linear") or is_kind(node, "conv")) and graph.is_constant(node.args[1]):
                w = graph.attr(node.args[1]).detach()
                q = self._fit_uniform(w, p.w_bits, axis=0)
                shape = [-1] + [1] * (w.dim() - 1)
                args = (q.scale.reshape(shape), q.zero_point.reshape(shape), q.qmax)
                qnode = self._insert(graph, fake_uniform, node.args[1], args, f"{graph.module_path(node)}.wq", node)
                graph.annotate(qnode, "lowbit", "weight")
                node.update_arg(1, qnode)
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


def reparam_factors(d_c: torch.Tensor, z_c: torch.Tensor, d_t: float, z_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """§1.5's per-channel (r, b): x' = x/r − b puts channel c's grid (Δ_c, z_c) onto (Δ̃, z̃)."""
    r = d_c / d_t
    return r, (-z_c * d_c) / r + z_t * d_t


def reparameterize_post_ln(graph: Graph, ln: fx.Node, lin: fx.Node, d_c: torch.Tensor, z_c: torch.Tensor,
                           d_t: float, z_t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """§1.5 on the graph: with per-channel (Δ_c, z_c) of the LN output and the layer-wise target
    (Δ̃, z̃): r = Δ_c/Δ̃, b = m_c/r − m̃ with m = −zΔ. LN: γ' = γ/r, β' = β/r − b; Linear: W' = W·r
    (input columns), bias' = bias + W'b. The float function is unchanged. Returns (r, b)."""
    d_c, z_c = d_c.double(), z_c.double()
    r, b = reparam_factors(d_c, z_c, d_t, z_t)
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
    return r, b


def lower_to_qdq(graph: Graph) -> dict[str, int]:
    """Turn the `lowbit` fake quantizers into their ONNX Q/DQ form (module docstring). A zero point
    that is fractional or outside uint8 keeps the float form. Returns how many went each way."""
    counts = {"qdq": 0, "float": 0}
    bits = {role: Counter(round(math.log2(n.args[3] + 1)) for n, r in graph.annotated("lowbit") if r == role)
            for role in ("weight", "act")}  # the usual width of each (the image input keeps 8 bits)
    graph.gm.meta[ops.PRECISION_KEY] = "w{}a{}".format(*(b.most_common(1)[0][0] if b else 32 for b in bits.values()))
    for node, role in list(graph.annotated("lowbit")):
        if role == "softmax":  # log√2/TanQ: explicit float subgraphs
            continue
        x, s, z, qmax = node.args
        scale, zero = graph.attr(s), graph.attr(z)
        if not bool(((zero == zero.round()) & (zero >= 0) & (zero <= 255)).all()):
            counts["float"] += 1
            continue
        zero_u8 = graph.add_buffer(f"{z.target}_u8", zero.flatten().to(torch.uint8) if role == "weight"
                                   else zero.to(torch.uint8), before=node)
        if role == "weight":
            codes = uniform_codes(graph.attr(x), scale, zero, qmax).to(torch.uint8)
            args = (graph.add_buffer(f"{x.target}_codes", codes, before=node),
                    graph.add_buffer(f"{s.target}_axis0", scale.flatten(), before=node), zero_u8, 0)
            new = graph.call(ops.DEQUANTIZE, args, before=node, like=node)
        else:
            new = graph.call(ops.QUANTIZE_DEQUANTIZE, (x, s, zero_u8, qmax), before=node, like=node)
        node.replace_all_uses_with(new)
        graph.gm.graph.erase_node(node)
        counts["qdq"] += 1
    return counts
