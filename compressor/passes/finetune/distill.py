"""`finetune.distill`: short knowledge-distillation fine-tune of the graph against the original model.

Pruning and architecture conversions (RePaViT channel idle) change the function; a few hundred
steps of matching the original model's soft outputs on the *unlabelled* calibration images
recover most of it, with no labels and no training set (the setting of every PTQ toolkit user).
Loss: Hinton's KL(softmax(t/τ) ‖ softmax(s/τ))·τ². Every floating constant of the graph trains
except BatchNorm running statistics; sparsity masks left by pruning passes are re-applied after
each step, so a pruned weight never comes back. Runs before quantization passes (a quantized
graph has no gradient).

A fine-tune on a pretrained model must never make it worse: a fifth of the calibration images
is held out, the state is scored every `eval_every` steps by top-1 agreement with the teacher on
them (ties broken by the distillation loss), and the best state seen, the starting one included,
is what the pass returns. The learning rate warms up linearly and decays with a cosine, at a
fine-tuning rate: 5e-4 made EfficientNet-Lite0's distillation diverge (loss 0 → 0.58). When even
the best state's held-out agreement is below `min_agreement` beyond the noise of those few images
(the upper end of its 95 % interval), the run stops with the numbers: on a pretrained ImageNet
CNN, a few hundred images cannot recover 50 % sparsity (block50 ended at 40 % agreement), and a
recipe must say so rather than ship that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from compressor.errors import CompressorError
from compressor.graph.graph import Graph
from compressor.passes.agreement import agreement, falls_short, upper_bound
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.gradients import trainable
from compressor.passes.quant.ops import graph_precision

aten = torch.ops.aten
_BN = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)


class DistillParams(PassParams):
    steps: int = Field(300, ge=0, description="optimizer steps over the calibration set (0 = skip)")
    lr: float = Field(1e-4, gt=0, description="peak AdamW learning rate (linear warm-up, then cosine to 0)")
    warmup: float = Field(0.1, ge=0, lt=1, description="fraction of the steps spent warming the rate up")
    temperature: float = Field(2.0, gt=0, description="softmax temperature τ of the distillation loss")
    weight_decay: float = Field(0.0, ge=0)
    holdout: float = Field(0.2, gt=0, lt=1, description="fraction of calibration images kept out of training to "
                                                         "pick the best state")
    eval_every: int = Field(25, ge=1, description="steps between scorings of the held-out images")
    min_agreement: float | None = Field(
        95.0, ge=0, le=100, description="held-out top-1 agreement with the original model (%) that the upper end of "
                                        "its 95 % interval must reach, else the pass stops the run instead of "
                                        "returning a broken model; null keeps any result")


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
        train, held = _split(batches, p.holdout)
        tensors, masks = trainable_tensors(graph), sparsity_masks(graph)
        opt = torch.optim.AdamW(tensors, lr=p.lr, weight_decay=p.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(p.steps, p.warmup))
        order = torch.Generator().manual_seed(ctx.seed)
        before = agreement(graph, batches)[0]
        start = best = _score(graph, held, p.temperature)
        best_step, best_state, losses = 0, [t.detach().clone() for t in tensors], []
        with trainable(tensors):
            for step in ctx.progress.track(range(1, p.steps + 1), "distilling", total=p.steps):
                x, t = train[int(torch.randint(len(train), (1,), generator=order))]
                loss = distill_loss(graph.gm(x), t, p.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    for w, keep in masks:
                        w.mul_(keep)
                losses.append(loss.item())
                if step % p.eval_every == 0 or step == p.steps:
                    score = _score(graph, held, p.temperature)
                    if score > best:
                        best, best_step, best_state = score, step, [t.detach().clone() for t in tensors]
        with torch.no_grad():
            for t, kept in zip(tensors, best_state, strict=True):
                t.copy_(kept)
        train_n, held_n = sum(len(x) for x, _ in train), sum(len(x) for x, _ in held)
        if falls_short(best[0], held_n, p.min_agreement):
            raise CompressorError(
                f"finetune.distill: after {p.steps} steps on {train_n} calibration images the "
                f"compressed model agrees with the original on {best[0]:.1f} % of {held_n} held-out images (95 % "
                f"interval up to {upper_bound(best[0], held_n):.1f} %, below min_agreement {p.min_agreement:g}; "
                f"{start[0]:.1f} % before fine-tuning): the earlier passes changed "
                "this model more than distillation on this data recovers. Give more calibration images (--calib, "
                "--calib-size), more steps, or a milder pass (lower sparsity); a quantization recipe (int8-ptq) "
                "needs no training. finetune.distill's min_agreement: null keeps the model anyway.")
        tail = max(1, len(losses) // 10)
        return {"steps": p.steps, "images": train_n, "held_out": held_n,
                "loss_first": round(losses[0], 5), "loss_last": round(sum(losses[-tail:]) / tail, 5),
                "best_step": best_step, "held_out_agreement_before": start[0], "held_out_agreement_after": best[0],
                "teacher_agreement_before": before, "teacher_agreement_after": agreement(graph, batches)[0]}


def _split(batches: list[tuple[torch.Tensor, torch.Tensor]],
           holdout: float) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """(training, held-out) batches: the last `holdout` of the images, at least one of each."""
    x, t = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if len(x) < 2:
        raise CompressorError("finetune.distill needs at least 2 calibration images (one is held out to keep the "
                              "best state); pass more with --calib.")
    cut = min(len(x) - 1, max(1, round(len(x) * (1 - holdout))))
    size = len(batches[0][0])
    return list(zip(x[:cut].split(size), t[:cut].split(size), strict=True)), [(x[cut:], t[cut:])]


def _schedule(steps: int, warmup: float) -> Callable[[int], float]:
    """The LambdaLR factor: linear warm-up over `warmup` of the steps, then a cosine to 0."""
    ramp = max(1, round(steps * warmup))
    return lambda s: (s + 1) / ramp if s < ramp else 0.5 * (1 + math.cos(math.pi * (s - ramp) / max(1, steps - ramp)))


@torch.no_grad()
def _score(graph: Graph, held: list[tuple[torch.Tensor, torch.Tensor]], tau: float) -> tuple[float, float]:
    """(agreement with the teacher, −distillation loss) on the held-out images: higher is better."""
    x, t = held[0]
    out = graph.gm(x)
    return round(100.0 * float((out.argmax(-1) == t.argmax(-1)).float().mean()), 2), -float(distill_loss(out, t, tau))

