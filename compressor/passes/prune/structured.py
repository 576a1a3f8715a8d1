"""`prune.structured`: remove attention heads and FFN hidden channels physically (NViT, methods.md §6.4).

Zeros do not make a dense kernel faster; a smaller Linear does. This pass ranks prunable units
globally and rebuilds the graph with thinner layers (fewer qkv rows and proj columns, fewer
heads in the attention reshapes, fewer fc1 rows and fc2 columns). The residual stream width is
left alone, so every block still adds into the same embedding and no dependency through the
residual connections changes.

- Units: each attention head (its q, k, v rows of the qkv Linear and its columns of proj) and
  each FFN hidden channel (its fc1 row and bias, its fc2 column).
- Saliency (NViT's criterion 23): (Σ_{θ ∈ unit} θ · ∂L/∂θ)², accumulated over calibration
  batches — a Fisher approximation of the loss increase when the unit is removed. Without labels,
  L is the cross-entropy against the model's own predictions (see `self_label_loss`).
- Ranking: NViT divides the saliency of each structure type by hand-set constants; here it is
  divided by the unit's parameter count instead (loss increase per parameter saved), which puts
  heads and channels on one scale for any width. Units are removed cheapest-first until
  `sparsity` of the prunable parameters is gone; every attention keeps ≥ 1 head and every FFN
  ≥ `min_channels` channels.
- Found by pattern, not by names: qkv = a Linear reshaped to [B, N, 3, H, d]; its proj = the
  first Linear downstream, fed by a reshape to [..., H·d]; an FFN = Linear → GELU → Linear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import fx

from compressor.errors import CompressorError
from compressor.graph.graph import Graph, is_kind
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.gradients import batch_gradients, self_label_loss

aten = torch.ops.aten
_RESHAPES = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)


class StructuredParams(PassParams):
    sparsity: float = Field(0.3, gt=0, lt=1, description="fraction of the heads' and FFNs' parameters removed")
    heads: bool = Field(True, description="prune attention heads")
    channels: bool = Field(True, description="prune FFN hidden channels")
    min_channels: int = Field(8, ge=1, description="FFN hidden channels every block keeps")


@dataclass
class Attention:
    qkv: fx.Node
    split: fx.Node  # reshape to [B, N, 3, H, d]
    merge: fx.Node  # reshape back to [..., H·d]
    proj: fx.Node
    heads: int
    head_dim: int


@dataclass
class FFN:
    fc1: fx.Node
    fc2: fx.Node


def find_attentions(graph: Graph) -> list[Attention]:
    found = []
    for qkv in graph.find("linear"):
        users = list(qkv.users)
        if len(users) != 1 or users[0].target not in _RESHAPES or len(users[0].args[1]) != 5:
            continue
        split = users[0]
        three, heads, head_dim = split.args[1][2:]
        if three != 3 or not all(isinstance(v, int) for v in (heads, head_dim)):
            continue
        merge = _merge_reshape(split, heads * head_dim)
        if merge is not None:
            found.append(Attention(qkv, split, merge, next(iter(merge.users)), heads, head_dim))
    return found


def _merge_reshape(split: fx.Node, width: int) -> fx.Node | None:
    """The reshape to [..., width] that feeds the output Linear, reached without passing another Linear."""
    frontier, seen = [split], set()
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in seen or is_kind(user, "linear"):
                continue
            seen.add(user)
            if (user.target in _RESHAPES and user.args[1][-1] == width and len(user.users) == 1
                    and is_kind(next(iter(user.users)), "linear")):
                return user
            frontier.append(user)
    return None


def find_ffns(graph: Graph) -> list[FFN]:
    return [FFN(fc1, fc2) for fc1, _act, fc2 in graph.match("linear", "gelu", "linear")]


@register_pass
class StructuredPrune(Pass):
    name = "prune.structured"
    Params = StructuredParams
    needs_calibration = True
    description = "remove attention heads and FFN channels by Fisher/Taylor saliency (NViT); smaller layers"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        p = self.params
        attns = find_attentions(graph) if p.heads else []
        ffns = find_ffns(graph) if p.channels else []
        if not attns and not ffns:
            raise CompressorError(
                "prune.structured found nothing to prune: it removes attention heads (a qkv Linear reshaped to "
                "[B, N, 3, heads, head_dim]) and FFN channels (Linear → GELU → Linear), and this model has "
                f"{'neither' if p.heads and p.channels else 'none of the enabled kinds'}. It is for ViTs; for a CNN "
                "use int8-ptq.")
        before = graph.constant_numel()
        tensors = _unit_tensors(graph, attns, ffns)
        saliency = _saliency(graph, ctx, tensors, attns, ffns)
        keep_heads, keep_channels = self._select(saliency, attns, ffns, graph)
        for a, keep in zip(attns, keep_heads, strict=True):
            _shrink_attention(graph, a, keep)
        for f, keep in zip(ffns, keep_channels, strict=True):
            _shrink_ffn(graph, f, keep)
        graph.drop_unused_attrs()
        graph.recompile()
        try:
            graph(*graph.example_inputs)
        except Exception as e:  # a reshape with the old width we did not recognise
            raise CompressorError(f"prune.structured left an inconsistent graph ({type(e).__name__}: {e}); "
                                  "this attention layout is not supported, use heads: false") from e
        after = graph.constant_numel()
        return {"params_before": before, "params_after": after, "param_ratio": round(after / before, 4),
                "heads": [{"module": graph.module_path(a.qkv).rpartition(".")[0], "kept": len(k), "of": a.heads}
                          for a, k in zip(attns, keep_heads, strict=True)],
                "channels": [{"module": graph.module_path(f.fc1).rpartition(".")[0], "kept": len(k),
                              "of": graph.attr(f.fc1.args[1]).shape[0]}
                             for f, k in zip(ffns, keep_channels, strict=True)]}

    def _select(self, saliency: list[torch.Tensor], attns: list[Attention], ffns: list[FFN],
                graph: Graph) -> tuple[list[list[int]], list[list[int]]]:
        """Cheapest units first (saliency per parameter) until the parameter budget is removed."""
        units = []  # (score per param, params, group index, unit index)
        for gi, (s, cost) in enumerate(zip(saliency, _unit_costs(graph, attns, ffns), strict=True)):
            units += [(float(s[u]) / cost, cost, gi, u) for u in range(len(s))]
        total = sum(cost for _, cost, _, _ in units)
        floors = [1] * len(attns) + [self.params.min_channels] * len(ffns)
        alive = [len(s) for s in saliency]
        dropped: list[set[int]] = [set() for _ in saliency]
        removed = 0
        for _score, cost, gi, u in sorted(units):
            if removed >= self.params.sparsity * total:
                break
            if alive[gi] > floors[gi]:
                dropped[gi].add(u)
                alive[gi] -= 1
                removed += cost
        keep = [[u for u in range(len(s)) if u not in d] for s, d in zip(saliency, dropped, strict=True)]
        return keep[:len(attns)], keep[len(attns):]


def _weights(graph: Graph, node: fx.Node) -> list[torch.Tensor]:
    return [graph.attr(a) for a in node.args[1:3] if isinstance(a, fx.Node)]


def _unit_tensors(graph: Graph, attns: list[Attention], ffns: list[FFN]) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for node in [n for a in attns for n in (a.qkv, a.proj)] + [n for f in ffns for n in (f.fc1, f.fc2)]:
        for t in _weights(graph, node):
            seen.setdefault(id(t), t)
    return list(seen.values())


def _unit_contributions(graph: Graph, grads: dict[int, torch.Tensor], attns: list[Attention],
                        ffns: list[FFN]) -> list[torch.Tensor]:
    """Σ θ·∂L/∂θ per unit, one vector per attention (heads) and per FFN (channels)."""
    def prod(node: fx.Node, i: int) -> torch.Tensor | None:
        if len(node.args) <= i or not isinstance(node.args[i], fx.Node):
            return None
        t = graph.attr(node.args[i])
        return t.detach() * grads[id(t)]

    out = []
    for a in attns:
        w, b = prod(a.qkv, 1), prod(a.qkv, 2)
        per = w.reshape(3, a.heads, a.head_dim, -1).sum((0, 2, 3))
        if b is not None:
            per = per + b.reshape(3, a.heads, a.head_dim).sum((0, 2))
        out.append(per + prod(a.proj, 1).reshape(-1, a.heads, a.head_dim).sum((0, 2)))
    for f in ffns:
        w1, b1, w2 = prod(f.fc1, 1), prod(f.fc1, 2), prod(f.fc2, 1)
        out.append(w1.sum(1) + (b1 if b1 is not None else 0) + w2.sum(0))
    return out


def _saliency(graph: Graph, ctx: PassContext, tensors: list[torch.Tensor], attns: list[Attention],
              ffns: list[FFN]) -> list[torch.Tensor]:
    total: list[torch.Tensor] | None = None
    for grads in batch_gradients(graph, ctx, tensors, self_label_loss, "unit saliency"):
        by_id = {id(t): g for t, g in zip(tensors, grads, strict=True)}
        sq = [c.double() ** 2 for c in _unit_contributions(graph, by_id, attns, ffns)]
        total = sq if total is None else [t + s for t, s in zip(total, sq, strict=True)]
    assert total is not None
    return total


def _unit_costs(graph: Graph, attns: list[Attention], ffns: list[FFN]) -> list[int]:
    """Parameters one unit of each group carries."""
    costs = []
    for a in attns:
        c_in, c_out = graph.attr(a.qkv.args[1]).shape[1], graph.attr(a.proj.args[1]).shape[0]
        costs.append(a.head_dim * (3 * c_in + 3 + c_out))
    for f in ffns:
        costs.append(graph.attr(f.fc1.args[1]).shape[1] + 1 + graph.attr(f.fc2.args[1]).shape[0])
    return costs


def _replace(graph: Graph, layer: fx.Node, i: int, value: torch.Tensor, tag: str) -> None:
    path = graph.module_path(layer) or layer.name
    layer.update_arg(i, graph.add_buffer(f"{path}.{tag}", value.contiguous(), before=layer))


def _shrink_attention(graph: Graph, a: Attention, keep: list[int]) -> None:
    idx = torch.tensor(keep)
    rows = (torch.arange(3).reshape(3, 1, 1) * a.heads * a.head_dim + idx.reshape(1, -1, 1) * a.head_dim
            + torch.arange(a.head_dim).reshape(1, 1, -1)).flatten()
    cols = (idx.reshape(-1, 1) * a.head_dim + torch.arange(a.head_dim)).flatten()
    _replace(graph, a.qkv, 1, graph.attr(a.qkv.args[1]).detach()[rows], "weight_heads")
    if len(a.qkv.args) > 2 and isinstance(a.qkv.args[2], fx.Node):
        _replace(graph, a.qkv, 2, graph.attr(a.qkv.args[2]).detach()[rows], "bias_heads")
    _replace(graph, a.proj, 1, graph.attr(a.proj.args[1]).detach()[:, cols], "weight_heads")
    shape = list(a.split.args[1])
    shape[3] = len(keep)
    a.split.update_arg(1, shape)
    merged = list(a.merge.args[1])
    merged[-1] = len(keep) * a.head_dim
    a.merge.update_arg(1, merged)


def _shrink_ffn(graph: Graph, f: FFN, keep: list[int]) -> None:
    idx = torch.tensor(keep)
    _replace(graph, f.fc1, 1, graph.attr(f.fc1.args[1]).detach()[idx], "weight_channels")
    if len(f.fc1.args) > 2 and isinstance(f.fc1.args[2], fx.Node):
        _replace(graph, f.fc1, 2, graph.attr(f.fc1.args[2]).detach()[idx], "bias_channels")
    _replace(graph, f.fc2, 1, graph.attr(f.fc2.args[1]).detach()[:, idx], "weight_channels")
