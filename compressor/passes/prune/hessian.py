"""Input Hessians H = XᵀX of Linear and Conv layers over the calibration set, for second-order pruning.

OBS-style methods (`prune.nm`'s SparseGPT update, `prune.block`'s refit) measure the damage of
a weight change by ‖ΔW X‖², whose curvature is XᵀX of the layer input. A conv's reduction is
its im2col patch, taken here in (kernel position, input channel) column order, the order the
pruning masks group along.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from compressor.graph.graph import Graph, is_kind
from compressor.passes.base import PassContext
from compressor.passes.calibrate import calibrate, insert_observers, observer_of, remove_observer

aten = torch.ops.aten


@dataclass(frozen=True)
class Patches:
    """How a conv reads its input: im2col with these settings gives one row per output position."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]


class HessianObserver(nn.Module):
    """Accumulates XᵀX of a layer input (rows = every position of every image), streamed.

    One input can feed a Linear and several convs of different geometry; each consumer's
    `Patches` (None for a Linear) gets its own Hessian.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hessians: dict[Patches | None, torch.Tensor] = {}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for view in self.hessians:
            flat = _rows(x, view).double()
            self.hessians[view] = self.hessians[view] + flat.T @ flat
        return x


def _rows(x: torch.Tensor, view: Patches | None) -> torch.Tensor:
    """Linear inputs (..., C) as (rows, C); conv inputs as im2col patches in (kernel position, C) order."""
    if view is None:
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, view.kernel, view.dilation, view.padding, view.stride)  # (B, C·k, L), C-major
    c = x.shape[1]
    return cols.reshape(x.shape[0], c, -1, cols.shape[-1]).permute(0, 3, 2, 1).reshape(-1, cols.shape[1])


def patches_of(node: fx.Node, weight: torch.Tensor) -> Patches | None:
    """The im2col geometry of a 2-D conv node (None for a Linear); raises for grouped/transposed convs."""
    if is_kind(node, "linear"):
        return None
    if node.target == aten.convolution.default:
        _, _, _, stride, padding, dilation, transposed, _, groups = node.args
    else:
        defaults = [None, None, None, [1, 1], [0, 0], [1, 1], 1]
        _, _, _, stride, padding, dilation, groups = [*node.args, *defaults[len(node.args):]]
        transposed = False
    if transposed or groups != 1 or weight.dim() != 4 or isinstance(padding, str):
        raise ValueError("grouped, transposed, non-2-D or string-padded conv")
    return Patches(tuple(weight.shape[2:]), tuple(stride), tuple(padding), tuple(dilation))


def reduction_view(w: torch.Tensor) -> torch.Tensor:
    """(out, reduction) with the reduction in (kernel position, input channel) order for convs."""
    return w.permute(0, *range(2, w.dim()), 1).reshape(w.shape[0], -1) if w.dim() > 2 else w


def from_reduction_view(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 2:
        return flat.reshape(shape)
    return flat.reshape(shape[0], *shape[2:], shape[1]).permute(0, len(shape) - 1, *range(1, len(shape) - 1))


def input_hessians(graph: Graph, ctx: PassContext, targets: list[fx.Node]) -> dict[fx.Node, torch.Tensor]:
    """XᵀX of each target's input in its reduction order, from one streamed calibration pass."""
    observed = insert_observers(graph, [(n, [0]) for n in targets], HessianObserver)
    views = {node: patches_of(node, graph.attr(node.args[1])) for node in targets}
    for node in targets:
        observer_of(graph, node.args[0]).hessians.setdefault(views[node], torch.zeros(()))
    calibrate(graph, ctx, "collecting Hessians")
    found = {node: observer_of(graph, node.args[0]).hessians[views[node]] for node in targets}
    for obs_node in observed.values():
        remove_observer(graph, obs_node)
    return found


def prunable_layers(graph: Graph, skip: list[str], unfit: Callable[[torch.Tensor], str | None],
                    keep_ends: bool = True) -> tuple[list[fx.Node], list[str]]:
    """Linear and plain 2-D Conv nodes with constant weights, minus `skip` globs, the first and last such
    layer with `keep_ends` (found from the graph, not by name), and those `unfit` names a reason for;
    returns (targets, skipped with their reasons) so reports say why a layer stayed dense."""
    found, skipped = [], []
    in_skip = graph.matcher(skip, "skip")
    layers = [n for n in graph.nodes
              if (is_kind(n, "linear") or is_kind(n, "conv")) and graph.is_constant(n.args[1])]
    ends = {layers[0], layers[-1]} if keep_ends and layers else set()
    for node in layers:
        path, w = graph.module_path(node), graph.attr(node.args[1])
        if node in ends:
            skipped.append(path)
            continue
        try:
            patches_of(node, w)
        except ValueError as e:
            skipped.append(f"{path} ({e})")
            continue
        if in_skip(node):
            skipped.append(path)
        elif (reason := unfit(w)) is not None:
            skipped.append(f"{path} ({reason})")
        else:
            found.append(node)
    return found, skipped
