"""`quant.int8_ptq`: static int8 post-training quantization, exported as ONNX Q/DQ.

Weights: int8 symmetric per output channel. Activations: int8/uint8 per tensor with a min-max,
percentile or MSE range from one streamed calibration pass. Quantized: the inputs of Linear,
Conv and both operands of the attention matmuls (q·kᵀ and softmax·v); LayerNorm, Softmax and
GELU stay float.

The layout is chosen for ONNX Runtime's QDQ fusion (measured in benches/spine.py): Linear
weights are stored transposed ([in, out], scales on axis 1) so the graph is MatMul(DQ(x), DQ(Wᵀ))
with no Transpose between the weight's DequantizeLinear and the MatMul; biases are int32 with
scale s_x·s_w behind their own DequantizeLinear; and a Linear on (B, N, C) tokens runs on the
(B·N, C) view, quantized after the reshape. ORT turns a 2-D MatMul+Add into Gemm (with a symbolic
batch it does not for 3-D inputs) and then DQ-Gemm-DQ(int32 bias) into one QGemm with float
output. With a float bias, or on 3-D inputs, it leaves MatMulIntegerToFloat plus a float Add, or
fuses nothing, and the int8 model runs slower than the float one.

`quantize_linear_output` (off by default; for ExecuTorch/XNNPACK): XNNPACK runs a Linear in int8
only when its output is quantized again (DQ → linear → Q), so this also quantizes each quantized
Linear's output per tensor (after a ReLU that follows, as for Conv), on the 2-D (B·N, C) view right
after the bias add, the reshape back to (B, N, C) behind the DQ. A quantizer downstream of that
output through ops that only move elements (reshape, permute, unbind, transpose: q, k and v of a
fused qkv) is not observed on its own but reuses the Linear output's scale and zero point: its
input already lies on that grid, so it rounds nothing (exact) and costs no calibration. A quantizer
behind real arithmetic (GELU, the residual add) keeps its own range: the value is rounded twice.

`reduce_range` (7-bit weights): on x86 CPUs without VNNI, ONNX Runtime's u8×s8 kernels add pairs
of products in int16 with saturation (VPMADDUBSW); 255·127·2 overflows, 255·64·2 does not.
"auto" picks 7 bits when the CPU lacks VNNI, so the simulation equals what the runtime computes.
Depthwise convs keep 8 bits: runtimes compute them with per-element multiply-adds into int32
(no pair sums), exact at 8 bits on the same CPU (measured: 1 step at most against 34 for a dense
conv); on EfficientNet-Lite0 that is 16 of its 49 convs.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field
from torch import fx

from compressor.cpu import has_vnni
from compressor.graph.graph import Graph, is_kind
from compressor.graph.sdpa import decompose_sdpa
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.calibrate import calibrate, insert_observers, observer_of, remove_observer
from compressor.passes.quant import ops
from compressor.passes.quant.layer_rules import LayerRule, LayerSetting, layer_settings
from compressor.passes.quant.observers import (
    HistogramObserver,
    MinMaxObserver,
    affine_qparams,
    symmetric_weight_qparams,
)

aten = torch.ops.aten
# Activations a Conv's output quantizer moves past without a range of their own.
SMOOTH_ACTIVATIONS = (aten.hardswish.default, aten.silu.default, aten.gelu.default, aten.sigmoid.default,
                      aten.hardsigmoid.default, aten.leaky_relu.default, aten.elu.default, aten.mish.default)


class Int8PTQParams(PassParams):
    activation_observer: Literal["minmax", "percentile", "mse"] = Field(
        "mse", description="how an activation's range is chosen from calibration statistics")
    percentile: float = Field(99.99, gt=90.0, le=100.0, description="tail kept by the percentile observer")
    activation_dtype: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8 = asymmetric with a zero point; int8 = symmetric")
    weight_observer: Literal["minmax", "mse"] = Field("minmax", description="per-channel weight range")
    reduce_range: bool | Literal["auto"] = Field(
        "auto", description="7-bit weights (no int16 saturation on CPUs without VNNI); auto detects")
    quantize_linear: bool = True
    quantize_conv: bool = True
    quantize_attention: bool = Field(True, description="quantize both operands of q·kᵀ and softmax·v")
    symmetric_attention: bool = Field(
        False, description="attention matmul operands get zero point 0 (int8 symmetric; uint8 from 0 when never "
                           "negative, as softmax): OpenVINO runs activation x activation matmuls in int8 only so "
                           "(DeiT-S: 24/24 instead of 2/24). Off by default: without VNNI OpenVINO ran DeiT-S 6 % "
                           "slower with them, and ONNX Runtime's fused QLinearMatMul rounds a few outputs one step "
                           "from the simulation (1.7e-3 on the unit tests' ViT, exact with the default)")
    quantize_conv_output: bool = Field(
        True, description="quantize Conv outputs (after the activation that follows: a clamp's range bounds its "
                          "quantizer) so runtimes fuse an int8 Conv")
    quantize_add: bool = Field(
        True, description="quantize the output of a residual Add whose inputs are both quantized, so the runtime "
                          "keeps one integer chain (ONNX Runtime's QLinearAdd)")
    quantize_linear_output: bool = Field(
        False, description="quantize Linear outputs (after a ReLU that follows) so XNNPACK runs an int8 Linear; "
                           "ONNX Runtime's QGemm wants them float")
    weight_bits: int = Field(8, ge=2, le=8, description="weight bits of every quantized Linear/Conv (below 8 the "
                                                        "grid is simulated on int8 storage: ONNX Runtime has int8 "
                                                        "kernels only)")
    skip: list[str] = Field(default_factory=list, description="module paths (glob) kept in float; shorthand for "
                                                              "layers: [{match: PATTERN, quantize: false}]")
    layers: list[LayerRule] = Field(
        default_factory=list, description="per-layer settings by op type or module path (precedence: the pass's "
                                          "own → op → module path; see compressor/passes/quant/layer_rules.py)")
    histogram_bins: int = Field(2048, ge=64, le=65536, multiple_of=4)


@register_pass
class Int8PTQ(Pass):
    name = "quant.int8_ptq"
    Params = Int8PTQParams
    needs_calibration = True
    description = "int8 static PTQ: per-channel weights, per-tensor activations, ONNX Q/DQ"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        p = self.params
        if p.reduce_range == "auto":
            p.reduce_range = not has_vnni()
        decomposed = decompose_sdpa(graph) if p.quantize_attention else 0
        self._setting = layer_settings(graph, [*(LayerRule(match=pat, quantize=False) for pat in p.skip), *p.layers],
                                       LayerSetting(weight_bits=p.weight_bits), "quant.int8_ptq layers")
        targets = self._targets(graph)
        kinds = [k for k, on in (("conv", p.quantize_conv_output), ("linear", p.quantize_linear_output)) if on]
        limits = _output_points(targets, kinds)
        padded = _padded_inputs(targets)
        outputs = list(dict.fromkeys([*limits, *padded.values()]))
        if p.quantize_add:
            outputs += _residual_adds(graph, set(outputs))
        views = _views_of(targets, list(_output_points(targets, ["linear"]))) if p.quantize_linear_output else {}
        inputs = [(node, [i for i in pos if (node, i) not in views and (node, i) not in padded])
                  for node, pos in targets]
        symmetric = {node.args[i] for node, pos in inputs if is_kind(node, "matmul") for i in pos} \
            if p.symmetric_attention else set()
        observers = insert_observers(graph, inputs, self._make_observer, outputs)
        calibrate(graph, ctx)
        act_params = self._insert_activation_qdq(graph, observers, limits, symmetric)
        act_params += _requantize_views(graph, views)
        layers = [self._quantize_weight(graph, node) for node, _ in targets if _weight_arg(graph, node)]
        graph.drop_unused_attrs()
        graph.recompile()
        return {
            "quantized_ops": _count_kinds([n for n, _ in targets]),
            "activation_quantizers": len(act_params),
            "sdpa_decomposed": decomposed,
            "weight_bits_effective": _bits_histogram(layers),
            "calibration_images": ctx.calibration_size(),
            "layers": layers,
            "activations": act_params,
        }

    # -- what to quantize ---------------------------------------------------------------------
    def _targets(self, graph: Graph) -> list[tuple[fx.Node, list[int]]]:
        """(node, activation argument positions) for every op this recipe quantizes."""
        p, found = self.params, []
        for node in graph.nodes:
            if not self._setting(node).quantize:
                continue
            weighted = (p.quantize_linear and is_kind(node, "linear")) or (p.quantize_conv and _forward_conv(node))
            if weighted and graph.is_constant(node.args[1]) and not graph.is_constant(node.args[0]):
                found.append((node, [0]))
            elif p.quantize_attention and is_kind(node, "matmul") and not any(
                    graph.is_constant(a) for a in node.args[:2]):
                found.append((node, [0, 1]))
        return found

    def _make_observer(self) -> MinMaxObserver:
        if self.params.activation_observer == "minmax":
            return MinMaxObserver()
        return HistogramObserver(self.params.histogram_bins)

    # -- rewriting ----------------------------------------------------------------------------
    def _activation_range(self, obs: MinMaxObserver, symmetric: bool) -> tuple[float, float]:
        """The clipping range; a symmetric (zero point 0) int8 grid needs it centred on zero."""
        p = self.params
        if isinstance(obs, HistogramObserver) and p.activation_observer == "mse":
            return obs.mse_range(256, symmetric=symmetric)
        lo, hi = obs.percentile_range(p.percentile) if isinstance(obs, HistogramObserver) else obs.range()
        return (-max(-lo, hi), max(-lo, hi)) if symmetric else (lo, hi)

    def _insert_activation_qdq(self, graph: Graph, observed: dict[fx.Node, fx.Node],
                               limits: dict[fx.Node, tuple[float, float] | None],
                               zero_point_free: set[fx.Node]) -> list[dict[str, Any]]:
        """Q/DQ after each observed tensor; a clamping activation's output stays inside its clamp range,
        so the grid wastes no levels and the runtime may drop the clamp (ONNX Runtime's ClipQuantFusion
        removes a Clip when the quantizer's whole range lies within it). Tensors in `zero_point_free` get
        zero point 0: int8 symmetric, or uint8 from 0 when calibration never saw a negative value."""
        records = []
        for src, obs_node in observed.items():
            obs = observer_of(graph, obs_node)
            dtype = torch.uint8 if self.params.activation_dtype == "uint8" else torch.int8
            if src in zero_point_free:
                dtype = torch.uint8 if obs.lo >= 0 else torch.int8
            lo, hi = self._activation_range(obs, symmetric=dtype == torch.int8)
            clamp = limits.get(src)
            if clamp is not None:
                lo, hi = max(lo, clamp[0]), min(hi, clamp[1])
            scale, zp = affine_qparams(lo, hi, dtype, within=clamp)
            path = graph.module_path(src) or src.name
            s_node = graph.add_buffer(f"{src.name}_act_scale", scale, before=obs_node)
            z_node = graph.add_buffer(f"{src.name}_act_zero_point", zp, before=obs_node)
            q = graph.call(ops.QUANTIZE, (src, s_node, z_node, 0), after=obs_node, like=src)
            dq = graph.call(ops.DEQUANTIZE, (q, s_node, z_node, 0), after=q, like=src)
            remove_observer(graph, obs_node, dq)
            records.append({"tensor": src.name, "module": path, "observed_min": round(obs.lo, 6),
                            "observed_max": round(obs.hi, 6), "clip_min": round(lo, 6), "clip_max": round(hi, 6),
                            "scale": float(scale), "zero_point": int(zp)})
        return records

    @staticmethod
    def _quantize_bias(graph: Graph, node: fx.Node, bias: fx.Node, w_scale: torch.Tensor,
                       path: str) -> tuple[fx.Node, int]:
        """int32 bias on the accumulator's grid (s_x·s_w), so the runtime adds it inside the integer GEMM;
        also how many entries saturated int32 (none after `_bias_safe_scale`)."""
        x_scale = _input_scale(graph, node)
        if x_scale is None or not graph.is_constant(bias):
            return bias, 0
        b = graph.attr(bias).detach().float()
        scale = (x_scale.float() * w_scale).float()
        info = torch.iinfo(torch.int32)
        steps = torch.round(b / scale)
        bq = torch.clamp(steps, info.min, info.max).to(torch.int32)
        nodes = [graph.add_buffer(f"{path}.bias_int32", bq, before=node),
                 graph.add_buffer(f"{path}.bias_scale", scale, before=node),
                 graph.add_buffer(f"{path}.bias_zero_point", torch.zeros_like(bq), before=node)]
        dq = graph.call(ops.DEQUANTIZE, (*nodes, 0), before=node, like=node)
        graph.annotate(dq, ops.FLOAT_VALUE, b)
        return dq, int(((steps < info.min) | (steps > info.max)).sum())

    def _quantize_weight(self, graph: Graph, node: fx.Node) -> dict[str, Any]:
        """Replace the float weight by int8 + per-channel DequantizeLinear."""
        w = graph.attr(node.args[1]).detach()
        bits = self._setting(node).weight_bits
        if bits == 8 and self.params.reduce_range and not _depthwise(graph, node):
            bits = 7
        qmax = 2 ** (bits - 1) - 1
        linear = is_kind(node, "linear")
        if linear:
            w = w.t().contiguous()  # [in, out]: MatMul's B layout, one scale per column
        axis = 1 if linear else 0
        scale = symmetric_weight_qparams(w, axis, qmax, mse=self.params.weight_observer == "mse").float()
        bias = node.args[2] if len(node.args) > 2 else None
        scale, dead = _bias_safe_scale(graph, node, bias, scale)
        shape = [1] * w.dim()
        shape[axis] = -1
        wq = torch.clamp(torch.round(w / scale.reshape(shape)), -qmax, qmax).to(torch.int8)
        sparsity = graph.annotation(node, "sparsity")
        if sparsity is not None:  # pruned weights stay zero whatever the rounding did
            mask = sparsity["mask"].reshape(sparsity["mask"].shape[0], -1)
            wq = wq * (mask.t() if linear else sparsity["mask"]).to(torch.int8)
        path = graph.module_path(node) or node.name
        wq_node = graph.add_buffer(f"{path}.weight_int8", wq, before=node)
        s_node = graph.add_buffer(f"{path}.weight_scale", scale, before=node)
        z_node = graph.add_buffer(f"{path}.weight_zero_point", torch.zeros_like(scale, dtype=torch.int8),
                                  before=node)
        w_dq = graph.call(ops.DEQUANTIZE, (wq_node, s_node, z_node, axis), before=node, like=node)
        saturated = 0
        if bias is not None:
            bias, saturated = self._quantize_bias(graph, node, bias, scale, path)
        if linear:
            x, lead = _flat_input(graph, node)
            out = graph.call(aten.matmul.default, (x, w_dq), before=node, like=node)
            if bias is not None:
                out = graph.call(aten.add.Tensor, (out, bias), before=node, like=node)
            if lead is not None:
                out = _unflatten(graph, node, out, [-1, *lead, w.shape[1]])
            if sparsity is not None:  # the weight is now stored [in, out]: groups run along axis 0
                graph.annotate(w_dq, "sparsity", {**sparsity, "mask": sparsity["mask"].t(), "axis": 0})
            node.replace_all_uses_with(out)
            graph.gm.graph.erase_node(node)
        else:
            node.update_arg(1, w_dq)
            if bias is not None:
                node.update_arg(2, bias)
        graph.annotate(w_dq, "quant", {"weight_bits": bits, "axis": axis})
        graph.annotate(w_dq, ops.FLOAT_VALUE, w)
        err = (wq.float() * scale.reshape(shape) - w).pow(2).mean() / w.pow(2).mean().clamp_min(1e-20)
        return {"module": path, "kind": "linear" if linear else "conv", "shape": list(w.shape),
                "weight_bits": bits,
                "scale_min": float(scale.min()), "scale_max": float(scale.max()), "dead_channels": dead,
                "bias_saturated": saturated, "weight_sqnr_db": round(float(-10 * torch.log10(err.clamp_min(1e-20))), 2)}




def _output_points(targets: list[tuple[fx.Node, list[int]]],
                   kinds: list[str]) -> dict[fx.Node, tuple[float, float] | None]:
    """Where the output of each Conv/Linear of `kinds` is quantized, with the clamp range that bounds it.

    A GEMM's output is quantized after the activation that follows it (TFLite's and ONNX Runtime's
    rule): a clamp (ReLU, ReLU6, hardtanh, clamp) owns its range, so its output, never the raw
    pre-activation, gets the quantizer, and the runtime fuses DQ → Conv → [clamp] → Q into one int8
    Conv. A Conv also moves past a non-clamping activation (hardswish, SiLU, GELU: quantized after it);
    a Linear does not, because XNNPACK's int8 Linear wants its Q right behind the GEMM (or a ReLU).
    """
    outs: dict[fx.Node, tuple[float, float] | None] = {}
    for node, _ in targets:
        if not any(is_kind(node, k) for k in kinds):
            continue
        point, clamp = node, None
        while len(point.users) == 1:
            user = next(iter(point.users))
            bounds = _clamp_range(user)
            if bounds is None and not (is_kind(node, "conv") and user.target in SMOOTH_ACTIVATIONS):
                break
            point, clamp = user, bounds
        outs[point] = clamp
    return outs


def _clamp_range(node: fx.Node) -> tuple[float, float] | None:
    """(lo, hi) of a clamping activation with constant bounds, else None."""
    if node.op != "call_function" or node.args[0] is None:
        return None
    if is_kind(node, "relu"):
        return 0.0, math.inf
    if node.target == aten.relu6.default:
        return 0.0, 6.0
    if node.target in (aten.hardtanh.default, aten.clamp.default):
        default = (-1.0, 1.0) if node.target == aten.hardtanh.default else (-math.inf, math.inf)
        lo, hi = (*node.args[1:3], *default[len(node.args) - 1:])[:2]
        lo = node.kwargs.get("min_val", node.kwargs.get("min", lo))
        hi = node.kwargs.get("max_val", node.kwargs.get("max", hi))
        if all(isinstance(b, (int, float)) or b is None for b in (lo, hi)):
            return (-math.inf if lo is None else float(lo)), (math.inf if hi is None else float(hi))
    return None


def _padded_inputs(targets: list[tuple[fx.Node, list[int]]]) -> dict[tuple[fx.Node, int], fx.Node]:
    """(conv, position) → the tensor behind the zero padding it reads: that tensor is quantized instead.

    Zero padding keeps values on their grid (affine grids hold 0 exactly), so with the quantizer in
    front of the Pad the exported graph reads DQ → Pad → Conv and the Pad folds into the Conv's own
    pads (onnxscript's fuse_pad_into_conv); behind it, the Pad stays a float op between two int8 Convs.
    """
    found = {}
    for node, positions in targets:
        for i in positions:
            src = node.args[i]
            while isinstance(src, fx.Node) and _is_zero_pad(src):
                src = src.args[0]
            if src is not node.args[i]:
                found[node, i] = src
    return found


def _is_zero_pad(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target == aten.constant_pad_nd.default:
        return (node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)) in (0, 0.0)
    if node.target == aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        return mode == "constant" and value in (None, 0, 0.0)
    return False


def _residual_adds(graph: Graph, quantized: set[fx.Node]) -> list[fx.Node]:
    """Adds of two tensors that are both quantized at their producer, in graph order (so an Add that
    reads an earlier such Add counts): their outputs are quantized too, and the runtime adds in int8."""
    adds = []
    for node in graph.nodes:
        if is_kind(node, "add") and len(node.args) == 2 and all(
                isinstance(a, fx.Node) and a in quantized for a in node.args):
            quantized.add(node)
            adds.append(node)
    return adds


def _views_of(targets: list[tuple[fx.Node, list[int]]], outputs: list[fx.Node]) -> dict[tuple[fx.Node, int], fx.Node]:
    """(consumer, argument position) → quantized output, for quantized inputs that are that output seen
    through view ops only (q, k and v sliced from a qkv Linear's output)."""
    views = {}
    for node, positions in targets:
        for i in positions:
            src = node.args[i]
            while src not in outputs and isinstance(src, fx.Node) and src.op == "call_function" \
                    and is_kind(src, "view"):
                src = src.args[0]
            if src in outputs and src is not node.args[i]:
                views[node, i] = src
    return views


def _requantize_views(graph: Graph, views: dict[tuple[fx.Node, int], fx.Node]) -> list[dict[str, Any]]:
    """Q/DQ on each viewed input with the scale and zero point of the output it views (exact: the
    values are already on that grid); one pair per distinct input tensor."""
    made: dict[fx.Node, fx.Node] = {}
    records = []
    for (node, i), out in views.items():
        src = node.args[i]
        if src not in made:
            q_out = next(u for u in out.users if u.target is ops.QUANTIZE)
            made[src] = _requantize(graph, src, q_out)
            records.append({"tensor": src.name, "module": graph.module_path(src) or src.name, "same_as": out.name,
                            "scale": float(graph.attr(q_out.args[1])), "zero_point": int(graph.attr(q_out.args[2]))})
        node.update_arg(i, made[src])
    return records


def _requantize(graph: Graph, src: fx.Node, like_q: fx.Node) -> fx.Node:
    """DQ(Q(src)) with the qparams of the quantize node `like_q`, inserted right after `src`."""
    q = graph.call(ops.QUANTIZE, (src, *like_q.args[1:]), after=src, like=src)
    return graph.call(ops.DEQUANTIZE, (q, *like_q.args[1:]), after=q, like=src)


def _unflatten(graph: Graph, node: fx.Node, out: fx.Node, shape: list[int]) -> fx.Node:
    """`out`, the 2-D result of Linear `node`, reshaped to `shape`; when `node`'s output is quantized
    ([relu] → Q → DQ), that chain moves onto the 2-D result and the reshape behind its DQ, so the GEMM
    feeds its quantizer directly (the int8 Linear pattern of XNNPACK, QGemm's of ONNX Runtime).

    A GEMM that read the old DQ (as an input it quantizes) gets a DQ again, on the same grid."""
    chain, users = [], list(node.users)
    if len(users) == 1 and is_kind(users[0], "relu"):
        chain, users = [users[0]], list(users[0].users)
    if not (len(users) == 1 and users[0].target is ops.QUANTIZE and len(users[0].users) == 1):
        return graph.call(aten.reshape.default, (out, shape), before=node, like=node)
    q = users[0]
    dq = next(iter(q.users))
    for old in [*chain, q, dq]:
        out = graph.call(old.target, (out, *old.args[1:]), before=dq, like=old)
    out = graph.call(aten.reshape.default, (out, shape), before=dq, like=node)
    gemm_uses = [(u, i) for u in dq.users for i, a in enumerate(u.args)
                 if a is dq and any(is_kind(u, k) for k in ("linear", "conv", "matmul"))]
    dq.replace_all_uses_with(out)
    if gemm_uses:
        requantized = _requantize(graph, out, q)
        for u, i in gemm_uses:
            u.update_arg(i, requantized)
    for old in [dq, q, *reversed(chain)]:
        graph.gm.graph.erase_node(old)
    return out


def _flat_input(graph: Graph, node: fx.Node) -> tuple[fx.Node, list[int] | None]:
    """The Linear's quantized input on a 2-D (rows, C) view, and the static dims to restore.

    Only for a dequantized input of rank > 2 whose dims after the batch are static; otherwise the
    input is returned unchanged with None.
    """
    x = node.args[0]
    if not (isinstance(x, fx.Node) and x.target is ops.DEQUANTIZE):
        return x, None
    src = x.args[0].args[0]
    val = src.meta.get("val")
    if val is None or val.dim() <= 2 or not all(isinstance(d, int) for d in val.shape[1:]):
        return x, None
    flat = graph.call(aten.reshape.default, (src, [-1, val.shape[-1]]), before=node, like=node)
    q = graph.call(ops.QUANTIZE, (flat, *x.args[1:]), before=node, like=node)
    return graph.call(ops.DEQUANTIZE, (q, *x.args[1:]), before=node, like=node), list(val.shape[1:-1])


def _bias_safe_scale(graph: Graph, node: fx.Node, bias: fx.Node | None,
                     scale: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-channel weight scales no smaller than the int32 bias needs: s_w ≥ |b| / (s_x · 2³⁰).

    A channel that BatchNorm folding left dead (weights ~1e-15, a real bias) gets a weight scale
    of ~1e-16, and its bias then needs ~10¹⁵ accumulator steps: int32 saturates and the channel's
    output changes (28 of EfficientNet-Lite0's 49 convs had such channels). Raising that channel's
    scale costs nothing (its weights round to 0 either way) and keeps the bias exact. Returns the
    scales and how many channels were raised.
    """
    x_scale = _input_scale(graph, node)
    if bias is None or x_scale is None or not graph.is_constant(bias):
        return scale, 0
    need = graph.attr(bias).detach().abs().float() / (x_scale.float() * 2.0**30)
    return torch.maximum(scale, need), int((need > scale).sum())


def _input_scale(graph: Graph, node: fx.Node) -> torch.Tensor | None:
    """The activation scale of `node`'s input, if that input is a dequantized tensor (zero padding between
    keeps it on the same grid)."""
    x = node.args[0]
    while isinstance(x, fx.Node) and _is_zero_pad(x):
        x = x.args[0]
    if isinstance(x, fx.Node) and x.op == "call_function" and x.target is ops.DEQUANTIZE:
        return graph.attr(x.args[1])
    return None


def _depthwise(graph: Graph, node: fx.Node) -> bool:
    """A grouped conv with one input channel per group (depthwise, any channel multiplier)."""
    if not is_kind(node, "conv"):
        return False
    at = 8 if node.target == aten.convolution.default else 6
    groups = node.args[at] if len(node.args) > at else 1
    weight = graph.attr(node.args[1])
    return groups > 1 and weight is not None and weight.shape[1] == 1


def _forward_conv(node: fx.Node) -> bool:
    """Convolutions but not transposed ones (their weight's output channels sit on axis 1)."""
    transposed = node.target == aten.convolution.default and bool(node.args[6])
    return is_kind(node, "conv") and not transposed


def _weight_arg(graph: Graph, node: fx.Node) -> bool:
    return (is_kind(node, "linear") or is_kind(node, "conv")) and graph.is_constant(node.args[1])


def _bits_histogram(layers: list[dict[str, Any]]) -> dict[str, int]:
    """{bits: layers}: what the rules and `reduce_range` made of the weights."""
    counts: dict[str, int] = {}
    for la in layers:
        counts[str(la["weight_bits"])] = counts.get(str(la["weight_bits"]), 0) + 1
    return dict(sorted(counts.items()))


def _count_kinds(nodes: list[fx.Node]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in nodes:
        kind = next(k for k in ("linear", "conv", "matmul") if is_kind(n, k))
        counts[kind] = counts.get(kind, 0) + 1
    return counts
