"""`quant.intonly`: I-ViT integer-only inference (methods.md §2) on the captured graph.

The float graph is rewritten node by node into a graph whose every tensor between the input
quantizer and the output dequantizer is an int64 tensor holding integers with a known scale
(a scalar, or one per last-axis channel after a Linear or a LayerNorm):

- image → 8-bit (`quantize_input`); Linear / patch Conv → int8 × int8 + int32 bias
  (`int_linear`; a Conv whose stride equals its kernel becomes patchify + `int_linear`);
  q·kᵀ and attn·v → `int_matmul`; the attention scale folds into the scale, no op;
- LayerNorm → `i_layernorm`, Softmax → `shiftmax`, GELU → `shiftgelu`;
- residual adds → `int_add` into the 16-bit residual stream; cls token and positional
  embedding are quantized to the scale of the branch they meet;
- wherever a consumer needs a narrower or scalar-scaled input, a dyadic `requantize` (8 bits
  for matmul/Linear/Softmax/GELU inputs, 16 for the residual stream);
- the logits leave through `dequantize_output` (no requantization after the head, as I-ViT).

Calibration is PTQ: every requantizer's scale is the absolute max of the float model's value at
that point over `calib_images` images, `S = max|x| / (2^(b−1) − 1)` (I-ViT's rule, without its
EMA, since there is no training run to smooth over). Weights: per output channel, symmetric,
`w_bits`. `finetune_steps` > 0 then trains the weight codes with straight-through estimators
through the float64 simulation, scales frozen, against the float model's logits (distillation).

The resulting graph runs in PyTorch as the integer reference (int64 custom ops), in float64 as
the simulation (`simulate`), and exports to ONNX with integer operators only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from compressor.errors import CompressorError
from compressor.graph.graph import Graph, is_kind, layer_norm_args
from compressor.graph.sdpa import decompose_sdpa
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.calibrate import calibrate, insert_observers, observer_of, remove_observer
from compressor.passes.quant import ops
from compressor.passes.quant.intonly import (
    DEQUANTIZE_OUTPUT,
    I_LAYERNORM,
    INT_ADD,
    INT_LINEAR,
    INT_MATMUL,
    QUANTIZE_INPUT,
    REQUANTIZE,
    SHIFTGELU,
    SHIFTMAX,
    SIMULATIONS,
)
from compressor.passes.quant.intonly.arith import dyadic
from compressor.passes.quant.intonly.layernorm import output_scale
from compressor.passes.quant.intonly.requant import int_range
from compressor.passes.quant.intonly.shiftgelu import MAX_N, gelu_x0
from compressor.passes.quant.intonly.shiftmax import normalizer_bits, shift_exp_n
from compressor.passes.quant.observers import MinMaxObserver

aten = torch.ops.aten
WIDE_SOFTMAX_BITS = 17  # Int.bits of a 16-bit Shiftmax output: 0..2^15 inclusive
NEEDS_8BIT = {aten.linear.default, aten.matmul.default, aten.softmax.int, aten._softmax.default, aten.gelu.default,
              aten.conv2d.default}


class IntOnlyParams(PassParams):
    w_bits: Literal[8, 4] = 8
    residual_bits: int = Field(16, ge=8, le=16, description="I-ViT keeps the residual stream at 16 bits")
    softmax_bits: Literal[8, 16] = Field(8, description="Shiftmax output, 1.0 ↔ 2^(bits−1): 8 feeds attn·v as uint8, "
                                                        "16 (I-ViT's ViT) as two byte planes")
    calib_images: int = Field(256, ge=1)
    finetune_steps: int = Field(0, ge=0, description="STE fine-tune of the weight codes (I-ViT itself is QAT)")
    finetune_lr: float = Field(0.01, gt=0, description="Adam step, in units of one weight code")


@dataclass
class Int:
    """An integer tensor of the new graph: its node, its scale (scalar or per last-axis channel),
    the range it was clipped to, and the float node whose value it stands for (for calibration)."""

    node: fx.Node
    scale: np.ndarray
    bits: int
    src: fx.Node
    unsigned: bool = False

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class Const:
    """A float constant (parameter) plus the shape ops applied to it; quantized when it meets an Int."""

    value: torch.Tensor
    name: str
    chain: list[tuple[Any, tuple]] = field(default_factory=list)


@register_pass
class IntOnly(Pass):
    name = "quant.intonly"
    Params = IntOnlyParams
    needs_calibration = True
    description = "I-ViT integer-only graph: dyadic requantization, Shiftmax, ShiftGELU, I-LayerNorm"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        if decompose_sdpa(graph):  # the new nodes carry no shapes; softmax needs its row length
            ShapeProp(graph.gm).propagate(*graph.example_inputs)
        with ctx.limited(self.params.calib_images):
            amax = record_absmax(graph, ctx)
        lowering = Lowering(graph, amax, self.params)
        graph.gm = lowering.run()
        graph.gm.meta[ops.PRECISION_KEY] = f"int-only w{self.params.w_bits}a8"
        summary: dict[str, Any] = {"ops": lowering.counts()}
        if self.params.finetune_steps:
            summary["finetune"] = finetune(graph, ctx, self.params)
        return summary


# -- calibration -------------------------------------------------------------------------------
def record_absmax(graph: Graph, ctx: PassContext) -> dict[fx.Node, float]:
    """max |value| of every float tensor the graph computes, over the calibration images."""
    if ctx.calibration_size() == 0:
        raise CompressorError("quant.intonly got no calibration images; pass --calib DIR.")
    floats = [n for n in graph.nodes if n.op in ("placeholder", "call_function") and _is_float(n)]
    observers = insert_observers(graph, (), MinMaxObserver, floats)
    calibrate(graph, ctx, "int-only calibration")
    amax = {}
    for src, obs in observers.items():
        lo, hi = observer_of(graph, obs).range()
        amax[src] = max(abs(lo), abs(hi))
        remove_observer(graph, obs)
    graph.recompile()
    return amax


# -- lowering ----------------------------------------------------------------------------------
class Lowering:
    """One walk over the float graph, emitting the integer graph."""

    def __init__(self, graph: Graph, amax: dict[fx.Node, float], params: IntOnlyParams) -> None:
        self.src, self.amax, self.p = graph, amax, params
        self.root = nn.Module()
        self.g = fx.Graph()
        self.env: dict[fx.Node, Any] = {}

    def run(self) -> fx.GraphModule:
        for n in self.src.gm.graph.nodes:
            self.env[n] = self.lower(n)
        return fx.GraphModule(self.root, self.g).train(False)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.g.nodes:
            if n.op == "call_function" and n.target in SIMULATIONS:
                key = n.target.name().split("::")[-1]
                out[key] = out.get(key, 0) + 1
        return out

    # each node kind
    def lower(self, n: fx.Node) -> Any:
        if n.op == "placeholder":
            ph = self.g.placeholder(n.name)
            ph.meta = dict(n.meta)
            scale = self.scale_of(n, 8)
            scale_node = self.buffer("input_scale", torch.tensor(scale, dtype=torch.float32))
            return Int(self.call(QUANTIZE_INPUT, ph, scale_node), np.array(scale), 8, n)
        if n.op == "get_attr":
            return Const(self.src.attr(n).detach(), n.name)
        if n.op == "output":
            return self.g.output(self.lower_output(n.args[0]))
        if n.op == "call_module":  # torch.export's input guard: no computation
            return None
        handler = LOWERINGS.get(n.target)
        if handler is not None:
            return handler(self, n)
        if is_kind(n, "view") or n.target is aten.sym_size.int:
            return self.lower_shape(n)
        raise CompressorError(f"quant.intonly: no integer form for {n.target} at "
                              f"'{self.src.module_path(n) or n.name}'. Supported: Linear, patch Conv (stride = "
                              "kernel), LayerNorm, matmul, Softmax, GELU, residual add, shape ops; use a ViT of "
                              "those ops or a float recipe (int8-ptq) for this model.")

    def lower_output(self, out: Any) -> fx.Node:
        v = self.env[out[0] if isinstance(out, (tuple, list)) else out]
        scale = torch.tensor(v.scale, dtype=torch.float32)
        return self.call(DEQUANTIZE_OUTPUT, v.node, self.buffer("output_scale", scale))

    def lower_shape(self, n: fx.Node) -> Any:
        x = self.env.get(n.args[0]) if isinstance(n.args[0], fx.Node) else None
        if isinstance(x, Const):
            return Const(x.value, x.name, [*x.chain, (n.target, n.args[1:])])
        if isinstance(x, Int):
            if x.per_channel:
                x = self.requant(x, self.bits_ahead(n), x.src)
            return Int(self.call(n.target, x.node, *self.map_args(n.args[1:])), x.scale, x.bits, n, x.unsigned)
        return self.call(n.target, *self.map_args(n.args))

    def lower_linear(self, n: fx.Node) -> Int:
        x = self.as_input(self.env[n.args[0]], 8, n.args[0])
        w, b = self.env[n.args[1]], self.env[n.args[2]] if len(n.args) > 2 and n.args[2] is not None else None
        return self.linear(x, w.value.flatten(1), b.value if b else None, n, x.node)

    def linear(self, x: Int, w: torch.Tensor, b: torch.Tensor | None, n: fx.Node, xnode: fx.Node) -> Int:
        qmax = 2 ** (self.p.w_bits - 1) - 1
        w_scale = (w.double().abs().amax(1) / qmax).clamp_min(1e-12)
        codes = torch.clamp(torch.round(w.double() / w_scale[:, None]), -qmax, qmax).to(torch.int8)
        acc_scale = float(x.scale) * w_scale
        bias = torch.zeros(w.shape[0], dtype=torch.int64) if b is None else torch.round(b.double() / acc_scale).long()
        node = self.call(INT_LINEAR, xnode, self.buffer(f"{n.name}_weight", codes), self.buffer(f"{n.name}_bias", bias))
        return Int(node, acc_scale.numpy(), 32, n)

    def lower_conv(self, n: fx.Node) -> Int:
        x = self.as_input(self.env[n.args[0]], 8, n.args[0])
        w = self.env[n.args[1]].value
        b = self.env[n.args[2]].value if len(n.args) > 2 and n.args[2] is not None else None
        given = list(n.args[3:7])
        stride, pad, dil, groups = given + [1, 0, 1, 1][len(given):]
        kh, kw = w.shape[2:]
        if _pair(stride) != (kh, kw) or _pair(pad) != (0, 0) or _pair(dil) != (1, 1) or groups != 1:
            raise CompressorError(f"quant.intonly: conv '{self.src.module_path(n)}' is not a patch embedding "
                                  f"(stride must equal the kernel {kh}x{kw}, no padding or groups); only patch "
                                  "convs have an integer form here.")
        c, h, wd = _shape(n.args[0])[1:]
        gh, gw = h // kh, wd // kw
        patches = self.call(aten.reshape.default, x.node, [-1, c, gh, kh, gw, kw])
        patches = self.call(aten.permute.default, patches, [0, 2, 4, 1, 3, 5])
        patches = self.call(aten.reshape.default, patches, [-1, gh * gw, c * kh * kw])
        y = self.requant(self.linear(x, w.flatten(1), b, n, patches), self.bits_ahead(n), n)
        y_node = self.call(aten.permute.default, y.node, [0, 2, 1])
        y_node = self.call(aten.reshape.default, y_node, [-1, w.shape[0], gh, gw])
        return Int(y_node, y.scale, y.bits, n)

    def lower_layer_norm(self, n: fx.Node) -> Int:
        x_node, shape, weight, bias, _eps = layer_norm_args(n)
        x = self.env[x_node]
        if x.per_channel or x.bits > self.p.residual_bits:
            x = self.requant(x, self.p.residual_bits, x_node)
        gamma = self.env[weight].value.double() if weight is not None else torch.ones(shape[-1], dtype=torch.float64)
        beta = self.env[bias].value.double() if bias is not None else torch.zeros_like(gamma)
        if bool((gamma == 0).any()):
            raise CompressorError(f"quant.intonly: LayerNorm '{self.src.module_path(n)}' has γ = 0 in some channel; "
                                  "I-LayerNorm folds the affine into the scale and needs γ ≠ 0.")
        out_scale = output_scale(gamma)
        bias_int = torch.round(beta / out_scale).long()
        node = self.call(I_LAYERNORM, x.node, self.buffer(f"{n.name}_bias", bias_int), int(gamma.numel()))
        return Int(node, out_scale.numpy(), 32, n)

    def lower_matmul(self, n: fx.Node) -> Int:
        a = self.env[n.args[0]]
        wide = a.unsigned and a.bits == WIDE_SOFTMAX_BITS  # a 16-bit Shiftmax output enters attn·v as it is
        if not wide:
            a = self.as_input(a, 8, n.args[0])
        b = self.as_input(self.env[n.args[1]], 8, n.args[1])
        return Int(self.call(INT_MATMUL, a.node, b.node, a.unsigned, wide), a.scale * b.scale, 32, n)

    def lower_scale(self, n: fx.Node) -> Int:
        x, c = self.env[n.args[0]], n.args[1]
        if not isinstance(x, Int) or not isinstance(c, (int, float)) or c == 0:
            raise CompressorError(f"quant.intonly: {n.target} at '{self.src.module_path(n)}' multiplies by a tensor; "
                                  "only constant scalars (the attention scale) fold into a scale.")
        factor = 1.0 / c if n.target is aten.div.Tensor else float(c)
        return Int(x.node, x.scale * factor, x.bits, n, x.unsigned)

    def lower_softmax(self, n: fx.Node) -> Int:
        x = self.as_input(self.env[n.args[0]], 8, n.args[0])
        shape = _shape(n)
        if n.args[1] not in (-1, len(shape) - 1):
            raise CompressorError(f"quant.intonly: softmax over dim {n.args[1]} at '{self.src.module_path(n)}'; "
                                  "Shiftmax works on the last axis.")
        x0 = math.floor(-1.0 / float(x.scale))
        bits = self.p.softmax_bits
        node = self.call(SHIFTMAX, x.node, x0, normalizer_bits(x0, int(shape[-1])), bits)
        return Int(node, np.array(2.0 ** -(bits - 1)), bits + 1, n, unsigned=True)

    def lower_gelu(self, n: fx.Node) -> Int:
        x = self.as_input(self.env[n.args[0]], 8, n.args[0])
        x0 = gelu_x0(float(x.scale))
        node = self.call(SHIFTGELU, x.node, x0, shift_exp_n(x0, 2, MAX_N), 8)
        return Int(node, x.scale * 2.0**-7, 16, n)

    def lower_add(self, n: fx.Node) -> Int:
        a, b = (self.env[v] for v in n.args[:2])
        if isinstance(a, Const):
            a, b = b, a
        if not isinstance(a, Int):
            raise CompressorError(f"quant.intonly: add of two constants at '{self.src.module_path(n)}'; fold it first.")
        bits = self.p.residual_bits
        scale = self.scale_of(n, bits)
        lo, hi = int_range(bits)
        ma, ea = self.multiplier(a.scale / scale, n.name)
        if isinstance(b, Const):
            bnode, mb, eb = self.emit_const(b, scale, bits), *self.multiplier(np.array(1.0), n.name)
        else:
            bnode, (mb, eb) = b.node, self.multiplier(b.scale / scale, n.name)
        return Int(self.call(INT_ADD, a.node, ma, ea, bnode, mb, eb, lo, hi), np.array(scale), bits, n)

    def lower_cat(self, n: fx.Node) -> Int:
        parts = [self.env[v] for v in n.args[0]]
        ints = [v for v in parts if isinstance(v, Int)]
        if not ints:
            raise CompressorError(f"quant.intonly: cat of constants at '{self.src.module_path(n)}'; fold it first.")
        first = ints[0]
        if any(v.per_channel or v.scale != first.scale for v in ints):
            bits = max(v.bits for v in ints)
            ints = [self.requant(v, bits, v.src) for v in ints]
            first = ints[0]
        it = iter(ints)
        nodes = [self.emit_const(v, float(first.scale), first.bits) if isinstance(v, Const) else next(it).node
                 for v in parts]
        return Int(self.call(aten.cat.default, nodes, *n.args[1:]), first.scale, first.bits, n)

    # helpers
    def as_input(self, x: Int, bits: int, src: fx.Node) -> Int:
        """`x` as an operand of an 8-bit product: scalar scale, within `bits` (unsigned 0..2^bits ok)."""
        if not x.per_channel and (x.bits <= bits or (x.unsigned and x.bits == bits + 1)):
            return x
        return self.requant(x, bits, src)

    def requant(self, x: Int, bits: int, src: fx.Node) -> Int:
        scale = self.scale_of(src, bits)
        m, e = self.multiplier(x.scale / scale, src.name)
        lo, hi = int_range(bits)
        return Int(self.call(REQUANTIZE, x.node, m, e, lo, hi), np.array(scale), bits, x.src)

    def scale_of(self, n: fx.Node, bits: int) -> float:
        if n not in self.amax:
            raise CompressorError(f"quant.intonly: no calibration statistics for '{n.name}'.")
        return max(self.amax[n], 1e-8) / (2 ** (bits - 1) - 1)

    def multiplier(self, ratio: np.ndarray, name: str) -> tuple[fx.Node, fx.Node]:
        m, e = dyadic(ratio)
        shape = () if np.asarray(ratio).size == 1 else (m.size,)
        return (self.buffer(f"{name}_m", torch.tensor(m.reshape(shape))),
                self.buffer(f"{name}_shift", torch.tensor(e.reshape(shape))))

    def emit_const(self, c: Const, scale: float, bits: int) -> fx.Node:
        lo, hi = int_range(bits)
        node = self.buffer(c.name, torch.clamp(torch.round(c.value.double() / scale), lo, hi).long())
        for target, args in c.chain:
            node = self.call(target, node, *self.map_args(args))
        return node

    def bits_ahead(self, n: fx.Node) -> int:
        """8 if the value, through shape ops, feeds an 8-bit product; else the residual width."""
        todo, seen = [n], set()
        while todo:
            cur = todo.pop()
            for u in cur.users:
                if u in seen:
                    continue
                seen.add(u)
                if u.target in NEEDS_8BIT:
                    return 8
                if is_kind(u, "view"):
                    todo.append(u)
        return self.p.residual_bits

    def map_args(self, args: Any) -> Any:
        def one(a: Any) -> Any:
            v = self.env.get(a) if isinstance(a, fx.Node) else a
            if isinstance(v, Int):
                return v.node
            return v if isinstance(a, fx.Node) else a
        return fx.node.map_aggregate(args, one)

    def buffer(self, name: str, value: torch.Tensor) -> fx.Node:
        base, i = name.replace(".", "_"), 0
        unique = base
        while hasattr(self.root, unique):
            i += 1
            unique = f"{base}_{i}"
        self.root.register_buffer(unique, value)
        return self.g.get_attr(unique)

    def call(self, target: Any, *args: Any) -> fx.Node:
        return self.g.call_function(target, args)


LOWERINGS: dict[Any, Callable[[Lowering, fx.Node], Any]] = {
    aten.linear.default: Lowering.lower_linear,
    aten.conv2d.default: Lowering.lower_conv,
    aten.layer_norm.default: Lowering.lower_layer_norm,
    aten.matmul.default: Lowering.lower_matmul,
    aten.mul.Tensor: Lowering.lower_scale,
    aten.div.Tensor: Lowering.lower_scale,
    aten.softmax.int: Lowering.lower_softmax,
    aten.gelu.default: Lowering.lower_gelu,
    aten.add.Tensor: Lowering.lower_add,
    aten.cat.default: Lowering.lower_cat,
}


def _meta(n: fx.Node) -> Any:
    """The node's tensor description: torch.export's fake value, or ShapeProp's for nodes added later."""
    return n.meta.get("val", n.meta.get("tensor_meta"))


