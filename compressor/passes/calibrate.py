"""Observe tensors of a graph over the calibration set, in one streamed forward pass.

Passes say *which* tensors they need and *what* to accumulate (an observer module: a histogram,
a running min/max, an input Hessian); this module inserts the observers, runs the calibration
data through the graph once with a progress bar, and takes the observers out again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import fx, nn

from compressor.graph.graph import Graph
from compressor.passes.base import PassContext

OBSERVER_PREFIX = "_observer_"


def insert_observers(graph: Graph, inputs: Iterable[tuple[fx.Node, list[int]]], make: Callable[[], nn.Module],
                     outputs: Iterable[fx.Node] = ()) -> dict[fx.Node, fx.Node]:
    """One observer per distinct tensor (shared by all its consumers): `inputs` are (consumer,
    argument positions) whose arguments get observed; `outputs` are nodes whose every use does."""
    observed: dict[fx.Node, fx.Node] = {}

    def observer(src: fx.Node) -> fx.Node:
        if src not in observed:
            i = len(observed)
            while hasattr(graph.gm, f"{OBSERVER_PREFIX}{i}"):  # observers of an earlier call are still in
                i += 1
            name = f"{OBSERVER_PREFIX}{i}"
            graph.gm.add_submodule(name, make())
            with graph.gm.graph.inserting_after(src):
                observed[src] = graph.gm.graph.call_module(name, (src,))
        return observed[src]

    for node, positions in inputs:
        for i in positions:
            node.update_arg(i, observer(node.args[i]))
    for src in outputs:
        obs = observer(src)
        src.replace_all_uses_with(obs, delete_user_cb=lambda user, obs=obs: user is not obs)
    graph.recompile()
    return observed


@torch.no_grad()
def calibrate(graph: Graph, ctx: PassContext, label: str = "calibrating") -> None:
    """Stream the calibration set through the graph once."""
    total = -(-ctx.calibration_size() // ctx.calib_batch_size)
    for x in ctx.progress.track(ctx.calibration_batches(), label, total=total):
        graph.gm(x)


def observer_of(graph: Graph, obs_node: fx.Node) -> nn.Module:
    return graph.gm.get_submodule(str(obs_node.target))


def remove_observer(graph: Graph, obs_node: fx.Node, replacement: fx.Node | None = None) -> None:
    """Take an observer out, re-pointing its uses to `replacement` (default: what it observed)."""
    obs_node.replace_all_uses_with(replacement if replacement is not None else obs_node.args[0])
    graph.gm.graph.erase_node(obs_node)
    delattr(graph.gm, str(obs_node.target))
