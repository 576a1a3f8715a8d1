"""`reparam.repavit`: fold RePaViT's channel-idle FFNs into one C×C matrix plus a thin nonlinear branch.

A channel-idle FFN is `x + fc2(BN₂(φ_A(fc1(BN₁(x)))))` where the activation φ touches only the
hidden channels A and the idle channels I pass through. At inference both BatchNorms are constant
affine maps, so everything but φ_A is linear in x and the idle channels and the shortcut sum to
one matrix (methods.md §5.2). With W₁', b₁' and W₂', b₂' the Linears with BN₁/BN₂ folded in:

    out = Q·φ(P x + b₁'[A]) + M x + c,   P = W₁'[A, :],  Q = W₂'[:, A],
    M = W₂'[:, I]·W₁'[I, :] + I_C,       c = W₂'[:, I]·b₁'[I] + b₂'

FFN weights go from 2CD to C² + 2Ca (3C² at RePaViT's 75 % idle, D = 4C). With no idle channel
(a = D) the M term is just the shortcut x, with no active one (a = 0) the FFN is `M x + c`.

By default the two products that meet at the output run as one Linear, `[Q | M]·[φ(P x + b₁'[A]); x] + c`:
one GEMM with a reduction of a + C instead of two GEMMs and an add, about 20 % faster for a ViT-S
FFN in ONNX Runtime on CPU. `merge_shortcut: false` keeps the two Linears and the add of §5.2,
for targets or later passes that want the products apart (int8 PTQ gets its own input scale
per Linear then; on the MNIST RePa ViT both forms gave the same int8 top-1 ±0.2).

FFNs are found by their ATen pattern, not by module names: a BatchNorm over the last axis (bare
on 2-D input, between two transposes, or between reshapes to and from 2-D) → Linear → the hidden
channels concatenated from last-axis slices of that Linear's output, each either activated or not
→ BatchNorm → Linear, optionally added to the FFN's input. The fold is computed in float64, so the
rewritten graph differs from the original by the final cast and float reassociation only.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import fx

from compressor.errors import CompressorError
from compressor.graph.graph import Graph, is_kind
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.reparam.fold_bn import bn_params

aten = torch.ops.aten

_ACTIVATIONS = (aten.gelu.default, aten.relu.default, aten.silu.default)
_TO_2D = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints)
_FROM_2D = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.view_as.default,
            aten.unflatten.int)
_SLICE_DEFAULTS = (None, 0, None, None, 1)  # aten.slice.Tensor(self, dim=0, start=None, end=None, step=1)
_LINEAR_CLASS = "torch.nn.modules.linear.Linear"


class RePaViTParams(PassParams):
    merge_shortcut: bool = Field(True, description="one Linear over [φ(P x + b), x] instead of Q·φ(P x + b) + M x")


@dataclass
class ChannelIdleFFN:
    """One matched FFN. `order[j]` is the fc1 output channel at BN₂ position j; `active[j]` says
    whether it went through the activation (RePaViT: order = 0..D-1, active = the first a)."""

    x: fx.Node
    bn1: fx.Node | None  # None for a plain FFN converted by `reparam.channel_idle` (no BatchNorm)
    fc1: fx.Node
    bn2: fx.Node | None
    fc2: fx.Node
    out: fx.Node  # the residual add, or fc2 when the FFN has no shortcut
    act: fx.Node | None  # one of the activation nodes, the template for the folded one
    order: list[int]
    active: list[bool]

    @property
    def residual(self) -> bool:
        return self.out is not self.fc2


@register_pass
class RePaViT(Pass):
    name = "reparam.repavit"
    Params = RePaViTParams
    description = "fold RePaViT channel-idle FFNs (BN, partial activation, BN) into C×C + thin branch (exact)"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        ffns, skipped = [], []
        for fc2 in graph.find("linear"):
            ffn = match_ffn(graph, fc2)
            if ffn is None:
                continue
            c, a, d = _dims(graph, ffn)
            if a < d and c * c + 2 * c * a > 2 * c * d:  # a narrow FFN: its C×C shortcut would outweigh it
                skipped.append(f"{_ffn_path(ffn)} (C={c}, D={d}, a={a}: C² + 2Ca > 2CD)")
                continue
            ffns.append((ffn, fold(graph, ffn, self.params.merge_shortcut)))
        if not ffns:
            found = (f"every one is too narrow to gain from folding: {'; '.join(skipped)}" if skipped else
                     "this model has none (a plain ViT's FFNs are converted by the repavit-convert recipe)")
            raise CompressorError("reparam.repavit folds RePaViT channel-idle FFNs (BatchNorm → Linear → partial "
                                  f"activation → BatchNorm → Linear), and {found}.")
        graph.drop_unused_attrs()
        graph.recompile()
        records = [{"module": path, "channels": c, "hidden": d, "active": a, "residual": ffn.residual,
                    "params_before": before, "params_after": after}
                   for ffn, (path, c, d, a, before, after) in ffns]
        return {"folded": len(records), "params_before": sum(r["params_before"] for r in records),
                "params_after": sum(r["params_after"] for r in records), "skipped": skipped, "ffns": records}


# -- matching -------------------------------------------------------------------------------------
def match_ffn(graph: Graph, fc2: fx.Node) -> ChannelIdleFFN | None:
    """The channel-idle FFN that ends in Linear `fc2`, or None if `fc2` ends none."""
    if not _const_linear(graph, fc2):
        return None
    bn2 = _channel_bn(graph, fc2.args[0])
    if bn2 is None:
        return None
    bn2_node, hidden_node, bn2_nodes = bn2
    hidden = _hidden(hidden_node)
    if hidden is None:
        return None
    fc1, order, active, acts, hidden_nodes = hidden
    if not _const_linear(graph, fc1):
        return None
    bn1 = _channel_bn(graph, fc1.args[0])
    if bn1 is None:
        return None
    bn1_node, x, bn1_nodes = bn1
    out = fc2
    users = list(fc2.users)
    if len(users) == 1 and users[0].target == aten.add.Tensor and not users[0].kwargs:
        add = users[0]
        if list(add.args) in ([x, fc2], [fc2, x]) and _same_shape(add, x):
            out = add
    nodes = {*bn1_nodes, fc1, *hidden_nodes, *bn2_nodes, fc2, out}
    # every node but the output must feed only the FFN, else removing it would break its other users
    if any(u not in nodes for n in nodes - {out} for u in n.users):
        return None
    return ChannelIdleFFN(x, bn1_node, fc1, bn2_node, fc2, out, acts[0] if acts else None, order, active)


def _const_linear(graph: Graph, node: fx.Node) -> bool:
    bias = node.args[2] if len(node.args) > 2 else None
    return (is_kind(node, "linear") and graph.is_constant(node.args[1])
            and (bias is None or graph.is_constant(bias)))


def _shape(node: Any) -> torch.Size | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.shape if isinstance(val, torch.Tensor) else None


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    """Equal shapes, symbolic sizes compared by name (a false 'no' only skips a fold)."""
    sa, sb = _shape(a), _shape(b)
    return sa is not None and sb is not None and str(sa) == str(sb)


def _last_dim(node: fx.Node) -> int | None:
    shape = _shape(node)
    return shape[-1] if shape is not None and len(shape) and isinstance(shape[-1], int) else None


def _eval_bn(graph: Graph, node: Any) -> fx.Node | None:
    """The BatchNorm behind `node` if it is an inference BatchNorm with constant statistics."""
    if not isinstance(node, fx.Node):
        return None
    if node.target == operator.getitem and node.args[1] == 0 and isinstance(node.args[0], fx.Node):
        node = node.args[0]  # _native_batch_norm_legit_no_training returns (out, mean, var)
    if node.target == aten.batch_norm.default:
        if node.args[5]:  # training
            return None
    elif node.target != aten._native_batch_norm_legit_no_training.default:
        return None
    w, b, mean, var, _ = bn_params(node)
    if not all(graph.is_constant(t) for t in (mean, var, *(p for p in (w, b) if p is not None))):
        return None
    return node


def _channel_bn(graph: Graph, node: Any) -> tuple[fx.Node, fx.Node, list[fx.Node]] | None:
    """(bn, input, nodes) if `node` is a BatchNorm over the last axis of `input` in one of three layouts.

    (B, C) tensors need no wrapper; (B, N, C) tokens are normalized either as (B, C, N) between two
    transposes or as (B·N, C) between two reshapes. Each keeps the per-channel affine map on the last axis.
    """
    if not isinstance(node, fx.Node):
        return None
    bn = _eval_bn(graph, node)
    if bn is not None:
        src = bn.args[0]
        shape = _shape(src)
        return (bn, src, [bn, node]) if shape is not None and len(shape) == 2 else None
    if node.target == aten.transpose.int:
        bn = _eval_bn(graph, node.args[0])
        if bn is None or bn.args[0].target != aten.transpose.int:
            return None
        inner, src = bn.args[0], bn.args[0].args[0]
        shape = _shape(src)
        if shape is None or len(shape) < 3:
            return None
        swap = {len(shape) - 1, 1}
        if {d % len(shape) for d in node.args[1:3]} != swap or {d % len(shape) for d in inner.args[1:3]} != swap:
            return None
        return bn, src, [inner, bn, node.args[0], node]
    if node.target in _FROM_2D:
        bn = _eval_bn(graph, node.args[0])
        if bn is None or bn.args[0].target not in _TO_2D:
            return None
        inner, src = bn.args[0], bn.args[0].args[0]
        shape_2d = _shape(inner)
        if shape_2d is None or len(shape_2d) != 2 or _last_dim(src) != shape_2d[-1] or not _same_shape(node, src):
            return None
        return bn, src, [inner, bn, node.args[0], node]
    return None


def _last_dim_range(node: fx.Node) -> tuple[fx.Node, int, int] | None:
    """(source, start, end) if `node` is a contiguous slice of its source's last axis."""
    if node.target == aten.slice.Tensor:
        src, dim, start, end, step = (*node.args, *_SLICE_DEFAULTS[len(node.args):])
        size = _last_dim(src)
        if size is None or step != 1 or dim % len(_shape(src)) != len(_shape(src)) - 1:
            return None
        start = 0 if start is None else start + size if start < 0 else start
        end = size if end is None else end + size if end < 0 else end
        return src, min(start, size), min(end, size)
    if node.target == aten.narrow.default:
        src, dim, start, length = node.args
        size = _last_dim(src)
        if size is None or dim % len(_shape(src)) != len(_shape(src)) - 1:
            return None
        start = start + size if start < 0 else start
        return src, start, start + length
    if node.target == operator.getitem and isinstance(node.args[0], fx.Node):
        split, i = node.args
        if split.target not in (aten.split_with_sizes.default, aten.split.Tensor):
            return None
        src, sizes, dim = (*split.args, 0)[:3]
        size = _last_dim(src)
        if size is None or dim % len(_shape(src)) != len(_shape(src)) - 1:
            return None
        if isinstance(sizes, int):
            sizes = [min(sizes, size - s) for s in range(0, size, sizes)]
        start = sum(sizes[:i])
        return src, start, start + sizes[i]
    return None


