"""Our Q/DQ graph re-expressed in the `quantized_decomposed` dialect that PyTorch's edge backends read.

Why: `quant.int8_ptq` writes `compressor::quantize/dequantize` in the layout ONNX Runtime fuses
(Linear as MatMul(DQ(x), DQ(Wᵀ)) + DQ(int32 bias), uint8 activations). ExecuTorch's XNNPACK
partitioner and coremltools' torch.export frontend only recognise what torchao's `convert_pt2e`
emits: `quantized_decomposed.quantize_per_tensor/dequantize_per_tensor` with Python-scalar
qparams on activations, `dequantize_per_channel` over an int8 constant on weights (float32
scales, int64 zero points, axis 0, range [-127, 127]), float biases, and Linear as `aten.linear`
with the weight [out, in]. `to_pt2e` rewrites a copy of the graph into exactly that form.

Numerics do not change, only the spelling:
- uint8 asymmetric codes become int8 codes with zero point − 128: clamp(round(x/s) + z, 0, 255) − 128
  = clamp(round(x/s) + z − 128, −128, 127), so every dequantized value is identical;
- the [in, out] weight is transposed back to [out, in] with its per-column scales now on axis 0;
- the int32 bias is dequantized once (bq · s_x·s_w, the float our simulation adds), which a backend
  requantizes to the same bq because it uses the same s_x·s_w;
- `quantize_dequantize(x, s, z, qmax)` (low-bit activations) becomes an int8 Q/DQ pair whose range
  is [−128, qmax − 128].
The one caveat is rounding at exact .5 boundaries: `quantized_decomposed` computes x · (1/s)
where we compute x / s, which can differ by one code on a measure-zero set of inputs.

Public API (stable; the CoreML exporter imports it):
- `to_quantized_decomposed(graph) -> fx.GraphModule`: the rewritten copy, still unlifted (weights as
  attributes), for callers that export it themselves;
- `to_pt2e(graph, dynamic_batch=None, max_batch=4096, requantized_only=False) -> ExportedProgram`: that
  copy exported with torch.export, ready for `to_edge_transform_and_lower` or `coremltools.convert`;
- `is_quantized(graph) -> bool`: whether the graph carries any of our Q/DQ ops.
A float graph passes through both functions unchanged (its ops are already plain ATen).

`requantized_only=True` (what the ExecuTorch exporter passes) keeps the int8 weight DQ only on a
Linear/Conv whose output is quantized again (GEMM → [relu/hardtanh] → Q), the one pattern XNNPACK's
static int8 GEMM implements; any other GEMM gets the float weight our simulation computes. Why: a
DQ'd-weight GEMM with a float output makes ExecuTorch 1.5.1's XNNPACK partitioner tag its input DQ
as "implicit" while lowering the GEMM as fp32, so the GEMM reads the raw int8 codes as floats
(the MNIST CNN's logits came out ~380x too large). `int8_ptq`'s Linears all have float outputs.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from compressor.errors import CompressorError
from compressor.passes.quant import ops
from exporters.base import MAX_BATCH, export_program

if TYPE_CHECKING:
    from compressor.graph import Graph

with warnings.catch_warnings():  # registers torch.ops.quantized_decomposed.* (torch.ao warns it is deprecated)
    warnings.simplefilter("ignore")
    import torch.ao.quantization.fx._decomposed

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed
Q_PER_TENSOR = qd.quantize_per_tensor.default
DQ_PER_TENSOR = qd.dequantize_per_tensor.default
Q_PER_CHANNEL = qd.quantize_per_channel.default
DQ_PER_CHANNEL = qd.dequantize_per_channel.default

#: The weight code range convert_pt2e writes for symmetric int8 weights (XNNPACKQuantizer's).
WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
_MATMULS = (aten.matmul.default, aten.mm.default)
_CONVS = (aten.conv2d.default, aten.conv1d.default, aten.convolution.default)
_OURS = (ops.QUANTIZE, ops.DEQUANTIZE, ops.QUANTIZE_DEQUANTIZE)


def is_quantized(graph: Graph) -> bool:
    """Whether `graph` has any compressor Q/DQ op, i.e. whether `to_pt2e` has anything to rewrite."""
    return any(n.op == "call_function" and n.target in _OURS for n in graph.gm.graph.nodes)


def to_pt2e(graph: Graph, dynamic_batch: bool | None = None, max_batch: int = MAX_BATCH,
            requantized_only: bool = False) -> torch.export.ExportedProgram:
    """`to_quantized_decomposed(graph)` exported with torch.export (non-strict).

    `dynamic_batch`: True demands a symbolic batch axis (1..`max_batch`), False a static one (the
    example's batch), None tries dynamic and falls back to static (a graph captured with a fixed
    batch is static). `max_batch` matters to backends that plan memory for the upper bound (ExecuTorch).
    `requantized_only`: see the module docstring.
    """
    gm = to_quantized_decomposed(graph, requantized_only)
    return export_program(gm, graph, dynamic_batch, max_batch, "the quantized_decomposed graph")


def to_quantized_decomposed(graph: Graph, requantized_only: bool = False) -> fx.GraphModule:
    """A copy of `graph.gm` in convert_pt2e's dialect (see the module docstring); `graph` is untouched.

    Raises CompressorError if a compressor Q/DQ node is left that has no exact translation
    (e.g. a dequantize of a computed integer tensor that no quantize produced).
    """
    with warnings.catch_warnings():  # deepcopy of an exported module warns about pytree spec pickling
        warnings.simplefilter("ignore")
        gm = copy.deepcopy(graph.gm)
    if not any(n.op == "call_function" and n.target in _OURS for n in gm.graph.nodes):
        return gm
    rw = _Rewriter(gm, requantized_only)
    rw.linears()
    rw.convs()
    rw.constants()
    rw.activations()
    rw.one_dequantize_per_user()
    left = [n.name for n in gm.graph.nodes if n.op == "call_function" and n.target in _OURS]
    if left:
        raise CompressorError(f"cannot express these compressor Q/DQ nodes as quantized_decomposed ops: "
                              f"{', '.join(left[:8])}")
    rw.finish()
    return gm


class _Rewriter:
    """The in-place edits on the copied GraphModule, one pattern per method, in dependency order:
    weights first (they consume constant DQs), then leftover constant DQs, then activations."""

    def __init__(self, gm: fx.GraphModule, requantized_only: bool = False) -> None:
        self.requantized_only = requantized_only
        self.gm = gm
        self.g = gm.graph
        self._names = 0

    # -- helpers ---------------------------------------------------------------------------------
    def attr(self, node: Any) -> torch.Tensor | None:
        if not (isinstance(node, fx.Node) and node.op == "get_attr"):
            return None
        obj: Any = self.gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj

    def const(self, name: str, value: torch.Tensor, before: fx.Node) -> fx.Node:
        base = name.replace(".", "_")
        unique = base
        while hasattr(self.gm, unique):
            self._names += 1
            unique = f"{base}_{self._names}"
        self.gm.register_buffer(unique, value.detach().clone().contiguous())
        with self.g.inserting_before(before):
            return self.g.get_attr(unique)

    def call(self, target: Any, args: tuple[Any, ...], before: fx.Node, like: fx.Node) -> fx.Node:
        with self.g.inserting_before(before):
            node = self.g.call_function(target, args)
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
            if key in like.meta:
                node.meta[key] = copy.copy(like.meta[key])
        return node

    def const_dq(self, node: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None:
        """(codes, scale, zero_point, axis) if `node` is our DQ of constant codes, else None."""
        if not (isinstance(node, fx.Node) and node.op == "call_function" and node.target is ops.DEQUANTIZE):
            return None
        q, s, z = (self.attr(a) for a in node.args[:3])
        if q is None or s is None or z is None:
            return None
        return q, s, z, int(node.args[3])

    @staticmethod
    def requantized(node: fx.Node) -> bool:
        """Whether `node`'s output is quantized again, directly or through one ReLU/hardtanh."""
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_function" and users[0].target in (
                aten.relu.default, aten.relu_.default, aten.relu6.default, aten.hardtanh.default):
            users = list(users[0].users)
        return len(users) == 1 and users[0].op == "call_function" and users[0].target is ops.QUANTIZE

    def one_dequantize_per_user(self) -> None:
        """A dequantize read by several ops becomes one copy per reader, as convert_pt2e's DuplicateDQPass does.

        Why: XNNPACK's partitioner puts a shared DQ into one consumer's partition only. On an inverted
        residual block (EfficientNet-Lite0) the block input's DQ feeds both the expand conv and the
        residual add; it landed in the add's partition, whose other input comes out of the expand/depthwise/
        project chain in another partition: a cycle, and `to_edge_transform_and_lower` refused the graph
        ("Invalid partition, found dependency cycles"). Copies compute the same values."""
        for node in list(self.g.nodes):
            if node.op != "call_function" or node.target not in (DQ_PER_TENSOR, DQ_PER_CHANNEL):
                continue
            for user in list(node.users)[1:]:
                copy_ = self.call(node.target, node.args, user, node)
                user.replace_input_with(node, copy_)

    def weight_dq(self, codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int,
                  name: str, before: fx.Node, like: fx.Node, gemm: fx.Node | None = None) -> fx.Node:
        """int8 constant + dequantize_per_channel (or per_tensor for one scale), convert_pt2e's weight form;
        with `requantized_only`, the float weight instead when `gemm`'s output is not requantized."""
        if self.requantized_only and gemm is not None and not self.requantized(gemm):
            return self.const(f"{name}_float", self.dequantized(codes, scale, zp, axis).float(), before)
        if codes.dtype != torch.int8:
            raise CompressorError(f"weight {name} has {codes.dtype} codes; XNNPACK/CoreML weights are int8")
        w = self.const(f"{name}_int8", codes, before)
        if scale.numel() == 1 and scale.dim() == 0:
            return self.call(DQ_PER_TENSOR, (w, float(scale), int(zp), WEIGHT_QMIN, WEIGHT_QMAX, torch.int8),
                             before, like)
        s = self.const(f"{name}_scale", scale.float().reshape(-1), before)
        z = self.const(f"{name}_zero_point", zp.to(torch.int64).reshape(-1), before)
        return self.call(DQ_PER_CHANNEL, (w, s, z, axis, WEIGHT_QMIN, WEIGHT_QMAX, torch.int8), before, like)

    @staticmethod
    def dequantized(codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, axis: int) -> torch.Tensor:
        """The float our own DEQUANTIZE computes for constant codes (bit-identical to the simulation)."""
        return ops.dequantize(codes, scale, zp, axis)

    # -- patterns --------------------------------------------------------------------------------
    def linears(self) -> None:
        """matmul(x, DQ(Wᵀ [in, out], axis 1)) [+ DQ(int32 bias)] -> linear(x, DQ(W [out, in], axis 0), float bias)."""
        for mm in list(self.g.nodes):
            if mm.op != "call_function" or mm.target not in _MATMULS:
                continue
            wq = self.const_dq(mm.args[1])
            if wq is None or wq[0].dim() != 2:
                continue
            codes, scale, zp, axis = wq
            if scale.dim() != 0 and axis != 1:
                continue  # per-row scales of Wᵀ have no per-output-channel equivalent
            name = str(mm.args[1].args[0].target).removesuffix("_int8")
            bias, out = None, mm
            users = list(mm.users)
            if len(users) == 1 and users[0].op == "call_function" and users[0].target == aten.add.Tensor:
                add = users[0]
                other = add.args[1] if add.args[0] is mm else add.args[0]
                b = self._bias_value(other, codes.shape[1])
                if b is not None and not add.kwargs:
                    bias, out = self.const(f"{name}_bias", b, mm), add
            w = self.weight_dq(codes.t().contiguous(), scale.reshape(-1) if scale.dim() else scale, zp, 0, name,
                               mm, mm.args[1], gemm=out)
            lin = self.call(aten.linear.default, (mm.args[0], w, bias), out, out)
            out.replace_all_uses_with(lin)
            self.g.erase_node(out)
            if out is not mm:
                self.g.erase_node(mm)

    def _bias_value(self, node: Any, n_out: int) -> torch.Tensor | None:
        """The float bias vector behind `node` (our DQ of int32 codes, or a float constant) if it has
        one value per output column, else None (then the add stays an add)."""
        dq = self.const_dq(node)
        value = self.dequantized(*dq) if dq is not None else self.attr(node)
        if value is None or not value.is_floating_point() or value.shape != (n_out,):
            return None
        return value.float()

    def convs(self) -> None:
        """Conv weights DQ(int8, axis 0) -> dequantize_per_channel; an int32-bias DQ -> its float value."""
        for conv in list(self.g.nodes):
            if conv.op != "call_function" or conv.target not in _CONVS:
                continue
            wq = self.const_dq(conv.args[1])
            if wq is not None:
                codes, scale, zp, axis = wq
                transposed = conv.target == aten.convolution.default and bool(conv.args[6])
                if axis == (1 if transposed else 0) or scale.dim() == 0:
                    name = str(conv.args[1].args[0].target).removesuffix("_int8")
                    conv.update_arg(1, self.weight_dq(codes, scale, zp, axis, name, conv, conv.args[1], gemm=conv))
            bq = self.const_dq(conv.args[2]) if len(conv.args) > 2 else None
            if bq is not None:
                name = str(conv.args[2].args[0].target).removesuffix("_int32")
                conv.update_arg(2, self.const(f"{name}_float", self.dequantized(*bq).float(), conv))

    def constants(self) -> None:
        """Any other DQ of constants: int8 codes keep their dequantize_per_channel form; wider codes
        (an int32 bias not beside a Linear/Conv) are folded to the float the simulation computes."""
        self.g.eliminate_dead_code()  # the weight DQs that linears()/convs() replaced
        for node in list(self.g.nodes):
            dq = self.const_dq(node)
            if dq is None:
                continue
            codes, scale, zp, axis = dq
            name = str(node.args[0].target)
            if codes.dtype == torch.int8 and zp.dtype == torch.int8 and bool((zp == 0).all()):
                new = self.weight_dq(codes, scale, zp, axis, name, node, node)
            else:
                new = self.const(f"{name}_float", self.dequantized(*dq).float(), node)
            node.replace_all_uses_with(new)
            self.g.erase_node(node)

    def activations(self) -> None:
        """Run-time Q/DQ -> per-tensor int8 quantize/dequantize with scalar qparams (per-channel
        quantize_per_channel when an activation has a scale vector); uint8 codes shift by −128."""
        converted: set[fx.Node] = set()  # a DQ keeps its own qparams: they are what the simulation used
        for node in list(self.g.nodes):
            if node.op != "call_function":
                continue
            if node.target is ops.QUANTIZE:
                qparams, per_channel = self._act_qparams(node)
                target = Q_PER_CHANNEL if per_channel else Q_PER_TENSOR
                new = self.call(target, (node.args[0], *qparams), node, node)
                converted.add(new)
                node.replace_all_uses_with(new)
                self.g.erase_node(node)
            elif node.target is ops.DEQUANTIZE and node.args[0] in converted:
                qparams, per_channel = self._act_qparams(node)
                target = DQ_PER_CHANNEL if per_channel else DQ_PER_TENSOR
                new = self.call(target, (node.args[0], *qparams), node, node)
                node.replace_all_uses_with(new)
                self.g.erase_node(node)
            elif node.target is ops.QUANTIZE_DEQUANTIZE:
                s, z, qmax = self.attr(node.args[1]), self.attr(node.args[2]), int(node.args[3])
                if s is None or z is None or s.numel() != 1:
                    continue
                z8 = int(z) - 128  # the simulation's grid is [0, qmax] with zero point z, inside uint8
                qparams = (float(s), z8, -128, qmax - 128, torch.int8)
                q = self.call(Q_PER_TENSOR, (node.args[0], *qparams), node, node)
                dq = self.call(DQ_PER_TENSOR, (q, *qparams), node, node)
                node.replace_all_uses_with(dq)
                self.g.erase_node(node)

    def _act_qparams(self, node: fx.Node) -> tuple[tuple[Any, ...], bool]:
        s, z = self.attr(node.args[1]), self.attr(node.args[2])
        if s is None or z is None:
            raise CompressorError(f"{node.name}: scale and zero point must be constants to export")
        shift = 128 if z.dtype == torch.uint8 else 0
        if z.dtype not in (torch.uint8, torch.int8):
            raise CompressorError(f"{node.name}: {z.dtype} activation codes have no int8 equivalent")
        if s.numel() == 1:
            return (float(s), int(z) - shift, -128, 127, torch.int8), False
        scale = self.const(f"{node.name}_scale", s.float().reshape(-1), node)
        zp = self.const(f"{node.name}_zero_point", z.to(torch.int64).reshape(-1) - shift, node)
        return (scale, zp, int(node.args[3]), -128, 127, torch.int8), True

    def finish(self) -> None:
        self.g.eliminate_dead_code()
        used = {str(n.target) for n in self.g.nodes if n.op == "get_attr"}
        for name, _ in list(self.gm.named_buffers()):
            if name not in used and "." not in name:
                delattr(self.gm, name)
        self.g.lint()
        self.gm.recompile()
