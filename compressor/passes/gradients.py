"""Gradients of a scalar over the calibration set with respect to a graph's constant tensors.

Second-order pruning saliencies (LPViT's Taylor block score, NViT's unit saliency) and the
distillation fine-tune all need ∂loss/∂W for weights that live in the captured graph as
`get_attr` constants. Autograd runs through the exported ATen graph as it does through the
module, so the tensors are switched to `requires_grad` only for the duration of the stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from compressor.graph.graph import Graph
from compressor.passes.base import PassContext

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (batch, logits) -> scalar


@contextlib.contextmanager
def trainable(tensors: list[torch.Tensor]) -> Iterator[None]:
    """Tensors require grad inside the block and are plain constants again after it."""
    for t in tensors:
        t.requires_grad_(True)
        t.grad = None
    try:
        with torch.enable_grad():
            yield
    finally:
        for t in tensors:
            t.requires_grad_(False)
            t.grad = None


def batch_gradients(graph: Graph, ctx: PassContext, tensors: list[torch.Tensor], loss: Loss,
                    label: str) -> Iterator[list[torch.Tensor]]:
    """Yield, per calibration batch, the gradients of `loss` w.r.t. `tensors` (zeros where unused)."""
    total = -(-ctx.calibration_size() // ctx.calib_batch_size)
    with trainable(tensors):
        for x in ctx.progress.track(ctx.calibration_batches(), label, total=total):
            grads = torch.autograd.grad(loss(x, graph.gm(x)), tensors, allow_unused=True)
            yield [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads, strict=True)]


def output_energy(_x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """LPViT's label-free gradient proxy: mean(f(x)²)."""
    return logits.pow(2).mean()


def self_label_loss(_x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the model's own predictions: a task-shaped loss without labels.

    At the unpruned model the distillation loss is exactly zero and so is its gradient; the
    model's own argmax gives the empirical-Fisher gradient that NViT's saliency needs.
    """
    return F.cross_entropy(logits, logits.detach().argmax(-1), reduction="sum")
