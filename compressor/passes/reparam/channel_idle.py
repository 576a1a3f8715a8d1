"""`reparam.channel_idle`: convert a plain ViT's FFNs into RePaViT's folded channel-idle form.

RePaViT trains its channel-idle FFN from scratch (300 epochs). A user with a pretrained plain ViT
wants the speed without that; this pass rewrites `x + fc2(GELU(fc1(LN(x))))` directly into the
inference form `Q·GELU(P x + b) + M x + c` (methods.md §5.2) with `a = ceil(D·(1 − idle_ratio))`
active channels, and a `finetune.distill` pass after it recovers the accuracy from the original
model. It changes the function: the recipe must follow it with the fine-tune.

methods.md gives no conversion rule; ours initialises the folded form from calibration
statistics so distillation starts close to the original:
- The FFN's LayerNorm (per-token, not linear) is replaced by the affine map A x + d that best
  predicts LN(x) from x over the calibration tokens (least squares, ridge 1e-6): RePaViT's BN₁
  is a per-channel affine map at inference, and a full matrix folds into fc1 just the same.
- Each hidden channel j is linearised as GELU(h) ≈ α_j h + β_j (least squares over the
  calibration pre-activations). Channels whose linearisation costs least at the output,
  E[(GELU(h_j) − α_j h_j − β_j)²]·‖W₂[:, j]‖², become idle; the `a` most nonlinear stay active.
- Idle channels and the shortcut collapse into M, exactly as in the fold (`emit_channel_idle`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import fx, nn

from compressor.errors import CompressorError
from compressor.graph.graph import Graph, layer_norm_args
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.calibrate import calibrate, insert_observers, observer_of, remove_observer
from compressor.passes.reparam.repavit import ChannelIdleFFN, emit_channel_idle, linear_params

aten = torch.ops.aten
RIDGE = 1e-6


class ChannelIdleParams(PassParams):
    idle_ratio: float = Field(0.75, ge=0, le=1, description="fraction of hidden channels without activation")
    merge_shortcut: bool = Field(True, description="one Linear over [GELU(P x + b), x] (see reparam.repavit)")


class AffineFitObserver(nn.Module):
    """Normal equations of LN(x) ≈ [x, 1]·B over every token: Σ[x,1]ᵀ[x,1] and Σ[x,1]ᵀ LN(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm: tuple[Any, ...] = ()
        self.xx: torch.Tensor | float = 0.0
        self.xy: torch.Tensor | float = 0.0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).double()
        ln = F.layer_norm(rows, *self.norm)
        ones = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1)
        self.xx = self.xx + ones.T @ ones
        self.xy = self.xy + ones.T @ ln
        return x


class LinearizeObserver(nn.Module):
    """Per-channel moments of a pre-activation h and φ(h): the least-squares line of φ on h."""

    def __init__(self) -> None:
        super().__init__()
        self.act: Any = None
        self.sums: torch.Tensor | float = 0.0  # rows: n, Σh, Σh², Σg, Σhg, Σg²

    @torch.no_grad()
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        rows = h.reshape(-1, h.shape[-1]).double()
        g = self.act(rows)
        ones = torch.ones_like(rows)
        self.sums = self.sums + torch.stack([ones, rows, rows**2, g, rows * g, g**2]).sum(1)
        return h


def find_plain_ffns(graph: Graph) -> list[ChannelIdleFFN]:
    """`x + fc2(GELU(fc1(LN(x))))` with every intermediate feeding only the next node."""
    found = []
    for ln, fc1, act, fc2 in graph.match("layer_norm", "linear", "gelu", "linear"):
        x, users = ln.args[0], list(fc2.users)
        if len(users) == 1 and users[0].target == aten.add.Tensor and set(users[0].args) == {x, fc2}:
            d = graph.attr(fc1.args[1]).shape[0]
            found.append(ChannelIdleFFN(x, None, fc1, None, fc2, users[0], act, list(range(d)), [True] * d))
    return found


