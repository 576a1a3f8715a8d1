"""Block reconstruction machinery for `quant.aphq` (methods.md §4.4–4.6), on the captured graph.

- `partition_units`: reconstruction blocks found from the graph itself. A cut is a point in the
  topological order where exactly one computed value is live (the residual stream between
  blocks, the patch tokens, the logits); the segments between cuts are grouped by the common
  module path of their layers up to its last index (`blocks.3`, `layers.0.blocks.1`), so each
  transformer block, the patch embedding and the head become one unit. No timm names.
- `run_nodes`: a small interpreter over a slice of the graph, where chosen nodes can be
  overridden (AdaRound weights, learned activation scales, QDrop, quantizers off) and constants
  cast to float64. It runs autograd through the ATen ops, which a GraphModule under `no_grad`
  would not.
- AdaRound (`adaround_fake`, `rounding_regularizer`), LSQ-style activation scales (`lsq_fake`),
  and the average perturbation Hessian (`average_perturbation_hessian`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from compressor.errors import CompressorError
from compressor.graph.graph import Graph, is_kind
from compressor.passes.base import PassContext
from compressor.passes.quant import ops

Override = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Unit:
    """One reconstruction block: `nodes` in order, reading only `input` (and constants)."""

    name: str
    input: fx.Node
    nodes: tuple[fx.Node, ...]

    @property
    def output(self) -> fx.Node:
        return self.nodes[-1]


def _unit_key(nodes: Iterable[fx.Node]) -> str | None:
    """The common module path of the segment's layers, cut after its last numeric component."""
    paths = [Graph.module_path(n).split(".") for n in nodes if is_kind(n, "linear") or is_kind(n, "conv")]
    if not paths:
        return None
    common = [p[0] for p in zip(*paths, strict=False) if len(set(p)) == 1]
    idx = [i for i, part in enumerate(common) if re.fullmatch(r"\d+", part)]
    return ".".join(common[: idx[-1] + 1] if idx else common[:1]) or Graph.module_path(nodes[0])


def _segments(graph: Graph) -> list[list[fx.Node]]:
    """Split the computed nodes at every point where a single value is live."""
    order = [n for n in graph.nodes if n.op == "placeholder" or (n.op == "call_function" and not is_symbolic(n))]
    if sum(n.op == "placeholder" for n in order) != 1:
        raise CompressorError("block reconstruction needs a graph with exactly one input")
    pos = {n: i for i, n in enumerate(order)}
    pos.update({n: len(order) for n in graph.nodes if n.op == "output"})
    last = {n: max((pos[u] for u in n.users if u in pos), default=-1) for n in order}
    live: set[fx.Node] = set()
    cuts = []
    for i, n in enumerate(order):
        live = {m for m in live | {n} if last[m] > i}
        if live == {n}:
            cuts.append(i)
    return [order[a:b + 1] for a, b in itertools.pairwise(cuts)]  # each starts at its input


def is_symbolic(n: fx.Node) -> bool:
    """A size read off a dynamic dimension (the batch), not a tensor: `run_nodes` supplies it."""
    return isinstance(n.meta.get("val"), torch.SymInt)


def partition_units(graph: Graph) -> list[Unit]:
    """The graph's reconstruction units, in order (see the module docstring)."""
    segments = _segments(graph)
    units: list[tuple[str, list[fx.Node]]] = []
    pending: list[fx.Node] = []
    for seg in segments:
        key = _unit_key(seg[1:])
        if key is None:  # no layer: joins the next unit that has one
            pending += seg[1:]
        elif units and units[-1][0] == key:
            units[-1][1].extend(pending + seg[1:])
            pending = []
        else:
            units.append((key, pending + seg[1:]))
            pending = []
    if not units:
        raise CompressorError("no Linear or Conv layer to reconstruct in this graph")
    units[-1][1].extend(pending)  # trailing parameter-free ops (e.g. a final reshape)
    inputs = [segments[0][0]] + [nodes[-1] for _, nodes in units[:-1]]
    return [Unit(name, inp, tuple(nodes)) for (name, nodes), inp in zip(units, inputs, strict=True)]