def _shape(n: fx.Node) -> tuple[int, ...]:
    return tuple(_meta(n).shape)


def _is_float(n: fx.Node) -> bool:
    dtype = getattr(_meta(n), "dtype", None)
    return dtype is not None and dtype.is_floating_point


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


# -- simulation and fine-tune ------------------------------------------------------------------
class Simulation(fx.Interpreter):
    """Runs an integer graph in float64: every integer op through its kernel on float64 values.

    With `codes` (trainable float weight codes per int_linear weight buffer) it runs the
    straight-through form used to fine-tune: forward values are exactly the simulation's, and
    each op's gradient is that of its smooth counterpart (`SMOOTH`).
    """

    def __init__(self, gm: fx.GraphModule, codes: dict[str, nn.Parameter] | None = None, qmax: int = 127) -> None:
        super().__init__(gm)
        self.codes, self.qmax = codes, float(qmax)

    def run_node(self, n: fx.Node) -> Any:
        if self.codes is None or n.op != "call_function" or n.target not in SIMULATIONS:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.target is INT_LINEAR:
            code = self.codes[str(n.args[1].target)].clamp(-self.qmax, self.qmax)
            args = (args[0], _ste(code, torch.round(code)), *args[2:])
        exact = SIMULATIONS[n.target](*args, **kwargs)
        smooth = SMOOTH.get(n.target)
        return exact if smooth is None else _ste(smooth(*args), exact)