def _hidden(node: Any) -> tuple[fx.Node, list[int], list[bool], list[fx.Node], list[fx.Node]] | None:
    """(fc1, order, active, activation nodes, nodes) for the hidden tensor between fc1 and BN₂.

    Either the concatenation of last-axis slices of fc1's output, each activated or not (the
    channel-idle form), or fc1's output activated whole (no idle channel) or not at all (no active one).
    """
    if not isinstance(node, fx.Node):
        return None
    if node.target in _ACTIVATIONS:
        fc1 = node.args[0]
        size = _last_dim(fc1) if isinstance(fc1, fx.Node) else None
        return None if size is None else (fc1, list(range(size)), [True] * size, [node], [node])
    if node.target != aten.cat.default:
        size = _last_dim(node)
        return None if size is None else (node, list(range(size)), [False] * size, [], [])
    parts, dim = (*node.args, 0)[:2]
    shape = _shape(node)
    if shape is None or dim % len(shape) != len(shape) - 1:
        return None
    order: list[int] = []
    active: list[bool] = []
    acts: list[fx.Node] = []
    nodes = [node]
    fc1 = None
    for part in parts:
        is_act = isinstance(part, fx.Node) and part.target in _ACTIVATIONS
        sliced = part.args[0] if is_act else part
        rng = _last_dim_range(sliced) if isinstance(sliced, fx.Node) else None
        if rng is None or (fc1 is not None and rng[0] is not fc1):
            return None
        fc1, start, end = rng
        if is_act:
            if acts and (part.target, part.args[1:], part.kwargs) != (acts[0].target, acts[0].args[1:],
                                                                        acts[0].kwargs):
                return None
            acts.append(part)
            nodes.append(part)
        nodes.append(sliced)
        if sliced.target == operator.getitem:
            nodes.append(sliced.args[0])
        order += range(start, end)
        active += [is_act] * (end - start)
    return (fc1, order, active, acts, nodes) if fc1 is not None else None