def run_nodes(graph: Graph, nodes: Iterable[fx.Node], env: dict[fx.Node, torch.Tensor],
              overrides: dict[fx.Node, Override] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Evaluate `nodes` given the values in `env` (updated in place); returns the last value.
    An override is called with the node's evaluated arguments instead of its target. `dtype`
    casts floating constants (float64 for the Hessian's finite differences)."""
    overrides = overrides or {}
    batch = next(iter(env.values())).shape[0]

    def value(a: fx.Node) -> Any:
        if a in env:
            return env[a]
        if is_symbolic(a):  # captures make only the batch dynamic, so every symbolic size is it
            return batch
        t = graph.attr(a)
        if t is None:
            raise KeyError(f"{a.name} is read before it is computed: not inside this unit")
        t = t.detach()  # constants never train here; the overrides hold what does
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    out = None
    for n in nodes:
        args = fx.node.map_arg(n.args, value)
        kwargs = fx.node.map_arg(n.kwargs, value)
        out = env[n] = overrides[n](*args, **kwargs) if n in overrides else n.target(*args, **kwargs)
    return out


def quantizers(graph: Graph, nodes: Iterable[fx.Node] | None = None) -> dict[fx.Node, str]:
    """Quantizer node → role ('weight', 'act', 'softmax'), among `nodes` or the whole graph."""
    wanted = None if nodes is None else set(nodes)
    return {n: role for n, role in graph.annotated("lowbit") if wanted is None or n in wanted}


def float_overrides(graph: Graph) -> dict[fx.Node, Override]:
    """The float model: every quantizer an identity (exact for RepQ's, since §1.5 is), and every quantized
    constant the float value `quant.int8_ptq` recorded on its DequantizeLinear."""
    floats: dict[fx.Node, Override] = {n: (lambda x, *_: x) for n in quantizers(graph)}
    for node in graph.nodes:
        if node.target is ops.QUANTIZE:
            floats[node] = lambda x, *_: x
        elif node.target is ops.DEQUANTIZE:
            value = graph.annotation(node, ops.FLOAT_VALUE)
            floats[node] = (lambda *_, v=value: v) if value is not None else (lambda x, *_: x)
    return floats


def full_run(graph: Graph, x: torch.Tensor, overrides: dict[fx.Node, Override] | None = None,
             dtype: torch.dtype | None = None) -> dict[fx.Node, torch.Tensor]:
    order = [n for n in graph.nodes if n.op == "call_function" and not is_symbolic(n)]
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    env = {placeholder: x if dtype is None else x.to(dtype)}
    run_nodes(graph, order, env, overrides, dtype)
    return env


# -- AdaRound and learned activation scales (§4.6) ---------------------------------------------
ZETA, GAMMA = 1.1, -0.1  # AdaRound's stretch: h(α) = clamp(sigmoid(α)(ζ − γ) + γ, 0, 1)


def rectified_sigmoid(alpha: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)


def adaround_init(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """α with h(α) equal to the fractional part of w/Δ, so training starts at the float weight."""
    frac = (w / scale - torch.floor(w / scale)).clamp(0.01, 0.99)
    return -torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1)


def adaround_fake(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int,
                  alpha: torch.Tensor, hard: bool = False) -> torch.Tensor:
    """Δ·(clamp(⌊w/Δ⌋ + h(α) + z, 0, qmax) − z); `hard` rounds up exactly where α ≥ 0."""
    h = (alpha >= 0).to(w.dtype) if hard else rectified_sigmoid(alpha)
    return (torch.clamp(torch.floor(w / scale) + h + zero_point, 0, qmax) - zero_point) * scale


def adaround_weight(w: torch.Tensor, scale: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """A float weight on which plain rounding reproduces the hard AdaRound choice: (⌊w/Δ⌋ + h)·Δ."""
    return (torch.floor(w / scale) + (alpha >= 0).to(w.dtype)) * scale


def rounding_regularizer(alpha: torch.Tensor, beta: float) -> torch.Tensor:
    """Σ 1 − |2h(α) − 1|^β: pushes every h(α) to 0 or 1 as β anneals down."""
    return (1 - (2 * rectified_sigmoid(alpha) - 1).abs().pow(beta)).sum()


def rounding_schedule(alphas: list[torch.Tensor], steps: int, warmup: float, beta: tuple[float, float],
                      lam: float) -> Callable[[int], torch.Tensor | float]:
    """λ·Σ(1 − |2h − 1|^β), off for the warm-up fraction, then β annealed linearly from beta[0] to beta[1]."""
    warm = int(warmup * steps)

    def reg(step: int) -> torch.Tensor | float:
        if step < warm or not alphas:
            return 0.0
        b = beta[1] + (beta[0] - beta[1]) * (1 - (step - warm) / max(1, steps - warm))
        return lam * sum(rounding_regularizer(a, b) for a in alphas)

    return reg


def train(loss: Callable[[torch.Tensor], torch.Tensor], groups: list[tuple[list[torch.Tensor], float, bool]], n: int,
          batch: int, steps: int, ctx: PassContext, label: str,
          regularizer: Callable[[int], torch.Tensor | float] | None = None) -> float:
    """Adam over (tensors, lr, cosine-decayed) groups on random minibatches of `n` items; returns the first
    loss. With a regularizer the loss is 2·L/L₀ + reg, APHQ's normalisation (§4.6)."""
    groups = [g for g in groups if g[0]]
    opt = torch.optim.Adam([{"params": ts, "lr": lr} for ts, lr, _ in groups])
    decay = [(lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))) if cos else (lambda s: 1.0) for *_, cos in groups]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    gen = torch.Generator().manual_seed(ctx.seed)
    first = None
    for step in ctx.progress.track(range(steps), label, total=steps):
        value = loss(torch.randint(n, (min(batch, n),), generator=gen))
        first = float(value.detach()) if first is None else first
        total = value if regularizer is None else 2 * value / first + regularizer(step)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
    return float("nan") if first is None else first


@torch.no_grad()
def run_unit(graph: Graph, unit: Unit, x: torch.Tensor, overrides: dict[fx.Node, Override] | None = None,
             batch: int = 128) -> torch.Tensor:
    """The unit's output for every row of `x`, in batches."""
    return torch.cat([run_nodes(graph, unit.nodes, {unit.input: xb}, overrides) for xb in x.split(batch)])


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def lsq_fake(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int) -> torch.Tensor:
    """Uniform fake quantization whose scale learns through a straight-through round (LSQ)."""
    return (torch.clamp(round_ste(x / scale) + zero_point, 0, qmax) - zero_point) * scale


def qdrop(quantized: torch.Tensor, x: torch.Tensor, p: float) -> torch.Tensor:
    """Each element quantized with probability `p`, else left in float (QDrop)."""
    return torch.where(torch.rand_like(x) < p, quantized, x)


# -- Average perturbation Hessian (§4.5) -------------------------------------------------------
def perturbation_direction(shape: torch.Size, direction: str, gen: torch.Generator) -> torch.Tensor:
    """APHQ's all-ones perturbation, or random signs (a Hutchinson probe) in float64."""
    if direction == "ones":
        return torch.ones(shape, dtype=torch.float64)
    return torch.randint(0, 2, shape, generator=gen).to(torch.float64) * 2 - 1


def average_perturbation_hessian(graph: Graph, node: fx.Node, images: torch.Tensor, batch: int = 64,
                                 eps: float = 1e-6, temperature: float = 20.0, direction: str = "rademacher",
                                 seed: int = 0) -> torch.Tensor:
    """H̄ = mean_n |J⁺ − J⁻|, J± = ∂KL(p_FP ‖ p̂)/∂O at O ± ε·v, for the output O of `node`, with the
    float model (quantizers off). In float64: at ε = 1e-6 float32 gradients would be noise.

    APHQ-ViT uses v = 1 (`direction="ones"`), i.e. H·1. In a pre-LayerNorm ViT that direction is
    in the Hessian's null space at every residual-stream output (block or MLP): adding the same ε
    to all channels of a token is removed by the next LayerNorm, so H·1 = 0 and the finite
    difference measures only rounding noise (`tests/test_reconstruct.py` shows it). The default
    draws v from random signs per sample, so |H·v| is a real curvature (Hutchinson-style) signal."""
    base = float_overrides(graph)
    logits = _logits_node(graph)
    inner = base.get(node, node.target)
    gen = torch.Generator().manual_seed(seed)
    total = None
    for x in images.split(batch):
        with torch.no_grad():
            env = full_run(graph, x, base, torch.float64)
        log_p = F.log_softmax(env[logits] / temperature, -1)
        v = perturbation_direction(env[node].shape, direction, gen)
        grads = [_perturbed_gradient(graph, x, base, node, inner, shift, log_p, logits, temperature)
                 for shift in (eps * v, -eps * v)]
        part = (grads[0] - grads[1]).abs().sum(0)
        total = part if total is None else total + part
    return (total / len(images)).float()


def _perturbed_gradient(graph: Graph, x: torch.Tensor, overrides: dict[fx.Node, Override], node: fx.Node,
                        inner: Override, shift: torch.Tensor, log_p: torch.Tensor, logits: fx.Node,
                        temperature: float) -> torch.Tensor:
    """∂KL(p_FP ‖ p̂)/∂O with O, the output of `node`, shifted by `shift`."""
    held: list[torch.Tensor] = []

    def perturb(*args: Any, **kwargs: Any) -> torch.Tensor:
        held.append((inner(*args, **kwargs).detach() + shift).requires_grad_())
        return held[0]

    env = full_run(graph, x, {**overrides, node: perturb}, torch.float64)
    log_q = F.log_softmax(env[logits] / temperature, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum()
    return torch.autograd.grad(kl, held[0])[0]


def _logits_node(graph: Graph) -> fx.Node:
    out = next(n for n in graph.nodes if n.op == "output").args[0]
    return out[0] if isinstance(out, (tuple, list)) else out
