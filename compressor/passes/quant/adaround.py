"""`quant.adaround`: learned weight rounding per block (AdaRound, BRECQ) after int8 PTQ.

Rounding each weight to its nearest grid point is not the rounding that keeps a layer's output
closest to float: AdaRound learns, per weight, whether to round down or up (h(α) ∈ [0, 1] with a
rectified sigmoid and an annealed regulariser that drives h to 0 or 1), and BRECQ does it for a
whole block at once, so the errors of a depthwise conv and the 1x1 conv behind it can cancel. The
blocks are the graph's reconstruction units (`reconstruct.partition_units`: the stem, each
inverted-residual or transformer block, the head), reconstructed in order: each one's input is
the quantized model's output so far, its target the float model's output of that block, with
QDrop (activations inside the block quantized with probability `drop_prob`, else kept float).
The learned codes are written into the int8 weights; scales, zero points and the exported graph
are unchanged. The same machinery reconstructs ViT blocks in `quant.aphq`.

Needs the float weights that `quant.int8_ptq` records on each weight's DequantizeLinear.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import fx

from compressor.errors import CompressorError
from compressor.graph.graph import Graph
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.quant import ops
from compressor.passes.quant.reconstruct import (
    Override,
    Unit,
    adaround_init,
    float_overrides,
    partition_units,
    qdrop,
    rectified_sigmoid,
    round_ste,
    rounding_schedule,
    run_nodes,
    run_unit,
    train,
)


class AdaRoundParams(PassParams):
    iters: int = Field(300, ge=1, description="optimizer steps per block (AdaRound: 10k per layer; on 2 CPU cores "
                                              "300 take minutes)")
    images: int = Field(128, ge=1, description="calibration images reconstructed on")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of the rounding variables α")
    round_lambda: float = Field(0.01, ge=0, description="weight of the rounding regulariser")
    beta: tuple[float, float] = Field((20.0, 2.0), description="regulariser exponent, annealed from/to")
    warmup: float = Field(0.2, ge=0, lt=1, description="fraction of steps without the regulariser")
    drop_prob: float = Field(0.5, ge=0, le=1, description="QDrop: probability an activation is quantized")


@register_pass
class AdaRound(Pass):
    name = "quant.adaround"
    Params = AdaRoundParams
    needs_calibration = True
    description = "AdaRound/BRECQ: learned up/down rounding of int8 weights, block by block, against the float model"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        weights = {n for n in graph.nodes if _is_weight(graph, n)}
        if not weights:
            raise CompressorError("quant.adaround found no int8 weight with its float value recorded; run it after "
                                  "quant.int8_ptq in the recipe.")
        with ctx.limited(self.params.images):
            images = torch.cat(list(ctx.calibration_batches()))
        floats = float_overrides(graph)
        units = partition_units(graph)
        q_in = fp_in = images
        blocks = []
        for k, unit in enumerate(units):
            fp_out = run_unit(graph, unit, fp_in, floats)
            mine = [n for n in unit.nodes if n in weights]
            if mine:
                blocks.append({"unit": unit.name, **self._reconstruct(graph, ctx, unit, mine, q_in, fp_in, fp_out,
                                                                       last=k == len(units) - 1)})
            q_in, fp_in = run_unit(graph, unit, q_in), fp_out
        return {"blocks": len(blocks), "images": len(images), "iters": self.params.iters,
                "roundings_changed": sum(b["roundings_changed"] for b in blocks), "units": blocks}

    def _reconstruct(self, graph: Graph, ctx: PassContext, unit: Unit, weights: list[fx.Node], q_in: torch.Tensor,
                     fp_in: torch.Tensor, fp_out: torch.Tensor, last: bool) -> dict[str, Any]:
        p = self.params
        alphas = {n: adaround_init(graph.annotation(n, ops.FLOAT_VALUE), _scale(graph, n)).detach().requires_grad_()
                  for n in weights}
        overrides = _training_overrides(graph, unit, alphas, p.drop_prob)

        def loss(idx: torch.Tensor) -> torch.Tensor:
            y = run_nodes(graph, unit.nodes, {unit.input: qdrop(q_in[idx], fp_in[idx], p.drop_prob)}, overrides)
            return _error(y, fp_out[idx], last)

        nearest = _error(run_unit(graph, unit, q_in), fp_out, last)
        schedule = rounding_schedule(list(alphas.values()), p.iters, p.warmup, p.beta, p.round_lambda)
        train(loss, [(list(alphas.values()), p.lr, False)], len(q_in), p.batch_size, p.iters, ctx,
              f"rounding {unit.name}", schedule)
        changed = sum(_commit(graph, n, a) for n, a in alphas.items())
        learned = _error(run_unit(graph, unit, q_in), fp_out, last)
        return {"weights": len(alphas), "error_nearest": round(float(nearest), 8),
                "error_learned": round(float(learned), 8), "roundings_changed": changed}


def _error(y: torch.Tensor, target: torch.Tensor, last: bool) -> torch.Tensor:
    """The block's reconstruction error: MSE, or for the logits KL to the float model's distribution."""
    if last:
        return F.kl_div(F.log_softmax(y, -1), F.log_softmax(target, -1), log_target=True, reduction="batchmean")
    return (y - target).pow(2).mean()


def _is_weight(graph: Graph, node: fx.Node) -> bool:
    return node.target is ops.DEQUANTIZE and graph.annotation(node, "quant") is not None \
        and graph.annotation(node, ops.FLOAT_VALUE) is not None


def _scale(graph: Graph, dq: fx.Node) -> torch.Tensor:
    """The weight's per-channel scale, shaped to broadcast against it."""
    w, s = graph.attr(dq.args[0]), graph.attr(dq.args[1])
    shape = [1] * w.dim()
    shape[graph.annotation(dq, "quant")["axis"]] = -1
    return s.reshape(shape)


