"""`quant.aphq`: APHQ-ViT (methods.md §4): MLP reconstruction, RepQ calibration, then block-wise
reconstruction under the average-perturbation-Hessian loss. Exports like `quant.repq`.

The order is the released code's: (1) every Linear → GELU → Linear MLP gets ReLU and is refit to
the float model's GELU output under the APH-weighted loss with a clamped branch (§4.4);
(2) `quant.repq`'s calibration, with the rounded z̃ APHQ uses; (3) each unit of the graph
(`reconstruct.partition_units`: patch embedding, each block, the head), in order, learns
AdaRound weight rounding and its activation scales with QDrop (p = 0.5) from the float model's
block output, weighted by the APH H̄ of that output (§4.5–4.6). Then hard rounding is written
into the weights and everything lowers to Q/DQ.

Where we differ, on purpose:
- Calibration is RepQ's percentile search (`quant.repq`), not APHQ's quantile grid search (§4.3).
- H̄ is computed in float64 (finite differences at ε = 1e-6 are noise in float32), and by default
  along random signs instead of APHQ's all-ones direction, which a pre-LN ViT's next LayerNorm
  annihilates (see `reconstruct.average_perturbation_hessian`; `aph_direction: ones` restores it).
- Iterations, images and learning rates are parameters with the paper's defaults; `fast: true`
  (CLI `--fast`) swaps in the `FAST` preset so a CPU run takes minutes. It needs a higher MLP
  learning rate because it has 20x fewer steps.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import fx

from compressor.graph.graph import Graph
from compressor.passes.base import PassContext, register_pass
from compressor.passes.quant.quantizers import quantile
from compressor.passes.quant.reconstruct import (
    Unit,
    adaround_fake,
    adaround_init,
    adaround_weight,
    average_perturbation_hessian,
    float_overrides,
    full_run,
    lsq_fake,
    partition_units,
    qdrop,
    quantizers,
    rounding_schedule,
    run_nodes,
    run_unit,
    train,
)
from compressor.passes.quant.repq import RepQ, RepQParams, lower_to_qdq

aten = torch.ops.aten
PAPER = {"iters": 20000, "mlp_iters": 20000, "recon_images": 1024, "mlp_lr": 4e-5}
FAST = {"iters": 1000, "mlp_iters": 1000, "recon_images": 256, "mlp_lr": 1e-3}


class APHQParams(RepQParams):
    calib_images: int = Field(128, ge=1, description="images for the quantizer calibration (APHQ: 128)")
    fast: bool = Field(False, description="CPU preset: the FAST iteration counts and images instead of the paper's")
    iters: int | None = Field(None, ge=1, description="block reconstruction steps per unit (paper 20000)")
    recon_images: int | None = Field(None, ge=1, description="images for reconstruction and H̄ (paper 1024)")
    batch_size: int = Field(32, ge=1)
    lr_alpha: float = Field(1e-3, gt=0, description="Adam lr of the AdaRound variables")
    lr_scale: float = Field(4e-5, gt=0, description="Adam lr of the activation scales (cosine to 0)")
    drop_prob: float = Field(0.5, ge=0, le=1, description="QDrop: probability an element is quantized")
    round_lambda: float = Field(0.01, ge=0)
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = Field(0.2, ge=0, lt=1, description="fraction of steps without the rounding loss")
    hessian: Literal["aph", "mse"] = Field("aph", description="mse = plain QDrop loss (the ablation baseline)")
    aph_direction: Literal["rademacher", "ones"] = Field(
        "rademacher", description="perturbation of H̄: APHQ's all-ones (H·1, zero behind a LayerNorm) or random signs")
    mlp_reconstruction: bool = True
    mlp_iters: int | None = Field(None, ge=0, description="MLP reconstruction steps per MLP (paper 20000)")
    mlp_lr: float | None = Field(None, gt=0, description="paper 4e-5")
    mlp_quantile: float | None = Field(None, gt=0, lt=1, description="ReLU clamp quantile; 0.99 at 3 bits else 0.98")
    mlp_alpha: float = Field(2.0, ge=0, description="weight of the clamped branch in the MLP loss")

    def setting(self, key: str) -> Any:
        """A value given explicitly, else the preset's (FAST or PAPER)."""
        value = getattr(self, key)
        return value if value is not None else (FAST if self.fast else PAPER)[key]


