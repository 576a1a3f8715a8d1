"""`prune.block`: block-structured pruning with second-order Taylor saliency (LPViT, methods.md §6.2).

Whole (bh × bw) tiles of a weight are removed, the pattern a block-sparse kernel skips
(`sparse.kernels`), unlike unstructured zeros that no CPU kernel turns into speed.

- Gradient proxy (label-free, as LPViT codes it): g = mean over calibration batches of
  ∂ mean(f(x)²)/∂W.
- Block saliency: mean |W ⊙ g| over the block (`taylor`), or mean |W| (`l1`).
- Per-layer rate–distortion curve: removing the k least salient blocks (ΔW = −W on them) costs
  D(k) = mean((ΔW ⊙ g)²) + ½ ΔWᵀ(g gᵀ + λI)ΔW. Because blocks are removed in a fixed order,
  cumulative sums give D at *every* k exactly (LPViT samples 101 amounts and accumulates the
  quadratic term approximately).
- Allocation (`rd`): the per-layer amounts minimise Σ D_l subject to the global sparsity target,
  found as a common slope: for a multiplier μ each layer takes argmin_k D_l(k) − μ·(weights
  removed), and μ is bisected until the target is met. Every layer keeps at least
  min(5 %, (1 − target)/2) of its blocks, LPViT's floor. Sparsity is counted in weights; for a
  ViT's Linears (same token count everywhere) that is also the FLOP budget LPViT uses.
  `uniform` gives every layer the target sparsity (the comparison baseline).

- Refit (`refit`, default on): with the block mask fixed, the kept weights of each block-row are
  re-solved by least squares against the calibration Hessian H = XᵀX of the layer input,
  W_K ← W H[:, K] H[K, K]⁻¹ (the exact minimiser of ‖(Ŵ − W) X‖² for that mask; SparseGPT's
  column-by-column update approximates the same). LPViT itself does not reconstruct and leaves
  recovery to fine-tuning; this is ours, measured against refit: false in benches/prune.py.

The keep mask becomes the node annotation "sparsity" ({"pattern": "block", "block": [bh, bw]}),
so later passes (quantization, fine-tune, sparse kernels) keep and use it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import fx

from compressor.graph.graph import Graph
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.gradients import batch_gradients, output_energy
from compressor.passes.prune.hessian import from_reduction_view, input_hessians, prunable_layers, reduction_view


class BlockParams(PassParams):
    sparsity: float = Field(0.5, gt=0, lt=1, description="fraction of the prunable weights removed")
    block: list[int] = Field(default_factory=lambda: [16, 16], description="[rows, cols] of a weight block")
    saliency: Literal["taylor", "l1"] = "taylor"
    allocation: Literal["rd", "uniform"] = "rd"
    lam: float = Field(1e-7, ge=0, description="λ of the quadratic term's ridge")
    refit: bool = Field(True, description="least-squares refit of the kept weights with the input Hessian")
    damp: float = Field(0.01, gt=0, description="Hessian dampening for the refit, fraction of its mean diagonal")
    skip: list[str] = Field(default_factory=list, description="module paths (glob) left dense")
    keep_ends: bool = Field(True, description="leave the first and the last layer dense (the patch embedding or "
                                              "stem, and the classifier): small and sensitive")

    @field_validator("block")
    @classmethod
    def _two_positive(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or min(v) < 1:
            raise ValueError(f"block must be [rows, cols] of positive ints, got {v}")
        return v


def blocks_of(w: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """(O, I) → (O/bh, I/bw, bh·bw): one row per block, blocks in row-major grid order."""
    o, i = w.shape
    return w.reshape(o // bh, bh, i // bw, bw).permute(0, 2, 1, 3).reshape(o // bh, i // bw, bh * bw)


def block_mask(keep: torch.Tensor, bh: int, bw: int) -> torch.Tensor:
    """Per-block keep flags (O/bh, I/bw) → element mask (O, I)."""
    return keep.repeat_interleave(bh, 0).repeat_interleave(bw, 1)


def distortion_curve(w: torch.Tensor, g: torch.Tensor, bh: int, bw: int, saliency: str,
                     lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(removal order of the blocks, D(k) for k = 0..n_blocks removed)."""
    wb, gb = blocks_of(w.double(), bh, bw), blocks_of(g.double(), bh, bw)
    score = (wb * gb).abs().mean(-1) if saliency == "taylor" else wb.abs().mean(-1)
    order = score.flatten().argsort()
    wg = (wb * gb).flatten(0, 1)[order]
    zero = torch.zeros(1, dtype=torch.float64)
    diag = torch.cat([zero, (wg**2).sum(-1).cumsum(0)]) / w.numel()
    first = torch.cat([zero, wg.sum(-1).cumsum(0)])  # gᵀΔW
    ridge = torch.cat([zero, (wb.flatten(0, 1)[order] ** 2).sum(-1).cumsum(0)])
    return order, diag + 0.5 * (first**2 + lam * ridge)