# -- folding --------------------------------------------------------------------------------------
def _dims(graph: Graph, ffn: ChannelIdleFFN) -> tuple[int, int, int]:
    """(C, a, D): FFN width, active hidden channels, hidden channels."""
    c = graph.attr(ffn.fc1.args[1]).shape[1]
    return c, sum(ffn.active), len(ffn.order)


def _bn_affine(graph: Graph, bn: fx.Node) -> tuple[torch.Tensor, torch.Tensor]:
    """BN in eval as `scale·z + shift`, in float64."""
    w, b, mean, var, eps = bn_params(bn)
    mean, var = graph.attr(mean).double(), graph.attr(var).double()
    gamma = graph.attr(w).double() if w is not None else torch.ones_like(mean)
    beta = graph.attr(b).double() if b is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + eps)
    return scale, beta - mean * scale


def linear_params(graph: Graph, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor]:
    w = graph.attr(node.args[1])
    bias = node.args[2] if len(node.args) > 2 else None
    b = graph.attr(bias) if bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    return w.double(), b.double()


def _ffn_stack(ffn: ChannelIdleFFN) -> dict[str, tuple[str, Any]]:
    """The module stack fc1 and fc2 share: the FFN module and its parents."""
    s1 = list((ffn.fc1.meta.get("nn_module_stack") or {}).items())
    s2 = list((ffn.fc2.meta.get("nn_module_stack") or {}).items())
    common = []
    for e1, e2 in zip(s1, s2, strict=False):
        if e1 != e2:
            break
        common.append(e1)
    return dict(common)