@register_pass
class APHQ(RepQ):
    name = "quant.aphq"
    Params = APHQParams
    description = "APHQ-ViT: GELU→ReLU MLP reconstruction + AdaRound/QDrop block reconstruction under the APH loss"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        p = self.params
        images = _images(ctx, p.setting("recon_images"))
        report: dict[str, Any] = {"recon_images": len(images), "iters": p.setting("iters")}
        if p.mlp_reconstruction:
            report["mlp_reconstruction"] = self._reconstruct_mlps(graph, ctx, images)
        report.update(self.quantize(graph, ctx))
        report["blocks"] = self._reconstruct_units(graph, ctx, images)
        report["lowered"] = lower_to_qdq(graph)
        graph.drop_unused_attrs()
        graph.recompile()
        return report

    # -- MLP reconstruction (§4.4) ----------------------------------------------------------
    def _reconstruct_mlps(self, graph: Graph, ctx: PassContext, images: torch.Tensor) -> list[dict[str, Any]]:
        mlps = graph.match("linear", "gelu", "linear")
        cached = _cache(graph, images, [n for fc1, gelu, fc2 in mlps for n in (fc1.args[0], gelu, fc2)])
        hessians = [_unit_rms(self._aph(graph, fc2, images)) for _, _, fc2 in mlps]
        out = []
        for (fc1, gelu, fc2), h in zip(mlps, hessians, strict=True):
            x, g, o = cached[fc1.args[0]], cached[gelu], cached[fc2]
            out.append({"fc1": graph.module_path(fc1), **self._refit_mlp(graph, ctx, fc1, fc2, x, g, o, h)})
            gelu.target = aten.relu.default
        graph.recompile()
        return out

    def _refit_mlp(self, graph: Graph, ctx: PassContext, fc1: fx.Node, fc2: fx.Node, x: torch.Tensor,
                   g: torch.Tensor, o: torch.Tensor, h: torch.Tensor) -> dict[str, float]:
        """fc1/fc2 trained so fc2(ReLU(fc1 x)) and its clamped twin match the GELU output."""
        p = self.params
        q = p.mlp_quantile or (0.99 if p.a_bits <= 3 else 0.98)
        upper = float(quantile(g[g > 0].reshape(1, -1).float(), q))
        tensors = [graph.attr(a) for a in (fc1.args[1], fc1.args[2], fc2.args[1], fc2.args[2])]
        w1, b1, w2, b2 = params = [t.detach().clone().requires_grad_() for t in tensors]

        def loss(idx: torch.Tensor) -> torch.Tensor:
            hidden = F.relu(F.linear(x[idx], w1, b1))
            direct = F.linear(hidden, w2, b2)
            clamped = F.linear(hidden.clamp(max=upper), w2, b2)
            err = [((y - o[idx]).pow(2) * h).sum(1).mean() / 10 for y in (direct, clamped)]
            return err[0] + p.mlp_alpha * err[1]

        steps = p.setting("mlp_iters")
        first = train(loss, [(params, p.setting("mlp_lr"), True)], len(x), p.batch_size, steps, ctx,
                      f"MLP {graph.module_path(fc1)}")
        with torch.no_grad():
            final = float(loss(torch.arange(len(x))))
            for t, new in zip(tensors, params, strict=True):
                t.copy_(new)
        return {"loss_start": first, "loss_end": final, "relu_clamp": upper}

    # -- block reconstruction (§4.5–4.6) ----------------------------------------------------
    def _reconstruct_units(self, graph: Graph, ctx: PassContext, images: torch.Tensor) -> list[dict[str, Any]]:
        units = partition_units(graph)
        fp = float_overrides(graph)
        q_in, fp_in = images, images
        out = []
        for k, unit in enumerate(units):
            fp_out = run_unit(graph, unit, fp_in, fp)
            last = k == len(units) - 1
            aph = not last and self.params.hessian == "aph"
            h = _unit_rms(self._aph(graph, unit.output, images)) if aph else None
            out.append({"unit": unit.name, **self._reconstruct_unit(graph, ctx, unit, q_in, fp_in, fp_out, h, last)})
            q_in, fp_in = run_unit(graph, unit, q_in), fp_out
        return out

    def _aph(self, graph: Graph, node: fx.Node, images: torch.Tensor) -> torch.Tensor:
        return average_perturbation_hessian(graph, node, images, direction=self.params.aph_direction)

    def _reconstruct_unit(self, graph: Graph, ctx: PassContext, unit: Unit, q_in: torch.Tensor,
                          fp_in: torch.Tensor, fp_out: torch.Tensor, h: torch.Tensor | None,
                          last: bool) -> dict[str, Any]:
        p = self.params
        roles = quantizers(graph, unit.nodes)
        if not roles:
            return {"skipped": "no quantizer in this unit"}
        alphas = {n: adaround_init(graph.attr(n.args[0]), graph.attr(n.args[1])).detach().requires_grad_()
                  for n, r in roles.items() if r == "weight"}
        scales = {n: graph.attr(n.args[1]).detach().clone().requires_grad_() for n, r in roles.items() if r == "act"}
        overrides = _training_overrides(roles, alphas, scales, p.drop_prob)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            y = run_nodes(graph, unit.nodes, {unit.input: qdrop(q_in[idx], fp_in[idx], p.drop_prob)}, overrides)
            if last:
                return F.kl_div(F.log_softmax(y, -1), F.log_softmax(fp_out[idx], -1), log_target=True,
                                reduction="batchmean")
            return ((y - fp_out[idx]).pow(2) * (1.0 if h is None else h)).mean()

        steps = p.setting("iters")
        groups = [(list(alphas.values()), p.lr_alpha, False), (list(scales.values()), p.lr_scale, True)]
        schedule = rounding_schedule(list(alphas.values()), steps, p.warmup, p.beta, p.round_lambda)
        first = train(loss, groups, len(q_in), p.batch_size, steps, ctx, f"reconstructing {unit.name}", schedule)
        return {"loss_start": first, **_commit(graph, alphas, scales)}


