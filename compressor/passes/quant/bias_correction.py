"""`quant.bias_correction`: empirical bias correction (DFQ §4.2, NNCF's FastBiasCorrection) after int8 PTQ.

Rounding weights to 8 bits shifts each output channel's mean by (W_q − W)·E[x], and in depthwise
convs, with 9 or 25 weights per channel, that shift is a sizeable part of the signal; activation
quantizers upstream shift the means further. This pass walks the quantized graph layer by layer in
topological order over the calibration images and, for every quantized Conv/Linear with an int32
bias, adds to the bias the difference between the float model's mean output (each channel,
averaged over batch and space) and the quantized model's, measured on the quantized model with
every earlier correction already in place. The corrected bias is written back as int32 codes on
the same s_x·s_w grid, so the exported artifact changes only in its bias initializers.

The float model is the quantized graph itself with its quantizers bypassed and the float weights
and biases that `quant.int8_ptq` recorded on each DequantizeLinear.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import fx

from compressor.errors import CompressorError
from compressor.graph.graph import Graph, is_kind
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.quant import ops
from compressor.passes.quant.reconstruct import float_overrides, is_symbolic, run_nodes


class BiasCorrectionParams(PassParams):
    images: int = Field(128, ge=1, description="calibration images the means are taken over")
    batch_size: int = Field(32, ge=1, description="images run together (memory: every live activation of a batch)")


@register_pass
class BiasCorrection(Pass):
    name = "quant.bias_correction"
    Params = BiasCorrectionParams
    needs_calibration = True
    description = "empirical bias correction: each quantized layer's per-channel output mean matched to the float model"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        layers = _corrected_layers(graph)
        if not layers:
            raise CompressorError("quant.bias_correction found no quantized Conv/Linear with an int32 bias; run it "
                                  "after quant.int8_ptq in the recipe.")
        with ctx.limited(self.params.images):
            batches = list(ctx.calibration_batches())
        if not ctx.fixed_batch:  # a static-batch program runs only at the batch its calibration comes in
            batches = list(torch.cat(batches).split(self.params.batch_size))
        walk = _Lockstep(graph, batches)
        records = []
        for out, bias_dq in ctx.progress.track(layers, "bias correction", total=len(layers)):
            shift = walk.mean_gap(out)
            walk.shift(out, _apply(graph, bias_dq, shift))
            records.append({"module": graph.module_path(out) or out.name,
                            "mean_abs_shift": round(float(shift.abs().mean()), 6),
                            "max_abs_shift": round(float(shift.abs().max()), 6)})
        graph.recompile()
        return {"corrected_layers": len(records), "images": sum(len(b) for b in batches), "layers": records}


class _Lockstep:
    """The quantized graph and its float twin evaluated side by side, node by node, over the calibration
    batches: each layer's correction is measured with every earlier one in place, and each node is
    computed once (values are freed after their last use)."""

    def __init__(self, graph: Graph, batches: tuple[torch.Tensor, ...]) -> None:
        self.graph = graph
        self.order = [n for n in graph.nodes if n.op == "call_function" and not is_symbolic(n)]
        index = {n: i for i, n in enumerate(self.order)}
        self.last_use = {n: max((index.get(u, len(self.order)) for u in n.users), default=-1) for n in graph.nodes}
        self.floats = float_overrides(graph)
        placeholder = next(n for n in graph.nodes if n.op == "placeholder")
        self.envs = [({placeholder: x}, {placeholder: x}) for x in batches]
        self.done = 0

    @torch.no_grad()
    def mean_gap(self, node: fx.Node) -> torch.Tensor:
        """Per channel (axis 1, or the last axis of a 2-D output): float mean − quantized mean of `node`."""
        stop = self.order.index(node) + 1
        todo = self.order[self.done:stop]
        total, count = None, 0
        for quantized, floating in self.envs:
            run_nodes(self.graph, todo, quantized)
            run_nodes(self.graph, todo, floating, self.floats)
            for env in (quantized, floating):
                for n in [n for n in env if self.last_use[n] < stop and n is not node]:
                    del env[n]
            gap = (floating[node] - quantized[node]).double()
            dims = [d for d in range(gap.dim()) if d != 1] if gap.dim() > 2 else [0]
            total = gap.sum(dims) if total is None else total + gap.sum(dims)
            count += gap.numel() // gap.shape[1]
        self.done = stop
        return (total / count).float()

    @torch.no_grad()
    def shift(self, node: fx.Node, delta: torch.Tensor) -> None:
        """Add the per-channel change of `node`'s bias to its value in the quantized walk."""
        for quantized, _ in self.envs:
            value = quantized[node]
            quantized[node] = value + delta.reshape(-1, *([1] * (value.dim() - 2))) if value.dim() > 2 \
                else value + delta


def _corrected_layers(graph: Graph) -> list[tuple[fx.Node, fx.Node]]:
    """(output node, int32 bias DequantizeLinear) of every quantized layer, in graph order: the Conv itself,
    or the bias Add behind a Linear's MatMul."""
    found = []
    for node in graph.nodes:
        if is_kind(node, "conv") and len(node.args) > 2:
            bias = node.args[2]
        elif is_kind(node, "add") and len(node.args) == 2 and is_kind(node.args[0], "matmul"):
            bias = node.args[1]
        else:
            continue
        if isinstance(bias, fx.Node) and bias.target is ops.DEQUANTIZE and graph.annotation(bias, ops.FLOAT_VALUE) \
                is not None and graph.attr(bias.args[0]).dtype == torch.int32:
            found.append((node, bias))
    return found


def _apply(graph: Graph, bias_dq: fx.Node, shift: torch.Tensor) -> torch.Tensor:
    """Add `shift` to the int32 bias codes (rounded on their own grid, saturating at int32); returns the
    change of the dequantized bias."""
    codes, scale = graph.attr(bias_dq.args[0]), graph.attr(bias_dq.args[1])
    info = torch.iinfo(torch.int32)
    old = codes.clone()
    codes.copy_(torch.clamp(codes.double() + torch.round(shift / scale).double(), info.min, info.max).to(torch.int32))
    return (codes.double() - old.double()).float() * scale