def _ffn_path(ffn: ChannelIdleFFN) -> str:
    stack = list(_ffn_stack(ffn).values())
    return stack[-1][0] if stack else ""


def _params_before(graph: Graph, ffn: ChannelIdleFFN) -> int:
    """Linear weights and biases and BN affine weights (BN running statistics are not parameters)."""
    consts = [*ffn.fc1.args[1:3], *ffn.fc2.args[1:3], *bn_params(ffn.bn1)[:2], *bn_params(ffn.bn2)[:2]]
    return graph.constant_numel(consts)


@torch.no_grad()
def fold(graph: Graph, ffn: ChannelIdleFFN, merge_shortcut: bool = True) -> tuple[str, int, int, int, int, int]:
    """Rewrite `ffn` as `Q·φ(P x + b₁'[A]) + M x + c`; returns (path, C, D, a, params before, after)."""
    assert ffn.bn1 is not None and ffn.bn2 is not None
    w1, b1 = linear_params(graph, ffn.fc1)
    w2, b2 = linear_params(graph, ffn.fc2)
    s1, t1 = _bn_affine(graph, ffn.bn1)
    s2, t2 = _bn_affine(graph, ffn.bn2)
    w1, b1 = w1 * s1, w1 @ t1 + b1  # BN₁ folded into fc1's input side
    w2, b2 = w2 * s2, w2 @ t2 + b2  # BN₂ folded into fc2's input side
    order = torch.tensor(ffn.order, dtype=torch.long)
    params_before = _params_before(graph, ffn)
    path, channels, a, params_after = emit_channel_idle(graph, ffn, w1[order], b1[order], w2, b2, merge_shortcut)
    return path, channels, len(ffn.order), a, params_before, params_after