def _qmax(graph: Graph, dq: fx.Node) -> int:
    return 63 if graph.annotation(dq, "quant")["weight_bits"] == 7 else 127


def _soft_weight(w: torch.Tensor, scale: torch.Tensor, qmax: int, alpha: torch.Tensor) -> torch.Tensor:
    """Δ·clamp(⌊w/Δ⌋ + h(α), −qmax, qmax): symmetric int8 codes with learned rounding."""
    return torch.clamp(torch.floor(w / scale) + rectified_sigmoid(alpha), -qmax, qmax) * scale


def _training_overrides(graph: Graph, unit: Unit, alphas: dict[fx.Node, torch.Tensor],
                        drop: float) -> dict[fx.Node, Override]:
    """Weights with learned rounding; activation Q/DQ pairs as straight-through fake quantizers under QDrop."""
    out: dict[fx.Node, Override] = {}
    for n, a in alphas.items():
        w, s, qmax = graph.annotation(n, ops.FLOAT_VALUE), _scale(graph, n), _qmax(graph, n)
        out[n] = lambda *_, w=w, s=s, qmax=qmax, a=a: _soft_weight(w, s, qmax, a)
    for n in unit.nodes:
        if n.target is ops.QUANTIZE and not graph.is_constant(n.args[0]):
            info = torch.iinfo(graph.attr(n.args[2]).dtype)
            out[n] = lambda x, s, z, _axis, lo=info.min, hi=info.max: qdrop(
                (torch.clamp(round_ste(x / s) + z.float(), lo, hi) - z.float()) * s, x, drop)
            for dq in n.users:
                out[dq] = lambda x, *_: x
    return out


@torch.no_grad()
def _commit(graph: Graph, dq: fx.Node, alpha: torch.Tensor) -> int:
    """Write the hard rounding (up where α ≥ 0) into the int8 codes; returns how many differ from nearest."""
    w, s, qmax = graph.annotation(dq, ops.FLOAT_VALUE), _scale(graph, dq), _qmax(graph, dq)
    codes = graph.attr(dq.args[0])
    learned = torch.clamp(torch.floor(w / s) + (alpha >= 0).to(w.dtype), -qmax, qmax)
    sparsity = graph.annotation(dq, "sparsity")
    if sparsity is not None:  # pruned weights stay zero
        learned = learned * sparsity["mask"].to(learned.dtype)
    changed = int((learned != codes.to(learned.dtype)).sum())
    codes.copy_(learned.to(codes.dtype))
    return changed