def refit_kept(w: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor, bh: int, damp: float) -> torch.Tensor:
    """Kept weights re-solved per block-row: W_K = W H[:, K] H[K, K]⁻¹ minimises ‖(Ŵ − W)X‖²."""
    h = hessian.double().clone()
    h += damp * torch.diag(h).mean().clamp_min(1e-12) * torch.eye(h.shape[0], dtype=h.dtype)
    w64, out = w.double(), torch.zeros_like(w, dtype=torch.float64)
    for r0 in range(0, w.shape[0], bh):
        cols = keep[r0].nonzero().flatten()
        if len(cols):
            rows = w64[r0:r0 + bh]
            out[r0:r0 + bh, cols] = torch.linalg.solve(h[cols][:, cols], (rows @ h[:, cols]).T).T
    return out.to(w.dtype)


def allocate(curves: list[torch.Tensor], target: float, floor: float) -> list[int]:
    """Blocks to remove per layer: the common-slope (Lagrangian) solution meeting `target`.

    All layers share one block shape, so counting blocks counts weights.
    """
    sizes = [len(c) - 1 for c in curves]
    caps = [int(n * (1 - floor)) for n in sizes]
    need = target * sum(sizes)

    def pick(mu: float) -> list[int]:
        return [int((c[: cap + 1] - mu * torch.arange(cap + 1, dtype=c.dtype)).argmin()) for c, cap in
                zip(curves, caps, strict=True)]

    lo, hi = 0.0, 1.0
    while sum(pick(hi)) < need and hi < 1e30:
        hi *= 4
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(pick(mid)) < need else (lo, mid)
    return pick(hi)


@register_pass
class BlockPrune(Pass):
    name = "prune.block"
    Params = BlockParams
    needs_calibration = True
    description = "block-structured pruning (LPViT): Taylor block saliency, rate-distortion sparsity allocation"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        p = self.params
        bh, bw = p.block
        targets, skipped = self._targets(graph)
        weights = [graph.attr(n.args[1]) for n in targets]
        grads = self._gradient_proxy(graph, ctx, weights)
        hessians = input_hessians(graph, ctx, targets) if p.refit else {}
        flat = [reduction_view(w.detach()) for w in weights]
        curves = [distortion_curve(w, reduction_view(g), bh, bw, p.saliency, p.lam)
                  for w, g in zip(flat, grads, strict=True)]
        if p.allocation == "rd":
            removed = allocate([c for _, c in curves], p.sparsity, min(0.05, (1 - p.sparsity) / 2))
        else:
            removed = [round(p.sparsity * (len(c) - 1)) for _, c in curves]
        layers = []
        for node, w, (order, curve), k in zip(targets, flat, curves, removed, strict=True):
            keep = torch.ones(w.shape[0] // bh, w.shape[1] // bw, dtype=torch.bool)
            keep.view(-1)[order[:k]] = False
            mask = block_mask(keep, bh, bw)
            new = refit_kept(w, mask, hessians[node], bh, p.damp) if p.refit else w * mask
            shape = graph.attr(node.args[1]).shape
            new, mask = from_reduction_view(new, shape).contiguous(), from_reduction_view(mask, shape)
            path = graph.module_path(node) or node.name
            node.update_arg(1, graph.add_buffer(f"{path}.weight_block", new, before=node))
            graph.annotate(node, "sparsity", {"pattern": "block", "block": [bh, bw], "axis": 1, "mask": mask})
            layers.append({"module": path, "shape": list(w.shape), "sparsity": round(k / keep.numel(), 4),
                           "distortion": float(curve[k])})
        graph.drop_unused_attrs()
        graph.recompile()
        total = sum(w.numel() for w in flat)
        achieved = sum(lay["sparsity"] * w.numel() for lay, w in zip(layers, flat, strict=True)) / max(total, 1)
        return {"block": [bh, bw], "saliency": p.saliency, "allocation": p.allocation, "target": p.sparsity,
                "achieved": round(achieved, 4), "pruned_layers": len(layers), "skipped": skipped, "layers": layers}

    def _targets(self, graph: Graph) -> tuple[list[fx.Node], list[str]]:
        """Layers whose (out, reduction) view tiles exactly into blocks."""
        bh, bw = self.params.block

        def unfit(w: torch.Tensor) -> str | None:
            if w.shape[0] % bh or w[0].numel() % bw:
                return f"{w.shape[0]}x{w[0].numel()} does not tile into {bh}x{bw} blocks"
            return None

        return prunable_layers(graph, self.params.skip, unfit, self.params.keep_ends)

    def _gradient_proxy(self, graph: Graph, ctx: PassContext, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.params.saliency == "l1" and self.params.allocation == "uniform":
            return [torch.zeros_like(w) for w in weights]  # neither score nor allocation reads g
        total, batches = [torch.zeros_like(w) for w in weights], 0
        for grads in batch_gradients(graph, ctx, weights, output_energy, "gradient proxy"):
            for acc, g in zip(total, grads, strict=True):
                acc += g
            batches += 1
        return [acc / max(batches, 1) for acc in total]
