"""`reparam.fold_bn`: fold inference BatchNorm into the Conv or Linear before it.

BN in eval mode is a per-channel affine map, so `bn(conv(x)) = conv'(x)` with
`W' = W·γ/√(σ²+ε)` (per output channel) and `b' = (b − μ)·γ/√(σ²+ε) + β`. Folding removes a
memory-bound op and, for quantization, lets the runtime fuse Conv with its output quantizer
(a Conv → BN → Q chain cannot become one integer kernel).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from compressor.graph.graph import Graph
from compressor.passes.base import Pass, PassContext, PassParams, register_pass

aten = torch.ops.aten


class FoldBNParams(PassParams):
    pass


@register_pass
class FoldBN(Pass):
    name = "reparam.fold_bn"
    Params = FoldBNParams
    description = "fold inference BatchNorm into the preceding Conv/Linear (exact in float)"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        folded = []
        for kind in ("conv", "linear"):
            for layer, bn in graph.match(kind, "batch_norm"):
                if _foldable(graph, layer, bn):
                    _fold(graph, layer, bn)
                    folded.append(graph.module_path(bn))
        graph.drop_unused_attrs()
        graph.recompile()
        return {"folded": len(folded), "batch_norms": folded}


def bn_params(bn: fx.Node) -> tuple[Any, ...]:
    """(weight, bias, running_mean, running_var, eps) for either ATen BN signature."""
    if bn.target == aten.batch_norm.default:
        _, w, b, mean, var, _training, _momentum, eps = bn.args[:8]
    else:  # _native_batch_norm_legit_no_training(input, weight, bias, mean, var, momentum, eps)
        _, w, b, mean, var, _momentum, eps = bn.args[:7]
    return w, b, mean, var, eps


def _foldable(graph: Graph, layer: fx.Node, bn: fx.Node) -> bool:
    transposed = layer.target == aten.convolution.default and bool(layer.args[6])
    w, b, mean, var, _ = bn_params(bn)
    consts = [layer.args[1], mean, var] + [p for p in (w, b) if p is not None]
    bias_ok = len(layer.args) < 3 or layer.args[2] is None or graph.is_constant(layer.args[2])
    return not transposed and bias_ok and all(graph.is_constant(c) for c in consts)


def _fold(graph: Graph, layer: fx.Node, bn: fx.Node) -> None:
    w_node = layer.args[1]
    weight = graph.attr(w_node).detach()
    bias_node = layer.args[2] if len(layer.args) > 2 else None
    bias = graph.attr(bias_node).detach() if bias_node is not None else torch.zeros(weight.shape[0])
    gamma_n, beta_n, mean_n, var_n, eps = bn_params(bn)
    mean, var = graph.attr(mean_n).detach(), graph.attr(var_n).detach()
    gamma = graph.attr(gamma_n).detach() if gamma_n is not None else torch.ones_like(mean)
    beta = graph.attr(beta_n).detach() if beta_n is not None else torch.zeros_like(mean)
    factor = gamma / torch.sqrt(var + eps)
    new_w = weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    new_b = (bias - mean) * factor + beta
    path = graph.module_path(layer) or layer.name
    layer.update_arg(1, graph.add_buffer(f"{path}.weight_bn_folded", new_w, before=layer))
    b_node = graph.add_buffer(f"{path}.bias_bn_folded", new_b, before=layer)
    if len(layer.args) > 2:
        layer.update_arg(2, b_node)
    else:
        layer.args = (*layer.args, b_node)
    out = bn
    if bn.target != aten.batch_norm.default:  # the legit op returns (out, mean, var); users take [0]
        out = next(u for u in bn.users if u.args[1] == 0)
    out.replace_all_uses_with(layer)