def _training_overrides(roles: dict[fx.Node, str], alphas: dict[fx.Node, torch.Tensor],
                        scales: dict[fx.Node, torch.Tensor], drop: float) -> dict[fx.Node, Any]:
    """AdaRound weights; LSQ activation scales and fixed softmax quantizers, both under QDrop."""
    out: dict[fx.Node, Any] = {}
    for n, role in roles.items():
        if role == "weight":
            out[n] = lambda w, s, z, qmax, _a=alphas[n]: adaround_fake(w, s, z, qmax, _a)
        elif role == "act":
            out[n] = lambda x, s, z, qmax, _s=scales[n]: qdrop(lsq_fake(x, _s, z, qmax), x, drop)
        else:
            out[n] = lambda a, *c, _f=n.target: qdrop(_f(a, *c), a, drop)
    return out


def _commit(graph: Graph, alphas: dict[fx.Node, torch.Tensor], scales: dict[fx.Node, torch.Tensor]) -> dict[str, int]:
    """Write hard AdaRound rounding into the weights and the learned scales into the quantizers."""
    changed = 0
    with torch.no_grad():
        for n, a in alphas.items():
            w, s = graph.attr(n.args[0]), graph.attr(n.args[1])
            changed += int(((a >= 0) != (w / s - torch.floor(w / s) >= 0.5)).sum())
            w.copy_(adaround_weight(w, s, a))
        for n, s in scales.items():
            graph.attr(n.args[1]).copy_(s)
    return {"weights": len(alphas), "activation_scales": len(scales), "roundings_changed_vs_nearest": changed}


@torch.no_grad()
def _cache(graph: Graph, images: torch.Tensor, nodes: list[fx.Node], batch: int = 128) -> dict[fx.Node, torch.Tensor]:
    """Float-model values of `nodes` on `images`."""
    fp = float_overrides(graph)
    runs = [full_run(graph, xb, fp) for xb in images.split(batch)]
    return {n: torch.cat([env[n] for env in runs]) for n in nodes}


def _unit_rms(h: torch.Tensor) -> torch.Tensor:
    """H̄ rescaled to unit root-mean-square (§4.4's normalisation; used for blocks too, where the
    scale is otherwise ~ε and only the loss ratio L/L₀ would hide it)."""
    return h * math.sqrt(h.numel() / float(h.pow(2).sum().clamp_min(1e-30)))


def _images(ctx: PassContext, n: int) -> torch.Tensor:
    with ctx.limited(n):
        return torch.cat(list(ctx.calibration_batches()))
