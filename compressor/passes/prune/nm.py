"""`prune.nm`: N:M semi-structured sparsity (2:4 by default) for Linear and Conv weights.

In every group of M consecutive weights along the reduction (input) dimension, N are kept: the
pattern NVIDIA's sparse tensor cores (and TensorRT's sparse-weights flag) execute at up to 2x.

- `magnitude`: keep the N largest |w| of each group (NVIDIA ASP's rule).
- `sparsegpt`: second-order one-shot pruning in the manner of SparseGPT / Optimal Brain
  Surgeon. With the calibration Hessian H = XᵀX of the layer's inputs, columns are processed
  left to right; each group's mask keeps the weights with the largest w²/[H⁻¹]²_jj (least
  damage to the layer's output), and every removed weight's error is compensated by updating
  the not-yet-processed columns of its row with the row of the Cholesky factor of H⁻¹. This
  minimises ‖WX − ŴX‖² far better than magnitude at the same sparsity.

Conv weights are grouped along input channels at each kernel position (the KRSC layout
TensorRT's sparse convolutions read), and their Hessian comes from im2col patches of the input
in that same column order.

A one-shot pattern can remove more than a model tolerates without training (EfficientNet-Lite0's
depthwise-separable convs kept 41 % top-1 agreement at 2:4): the pass compares the pruned graph with
the graph before it on the calibration images and stops the run below `min_agreement`
(compressor/passes/agreement.py) instead of returning that model.

The mask is left as a node annotation ("sparsity") so later passes keep it: int8
quantization is symmetric, so pruned zeros stay exactly zero, and the exported int8 weights
carry the pattern.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import fx

from compressor.errors import CompressorError
from compressor.graph.graph import Graph
from compressor.passes.agreement import agreement, falls_short, reference_logits, upper_bound
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.prune.hessian import from_reduction_view, input_hessians, prunable_layers, reduction_view


class NMParams(PassParams):
    n: int = Field(2, ge=1, description="weights kept in each group")
    m: int = Field(4, ge=2, description="group size along the reduction dimension")
    method: Literal["magnitude", "sparsegpt"] = "sparsegpt"
    damp: float = Field(0.01, gt=0, description="Hessian dampening, as a fraction of its mean diagonal")
    block_size: int = Field(128, ge=1, description="columns updated together (sparsegpt)")
    skip: list[str] = Field(default_factory=list, description="module paths (glob) left dense")
    keep_ends: bool = Field(True, description="leave the first and the last layer dense (the patch embedding or "
                                              "stem, and the classifier): small and sensitive")
    min_agreement: float | None = Field(
        95.0, ge=0, le=100, description="top-1 agreement (%) with the unpruned model on the calibration images that "
                                        "the upper end of its 95 % interval must reach, else the run stops; null "
                                        "keeps any result (e.g. when finetune.distill follows)")

    @model_validator(mode="after")
    def _n_below_m(self) -> NMParams:
        if self.n >= self.m:
            raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
        return self


def magnitude_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True where a weight is kept: the n largest |w| in each group of m along dim 1."""
    groups = w.abs().reshape(w.shape[0], -1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(w.shape)


def sparsegpt_prune(w: torch.Tensor, hessian: torch.Tensor, n: int, m: int, damp: float,
                    block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned and compensated weights, keep mask) for W (rows, cols) and H = XᵀX (cols, cols)."""
    w = w.double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    keep = torch.ones_like(w, dtype=torch.bool)
    cols = w.shape[1]
    for b0 in range(0, cols, block_size):
        b1 = min(b0 + block_size, cols)
        blk, u_blk = w[:, b0:b1].clone(), u[b0:b1, b0:b1]
        err = torch.zeros_like(blk)
        for j in range(b1 - b0):
            if j % m == 0:  # choose this group's mask from the current (already updated) weights
                g = slice(j, j + m)
                saliency = blk[:, g] ** 2 / torch.diag(u_blk)[g].reshape(1, -1) ** 2
                drop = saliency.topk(m - n, dim=1, largest=False).indices + j
                keep[:, b0:b1].scatter_(1, drop, False)
            col = blk[:, j]
            pruned = torch.where(keep[:, b0 + j], col, torch.zeros_like(col))
            e = (col - pruned) / u_blk[j, j]
            blk[:, j:] -= e.unsqueeze(1) @ u_blk[j, j:].unsqueeze(0)
            blk[:, j] = pruned
            err[:, j] = e
        w[:, b0:b1] = blk
        w[:, b1:] -= err @ u[b0:b1, b1:]
    return (w * keep).float(), keep


@register_pass
class NMPrune(Pass):
    name = "prune.nm"
    Params = NMParams
    needs_calibration = True
    description = "N:M (2:4) semi-structured pruning of Linear/Conv weights, magnitude or second-order"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        p = self.params
        targets, skipped = self._targets(graph)
        before = reference_logits(graph, list(ctx.calibration_batches()))
        hessians = input_hessians(graph, ctx, targets) if p.method == "sparsegpt" else {}
        layers = []
        for node in targets:
            w = graph.attr(node.args[1]).detach()
            flat = reduction_view(w)
            if p.method == "sparsegpt":
                new, keep = sparsegpt_prune(flat, hessians[node], p.n, p.m, p.damp, p.block_size)
            else:
                keep = magnitude_mask(flat, p.n, p.m)
                new = flat * keep
            path = graph.module_path(node) or node.name
            new, keep = from_reduction_view(new, w.shape).contiguous(), from_reduction_view(keep, w.shape)
            node.update_arg(1, graph.add_buffer(f"{path}.weight_{p.n}of{p.m}", new, before=node))
            graph.annotate(node, "sparsity", {"pattern": f"{p.n}:{p.m}", "axis": 1, "mask": keep})
            sparsity = round(1 - float(keep.float().mean()), 4)
            layers.append({"module": path, "shape": list(w.shape), "sparsity": sparsity})
        graph.drop_unused_attrs()
        graph.recompile()
        kept, images = agreement(graph, before)
        if falls_short(kept, images, p.min_agreement):
            raise CompressorError(
                f"prune.nm: after {p.n}:{p.m} pruning of {len(layers)} layers ({p.method}) the model agrees with its "
                f"unpruned self on {kept:.1f} % of {images} calibration images (95 % interval up to "
                f"{upper_bound(kept, images):.1f} %, below min_agreement {p.min_agreement:g}): one-shot pruning "
                "removes more than this model tolerates without training. Leave sensitive layers dense (prune.nm's "
                "skip: [module paths]; --sensitivity ranks them), follow it with finetune.distill and set "
                "min_agreement: null here, or use int8-ptq, which needs no training. min_agreement: null keeps "
                "this model anyway.")
        return {"pattern": f"{p.n}:{p.m}", "method": p.method, "pruned_layers": len(layers), "skipped": skipped,
                "calibration_agreement": kept, "layers": layers}

    def _targets(self, graph: Graph) -> tuple[list[fx.Node], list[str]]:
        """Layers whose grouped dimension (input channels) is a multiple of m."""
        m = self.params.m

        def unfit(w: torch.Tensor) -> str | None:
            return f"{w.shape[1]} input channels, not a multiple of {m}" if w.shape[1] % m else None

        return prunable_layers(graph, self.params.skip, unfit, self.params.keep_ends)