@register_pass
class ChannelIdle(Pass):
    name = "reparam.channel_idle"
    Params = ChannelIdleParams
    needs_calibration = True
    description = "convert plain pre-LN FFNs to RePaViT's folded channel-idle form (follow with finetune.distill)"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        ffns = find_plain_ffns(graph)
        if not ffns:
            raise CompressorError("reparam.channel_idle converts pre-LayerNorm ViT FFNs, "
                                  "x + fc2(GELU(fc1(LayerNorm(x)))), and this model has none; it is for ViTs (for a "
                                  "CNN use int8-ptq).")
        ln_fits, lines = self._calibrate(graph, ctx, ffns)
        records = []
        for ffn, (xx, xy), sums in zip(ffns, ln_fits, lines, strict=True):
            records.append(self._convert(graph, ffn, xx, xy, sums))
        graph.drop_unused_attrs()
        graph.recompile()
        return {"converted": len(records), "idle_ratio": self.params.idle_ratio,
                "params_before": sum(r["params_before"] for r in records),
                "params_after": sum(r["params_after"] for r in records), "ffns": records}

    def _calibrate(self, graph: Graph, ctx: PassContext,
                   ffns: list[ChannelIdleFFN]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor]]:
        lns = [ffn.fc1.args[0] for ffn in ffns]
        fit_obs = insert_observers(graph, [(ln, [0]) for ln in lns], AffineFitObserver)
        for ln in lns:  # LN(x) with the graph's own weight, bias and eps, in float64
            _x, shape, w, b, eps = layer_norm_args(ln)
            observer_of(graph, ln.args[0]).norm = (shape, _double(graph, w), _double(graph, b), eps)
        act_obs = insert_observers(graph, [(ffn.act, [0]) for ffn in ffns], LinearizeObserver)
        for ffn in ffns:
            act = ffn.act
            observer_of(graph, act.args[0]).act = lambda h, act=act: act.target(h, *act.args[1:], **act.kwargs)
        calibrate(graph, ctx, "fitting channel-idle form")
        fits = [(observer_of(graph, ln.args[0]).xx, observer_of(graph, ln.args[0]).xy) for ln in lns]
        sums = [observer_of(graph, ffn.act.args[0]).sums for ffn in ffns]
        for obs in [*fit_obs.values(), *act_obs.values()]:
            remove_observer(graph, obs)
        return fits, sums

    def _convert(self, graph: Graph, ffn: ChannelIdleFFN, xx: torch.Tensor, xy: torch.Tensor,
                 sums: torch.Tensor) -> dict[str, Any]:
        before = graph.constant_numel([*ffn.fc1.args[1:3], *ffn.fc2.args[1:3], *layer_norm_args(ffn.fc1.args[0])[2:4]])
        w1, b1 = linear_params(graph, ffn.fc1)
        w2, b2 = linear_params(graph, ffn.fc2)
        c, d = w1.shape[1], w1.shape[0]
        ridge = RIDGE * torch.diag(xx).mean() * torch.eye(c + 1, dtype=xx.dtype)
        affine = torch.linalg.solve(xx + ridge, xy)  # (C+1, C): LN(x) ≈ x·A + d
        w1, b1 = w1 @ affine[:c].T, w1 @ affine[c] + b1
        n, sh, shh, sg, shg, sgg = sums
        var_h = (shh / n - (sh / n) ** 2).clamp_min(1e-12)
        cov = shg / n - sh * sg / n**2
        alpha = cov / var_h
        beta = sg / n - alpha * sh / n
        residual = (sgg / n - (sg / n) ** 2 - cov**2 / var_h).clamp_min(0)
        a = math.ceil(d * (1 - self.params.idle_ratio))
        active = torch.zeros(d, dtype=torch.bool)
        active[(residual * (w2**2).sum(0)).argsort(descending=True)[:a]] = True
        idle = ~active
        w1[idle], b1[idle] = alpha[idle, None] * w1[idle], alpha[idle] * b1[idle] + beta[idle]
        ffn.active = active.tolist()
        path, _, _, after = emit_channel_idle(graph, ffn, w1, b1, w2, b2, self.params.merge_shortcut)
        return {"module": path, "channels": c, "hidden": d, "active": a, "params_before": before,
                "params_after": after}


def _double(graph: Graph, node: Any) -> torch.Tensor | None:
    return graph.attr(node).double() if isinstance(node, fx.Node) else None
