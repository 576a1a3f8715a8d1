"""`finetune.distill`: short knowledge-distillation fine-tune of the graph against the original model.

Pruning and architecture conversions (RePaViT channel idle) change the function; a few hundred
steps of matching the original model's soft outputs on the *unlabelled* calibration images
recover most of it, with no labels and no training set (the setting of every PTQ toolkit user).
Loss: Hinton's KL(softmax(t/τ) ‖ softmax(s/τ))·τ². Every floating constant of the graph trains
except BatchNorm running statistics; sparsity masks left by pruning passes are re-applied after
each step, so a pruned weight never comes back. Runs before quantization passes (a quantized
graph has no gradient).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from compressor.errors import CompressorError
from compressor.graph.graph import Graph
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.gradients import trainable
from compressor.passes.quant.ops import graph_precision

aten = torch.ops.aten
_BN = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)


class DistillParams(PassParams):
    steps: int = Field(300, ge=0, description="optimizer steps over the calibration set (0 = skip)")
    lr: float = Field(5e-4, gt=0, description="peak AdamW learning rate (cosine decay to 0)")
    temperature: float = Field(2.0, gt=0, description="softmax temperature τ of the distillation loss")
    weight_decay: float = Field(0.0, ge=0)


def trainable_tensors(graph: Graph) -> list[torch.Tensor]:
    """Floating constants of the graph, minus BatchNorm running mean/var (statistics, not weights)."""
    stats = {id(graph.attr(a)) for n in graph.nodes if n.target in _BN for a in n.args[3:5]}
    seen: dict[int, torch.Tensor] = {}
    for node in graph.nodes:
        t = graph.attr(node)
        if t is not None and t.is_floating_point() and id(t) not in stats:
            seen.setdefault(id(t), t)
    return list(seen.values())


def sparsity_masks(graph: Graph) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, keep mask) for every layer a pruning pass annotated."""
    return [(graph.attr(node.args[1]), note["mask"]) for node, note in graph.annotated("sparsity")]


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1), log_target=True,
                    reduction="batchmean") * tau * tau


@register_pass
class Distill(Pass):
    name = "finetune.distill"
    Params = DistillParams
    needs_calibration = True
    description = "knowledge-distillation fine-tune from the original model on the calibration images"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        p = self.params
        if graph_precision(graph) != "fp32":
            raise CompressorError("finetune.distill must come before quantization passes in the recipe: a "
                                  "quantized graph has no gradient. Move it right after the pruning/reparam passes.")
        if ctx.teacher is None:
            raise CompressorError("finetune.distill needs the original model as teacher (compressor.compress "
                                  "provides it; set PassContext.teacher when running passes by hand)")
        if p.steps == 0:
            return {"steps": 0}
        batches = [(x, ctx.teacher(x)) for x in ctx.calibration_batches()]
        before = _agreement(graph, batches)
        tensors, masks = trainable_tensors(graph), sparsity_masks(graph)
        opt = torch.optim.AdamW(tensors, lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / p.steps)))
        order = torch.Generator().manual_seed(ctx.seed)
        losses = []
        with trainable(tensors):
            for step in ctx.progress.track(range(p.steps), "distilling", total=p.steps):
                x, t = batches[int(torch.randint(len(batches), (1,), generator=order))] if step else batches[0]
                loss = distill_loss(graph.gm(x), t, p.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    for w, keep in masks:
                        w.mul_(keep)
                losses.append(loss.item())
        tail = max(1, len(losses) // 10)
        return {"steps": p.steps, "images": sum(len(x) for x, _ in batches), "loss_first": round(losses[0], 5),
                "loss_last": round(sum(losses[-tail:]) / tail, 5),
                "teacher_agreement_before": before, "teacher_agreement_after": _agreement(graph, batches)}


@torch.no_grad()
def _agreement(graph: Graph, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 agreement with the teacher on the calibration images, in percent."""
    same = sum(int((graph.gm(x).argmax(-1) == t.argmax(-1)).sum()) for x, t in batches)
    return round(100.0 * same / sum(len(x) for x, _ in batches), 2)
