"""`reparam.equalize`: cross-layer equalization (DFQ §4, Nagel et al. 2019).

For a layer W1 whose output channel i reaches the next layer W2's input channel i through a
positively homogeneous map f (ReLU, identity, zero padding, spatial mean), f(x/s) = f(x)/s, so
W1' = S⁻¹W1, b1' = S⁻¹b1, W2' = W2·S computes the same function for any positive s. DFQ picks
s_i = √(r1_i·r2_i) / r2_i (r: the channel's weight range in each layer), which gives both layers the
same per-channel range: depthwise convs, whose channels differ by orders of magnitude, stop wasting
their int8 grid, and so do the per-tensor activation grids between the two layers. Chains
(expand → depthwise → project) are equalized pair by pair, repeatedly, until the scales settle.

ReLU6 is not homogeneous: relu6(x/s) ≠ relu6(x)/s once the clamp binds. DFQ replaces it by ReLU,
which changes the model. Here (UNKNOWN in the paper; our design) the clamp is kept and made
harmless instead: a channel whose pre-activation reaches 6 on the calibration images keeps s = 1,
and every other channel's scale is bounded below by m_i/6 (m_i: its observed maximum), so its
scaled values never reach the clamp either. The result is exact for inputs within the observed
ranges; `relu6: relu` is DFQ's replacement, measured against it in benches/conformance.py.
Run after `reparam.fold_bn` (a BatchNorm between the two layers would break the chain).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field
from torch import fx, nn

from compressor.errors import CompressorError
from compressor.graph.graph import Graph, is_kind
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.calibrate import calibrate, insert_observers, observer_of, remove_observer

aten = torch.ops.aten
RELU6_LIMIT = 6.0


class EqualizeParams(PassParams):
    iterations: int = Field(20, ge=1, description="rounds over all pairs (chains share layers) until scales settle")
    relu6: Literal["bounded", "relu"] = Field(
        "bounded", description="bounded: keep ReLU6, scale only within the observed ranges (exact on them); "
                               "relu: DFQ's replacement of ReLU6 by ReLU (changes the model)")
    min_scale: float = Field(1e-2, gt=0, le=1, description="bound on s and 1/s, so no channel is scaled to nothing")


@dataclass(eq=False)  # hashed by identity: scales and limits are kept per pair
class Pair:
    """W1 → (homogeneous ops) → W2, with the clamp on the way if there is one."""

    first: fx.Node
    second: fx.Node
    clamps: list[fx.Node]


class ChannelMax(nn.Module):
    """Running per-channel maximum of a (N, C, ...) tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.max: torch.Tensor | None = None

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.transpose(0, 1).reshape(x.shape[1], -1).amax(1)
        self.max = m if self.max is None else torch.maximum(self.max, m)
        return x


@register_pass
class Equalize(Pass):
    name = "reparam.equalize"
    Params = EqualizeParams
    needs_calibration = True
    description = "cross-layer equalization of consecutive Conv/Linear pairs (DFQ), exact through ReLU/ReLU6"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        p = self.params
        pairs = find_pairs(graph)
        if not pairs:
            raise CompressorError("reparam.equalize found no pair of layers to equalize: it needs a Conv/Linear "
                                  "whose every output channel feeds the next Conv/Linear through ReLU, ReLU6, "
                                  "padding or pooling only (run it after reparam.fold_bn).")
        limits = self._limits(graph, ctx, pairs)
        scales = {pair: torch.ones(_weight(graph, pair.first).shape[0]) for pair in pairs}
        for _ in range(p.iterations):
            for pair in pairs:
                s = _dfq_scale(graph, pair, p.min_scale)
                if pair in limits:
                    s = _bounded(s, limits[pair] / scales[pair])
                _rescale(graph, pair, s)
                scales[pair] = scales[pair] * s
        if p.relu6 == "relu":
            for pair in pairs:
                for clamp in pair.clamps:
                    clamp.target, clamp.args = aten.relu.default, (clamp.args[0],)
        graph.recompile()
        return {"pairs": len(pairs), "relu6": p.relu6,
                "layers": [{"first": graph.module_path(pr.first), "second": graph.module_path(pr.second),
                            "scale_min": round(float(scales[pr].min()), 5),
                            "scale_max": round(float(scales[pr].max()), 5),
                            "held_at_1": int((scales[pr] == 1).sum())} for pr in pairs]}

    def _limits(self, graph: Graph, ctx: PassContext, pairs: list[Pair]) -> dict[Pair, torch.Tensor]:
        """Per pair with a ReLU6: each channel's observed pre-activation maximum (bounded mode only)."""
        clamped = [pr for pr in pairs if pr.clamps] if self.params.relu6 == "bounded" else []
        if not clamped:
            return {}
        sources = [pr.clamps[0].args[0] for pr in clamped]
        observed = insert_observers(graph, [], ChannelMax, sources)
        calibrate(graph, ctx, "equalization ranges")
        limits = {pr: observer_of(graph, observed[src]).max.clone() for pr, src in zip(clamped, sources, strict=True)}
        for obs in observed.values():
            remove_observer(graph, obs)
        graph.recompile()
        return limits