def emit_channel_idle(graph: Graph, ffn: ChannelIdleFFN, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                      b2: torch.Tensor, merge_shortcut: bool) -> tuple[str, int, int, int]:
    """Replace `ffn.out` by `Q·φ(P x + b₁[A]) + M x + c` built from the linear maps around the activation:
    fc1 = (w1, b1) with rows in `ffn.active` order, fc2 = (w2, b2). Returns (path, C, a, params)."""
    dtype = graph.attr(ffn.fc2.args[1]).dtype
    act_idx = torch.tensor([j for j, on in enumerate(ffn.active) if on], dtype=torch.long)
    idle_idx = torch.tensor([j for j, on in enumerate(ffn.active) if not on], dtype=torch.long)
    channels, a = w1.shape[1], len(act_idx)
    m = w2[:, idle_idx] @ w1[idle_idx]
    if ffn.residual:
        m = m + torch.eye(channels, dtype=m.dtype)
    c = w2[:, idle_idx] @ b1[idle_idx] + b2

    path, stack = _ffn_path(ffn), _ffn_stack(ffn)

    def call(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None,
             name: str | None = None) -> fx.Node:
        node = graph.call(target, args, before=ffn.out)
        node.kwargs = kwargs or {}
        # a Linear gets a module path of its own (`blocks.0.mlp.shortcut`) so later passes and reports
        # can address it like a module; no such submodule exists, the graph holds its weights as buffers
        node.meta["nn_module_stack"] = {**stack, f"L__self__{name}": (name, _LINEAR_CLASS)} if name else stack
        return node

    def linear(role: str, x: fx.Node, w: torch.Tensor, b: torch.Tensor | None) -> fx.Node:
        name = f"{path}.{role}" if path else role
        args = [x, graph.add_buffer(f"{name}.weight", w.to(dtype).contiguous(), before=ffn.out)]
        if b is not None:
            args.append(graph.add_buffer(f"{name}.bias", b.to(dtype).contiguous(), before=ffn.out))
        return call(aten.linear.default, tuple(args), name=name)

    if a:
        assert ffn.act is not None
        hidden = linear("act_in", ffn.x, w1[act_idx], b1[act_idx])
        act = call(ffn.act.target, (hidden, *ffn.act.args[1:]), dict(ffn.act.kwargs))
        q = w2[:, act_idx]
        if not len(idle_idx):  # M is the identity (the shortcut) or, without one, zero
            out = linear("act_out", act, q, c)
            if ffn.residual:
                out = call(aten.add.Tensor, (out, ffn.x))
        elif merge_shortcut:
            out = linear("out", call(aten.cat.default, ([act, ffn.x], -1)), torch.cat([q, m], 1), c)
        else:
            out = call(aten.add.Tensor, (linear("act_out", act, q, c), linear("shortcut", ffn.x, m, None)))
        params_after = 2 * channels * a + a + channels + (channels * channels if len(idle_idx) else 0)
    else:
        out = linear("shortcut", ffn.x, m, c)
        params_after = channels * channels + channels
    ffn.out.replace_all_uses_with(out)
    return path, channels, a, params_after