def _ste(smooth: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    return smooth + (exact - smooth).detach()


def _smooth_layernorm(x: torch.Tensor, bias: torch.Tensor, c: int) -> torch.Tensor:
    y = x - x.mean(-1, keepdim=True)
    return y * 2.0**15 / y.square().sum(-1, keepdim=True).clamp_min(1).sqrt() + bias


#: Differentiable stand-ins, in the integer units of each op's output (S from ShiftExp's x0 ≈ −1/S).
SMOOTH: dict[Any, Callable[..., torch.Tensor]] = {
    REQUANTIZE: lambda x, m, e, lo, hi: torch.clamp(x * m * 2.0**-e, lo, hi),
    INT_ADD: lambda x, mx, ex, y, my, ey, lo, hi: torch.clamp(x * mx * 2.0**-ex + y * my * 2.0**-ey, lo, hi),
    SHIFTMAX: lambda x, x0, k, bits: torch.softmax(x / -x0, -1) * 2.0 ** (bits - 1),
    SHIFTGELU: lambda x, x0, n, bits: x * torch.sigmoid(x / -x0) * 2.0 ** (bits - 1),
    I_LAYERNORM: _smooth_layernorm,
}


def simulate(graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """The float64 simulation's logits; equal to `graph(x)` (the int64 reference) bit for bit."""
    return Simulation(graph.gm).run(x)


def finetune(graph: Graph, ctx: PassContext, params: IntOnlyParams) -> dict[str, Any]:
    """Distill the float model's logits into the weight codes (STE), every scale frozen.

    I-ViT trains the whole model with its quantizers (QAT, §2.8); here only the integer weight
    codes move, so the requantization constants computed at conversion stay valid.
    """
    if ctx.teacher is None:
        raise CompressorError("quant.intonly finetune_steps > 0 needs the float model (PassContext.teacher).")
    gm = graph.gm
    weights = {str(n.args[1].target) for n in gm.graph.nodes if n.target is INT_LINEAR}
    codes = {w: nn.Parameter(getattr(gm, w).double()) for w in weights}
    opt = torch.optim.Adam(codes.values(), lr=params.finetune_lr)
    qmax = 2 ** (params.w_bits - 1) - 1
    sim = Simulation(gm, codes, qmax)
    losses = []
    batches = _cycle(ctx)
    for _ in ctx.progress.track(range(params.finetune_steps), "int-only fine-tune", total=params.finetune_steps):
        x = next(batches)
        with torch.no_grad():
            target = ctx.teacher(x).double()
        loss = torch.nn.functional.mse_loss(sim.run(x).double(), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    changed = 0
    for w, code in codes.items():
        new = torch.clamp(torch.round(code.detach()), -qmax, qmax).to(torch.int8)
        changed += int((new != getattr(gm, w)).sum())
        setattr(gm, w, new)
    return {"steps": params.finetune_steps, "loss_first": losses[0], "loss_last": losses[-1], "codes_changed": changed}


def _cycle(ctx: PassContext) -> Iterator[torch.Tensor]:
    while True:
        yield from ctx.calibration_batches()
