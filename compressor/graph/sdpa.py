"""Decompose fused attention so passes can see (and quantize) q·kᵀ, softmax and ·v."""

from __future__ import annotations

import math

import torch

from compressor.errors import CompressorError
from compressor.graph.graph import Graph

aten = torch.ops.aten


def decompose_sdpa(graph: Graph) -> int:
    """Rewrite each `scaled_dot_product_attention` as matmul → scale → (mask) → softmax → matmul.

    The result equals SDPA's math path in float. Dropout must be 0 (inference graphs); causal
    and additive/boolean masks are kept. Returns how many nodes were rewritten.
    """
    count = 0
    for node in graph.find("sdpa"):
        q, k, v = node.args[:3]
        opts = dict(zip(("attn_mask", "dropout_p", "is_causal"), node.args[3:], strict=False))
        opts.update({key: val for key, val in node.kwargs.items()})
        if opts.get("dropout_p", 0.0):
            raise CompressorError(f"{graph.module_path(node)}: attention dropout {opts['dropout_p']} in an "
                                  "inference graph; put the model in eval mode before compressing.")
        scale = opts.get("scale") or 1.0 / math.sqrt(q.meta["val"].shape[-1])
        kt = graph.call(aten.transpose.int, (k, -2, -1), before=node, like=node)
        scores = graph.call(aten.matmul.default, (q, kt), after=kt, like=node)
        scores = graph.call(aten.mul.Tensor, (scores, scale), after=scores, like=node)
        last = scores
        mask = opts.get("attn_mask")
        boolean = mask is not None and mask.meta["val"].dtype == torch.bool
        if opts.get("is_causal"):
            mask = last = _causal_mask(graph, q, k, after=last, like=node)
            boolean = True
        if mask is not None:
            if boolean:
                neg = graph.call(aten.logical_not.default, (mask,), after=last, like=node)
                last = graph.call(aten.masked_fill.Scalar, (scores, neg, float("-inf")), after=neg, like=node)
            else:
                last = graph.call(aten.add.Tensor, (scores, mask), after=last, like=node)
        probs = graph.call(aten.softmax.int, (last, -1), after=last, like=node)
        out = graph.call(aten.matmul.default, (probs, v), after=probs, like=node)
        node.replace_all_uses_with(out)
        graph.gm.graph.erase_node(node)
        count += 1
    if count:
        graph.recompile()
    return count


def _causal_mask(graph: Graph, q: torch.fx.Node, k: torch.fx.Node, after: torch.fx.Node,
                 like: torch.fx.Node) -> torch.fx.Node:
    lq, lk = q.meta["val"].shape[-2], k.meta["val"].shape[-2]
    ones = graph.call(aten.ones.default, ((lq, lk),), after=after, like=like)
    ones.kwargs = {"dtype": torch.bool}
    return graph.call(aten.tril.default, (ones,), after=ones, like=like)