def find_pairs(graph: Graph) -> list[Pair]:
    """Every W1 → W2 chain through homogeneous single-user ops, where W2 reads W1's channels as its input
    channels (a dense or depthwise Conv, or a Linear after spatial pooling)."""
    pairs = []
    for first in graph.nodes:
        if not _weighted(graph, first):
            continue
        node, clamps = first, []
        while len(node.users) == 1:
            user = next(iter(node.users))
            if _weighted(graph, user) and user.args[0] is node and _reads_channels(graph, user, first):
                pairs.append(Pair(first, user, clamps))
                break
            kind = _homogeneous(user)
            if kind is None or user.args[0] is not node:
                break
            if kind == "relu6":
                clamps.append(user)
            node = user
    return pairs


def _weighted(graph: Graph, node: fx.Node) -> bool:
    if not (is_kind(node, "conv") or is_kind(node, "linear")) or not graph.is_constant(node.args[1]):
        return False
    transposed = node.target == aten.convolution.default and bool(node.args[6])
    bias = node.args[2] if len(node.args) > 2 else None
    return not transposed and (bias is None or graph.is_constant(bias))


def _homogeneous(node: fx.Node) -> str | None:
    """'relu6', 'homogeneous' (f(x/s) = f(x)/s for s > 0), or None."""
    if node.op != "call_function":
        return None
    if node.target == aten.relu6.default or (node.target == aten.hardtanh.default and
                                             tuple(node.args[1:3]) == (0.0, RELU6_LIMIT)):
        return "relu6"
    if is_kind(node, "relu"):
        return "homogeneous"
    if node.target == aten.mean.dim and all(d in (2, 3, -1, -2) for d in node.args[1]):
        return "homogeneous"
    if node.target in (aten.pad.default, aten.constant_pad_nd.default):
        value = node.args[3] if node.target == aten.pad.default and len(node.args) > 3 else \
            node.args[2] if node.target == aten.constant_pad_nd.default and len(node.args) > 2 else 0
        return "homogeneous" if value in (None, 0, 0.0) else None
    return None


def _groups(node: fx.Node) -> int:
    at = 8 if node.target == aten.convolution.default else 6
    return node.args[at] if is_kind(node, "conv") and len(node.args) > at else 1


def _reads_channels(graph: Graph, second: fx.Node, first: fx.Node) -> bool:
    """W2's input channel i is W1's output channel i: a dense layer, or depthwise (one channel per group)."""
    channels = _weight(graph, first).shape[0]
    w2 = _weight(graph, second)
    groups = _groups(second)
    return (groups == 1 and w2.shape[1] == channels) or (groups == channels and w2.shape[1] == 1)


def _weight(graph: Graph, node: fx.Node) -> torch.Tensor:
    return graph.attr(node.args[1])


def _dfq_scale(graph: Graph, pair: Pair, bound: float) -> torch.Tensor:
    """s_i = √(r1_i·r2_i) / r2_i, within [bound, 1/bound]."""
    w1, w2 = _weight(graph, pair.first), _weight(graph, pair.second)
    r1 = w1.detach().abs().reshape(w1.shape[0], -1).amax(1)
    r2 = _input_channel_view(w2, _groups(pair.second)).abs().amax(1)
    s = torch.sqrt(r1 * r2) / r2.clamp_min(1e-12)
    return torch.where((r1 > 0) & (r2 > 0), s, torch.ones_like(s)).clamp(bound, 1 / bound)


def _input_channel_view(w2: torch.Tensor, groups: int) -> torch.Tensor:
    """W2 as (input channel, everything that multiplies it)."""
    if groups > 1:  # depthwise: filter i is input channel i
        return w2.detach().reshape(w2.shape[0], -1)
    return w2.detach().transpose(0, 1).reshape(w2.shape[1], -1)


def _bounded(s: torch.Tensor, observed_max: torch.Tensor) -> torch.Tensor:
    """Keep ReLU6 exact: s = 1 where the channel reaches the clamp, s ≥ m/6 (its values stay below 6) elsewhere."""
    binds = observed_max >= RELU6_LIMIT * (1 - 1e-6)
    floor = (observed_max / RELU6_LIMIT).clamp_min(0) * (1 + 1e-3)
    return torch.where(binds, torch.ones_like(s), torch.maximum(s, floor))


@torch.no_grad()
def _rescale(graph: Graph, pair: Pair, s: torch.Tensor) -> None:
    w1, w2 = _weight(graph, pair.first), _weight(graph, pair.second)
    w1.div_(s.reshape(-1, *([1] * (w1.dim() - 1))))
    bias = pair.first.args[2] if len(pair.first.args) > 2 else None
    if bias is not None:
        graph.attr(bias).div_(s)
    if _groups(pair.second) > 1:
        w2.mul_(s.reshape(-1, *([1] * (w2.dim() - 1))))
    else:
        w2.mul_(s.reshape(1, -1, *([1] * (w2.dim() - 2))))
