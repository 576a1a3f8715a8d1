"""Per-layer quantization sensitivity: which layers cost the accuracy (`--sensitivity`).

For every quantized layer (Linear, Conv, and the attention matmuls q·kᵀ and attn·V) we measure
two things over the evaluation batches:

- `sqnr_db`: SQNR of the layer's output in the fully quantized graph against the same tensor with
  no quantizer anywhere. It says how much error has piled up by that point (its own plus
  everything upstream), which is what the next layer sees.
- `accuracy_only_this` / `delta`: the metric when only this layer is quantized (its weight, bias
  and input quantizers kept, every other quantizer bypassed) minus the unquantized metric. This
  isolates the layer's own damage, which is what a user deciding what to keep in float needs.

Both references are built from the quantized graph itself, not by matching nodes against the
float graph: "bypassed" means each activation quantizer is replaced by its input and each
quantized weight/bias by the float tensor from `float_graph` (plus the LayerNorm affine that
RepQ's reparameterization folded into the layer). The graph structure (int8's [in, out] MatMul
layout, reshapes, decomposed attention) is then identical between the quantized and the
reference run, so tensors match node for node. That the all-bypassed graph reproduces
`float_graph`'s logits is checked on the first batch; a quantized graph whose float function
differs from `float_graph` (APHQ's MLP refit swaps GELU for ReLU; a graph pruned after capture)
is refused with an explanation instead of reporting misleading numbers.

Rows keep graph order (input to output) so the table reads like the network and a trend along
depth is visible; `rank` (1 = worst) orders them by delta, ties broken by the logit SQNR of the
only-this-layer model, because with a few hundred images many int8 layers tie at a delta of 0.0.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from compressor.data.sources import DataSource
from compressor.errors import CompressorError
from compressor.eval.metrics import Outputs, score, sqnr_db
from compressor.graph.graph import Graph, is_kind
from compressor.passes.quant import ops
from compressor.passes.quant.quantizers import fake_log, fake_tan, fake_uniform, log_sqrt2_as_log2
from compressor.progress import Progress

aten = torch.ops.aten
#: Float-simulated quantizers (first argument = the tensor): low-bit passes before/without lowering.
FAKE_QUANTIZERS = (fake_uniform, fake_log, log_sqrt2_as_log2, fake_tan)
KNOWN_OPS = (ops.QUANTIZE, ops.DEQUANTIZE, ops.QUANTIZE_DEQUANTIZE)
#: Besides the "view" ops, ops after which an output quantizer still belongs to the layer before
#: (e.g. int8's Conv → ReLU → Q/DQ → flatten).
PASS_THROUGH = {aten.relu.default, aten.relu_.default, aten.max_pool2d.default, aten.hardtanh.default,
                aten.clamp.default}
#: Cache the evaluation batches in memory below this size (one decode instead of one per layer).
CACHE_BYTES = 512 << 20
#: The all-bypassed graph must match the float graph this closely (float32 reordering is ~100 dB).
FLOAT_MATCH_DB = 60.0


@dataclass
class Layer:
    """One quantized layer of the quantized graph, by node names (stable under `Graph.clone`)."""

    name: str
    kind: str  # linear | conv | matmul | activation (a quantizer no layer owns)
    compute: str  # the node computing the layer
    output: str  # the node whose value is the layer's output (after its bias)
    float_output: str | None = None  # where that value is in the float graph, if `output` is not there
    act_uses: list[tuple[str, str]] = field(default_factory=list)  # (quantizer node, consumer node)
    weight: str | None = None  # weight quantizer node
    float_weight: torch.Tensor | None = None  # in the quantized graph's layout
    bias: tuple[str, int] | None = None  # (node, argument index) that holds the bias
    float_bias: torch.Tensor | None = None
    layer_norm: str | None = None  # a reparameterized LayerNorm feeding the layer (RepQ)
    float_ln: tuple[Any, Any] | None = None  # its float (weight, bias)
    w_bits: int | None = None
    a_bits: list[int] = field(default_factory=list)

    @property
    def bits(self) -> str:
        w = f"w{self.w_bits}" if self.w_bits else ""
        a = f"a{min(self.a_bits)}" if self.a_bits else ""
        return w + a or "-"


@dataclass
class Sensitivity:
    """The sensitivity table plus the two whole-model numbers it is relative to."""

    metric: str
    images: int
    float_accuracy: float
    quantized_accuracy: float
    rows: list[dict[str, Any]]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "images": self.images, "float_accuracy": self.float_accuracy,
                "quantized_accuracy": self.quantized_accuracy, "seconds": self.seconds, "rows": self.rows}


# -- finding the layers -------------------------------------------------------------------------
def _is_const(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _is_act_quantizer(node: Any) -> bool:
    if not isinstance(node, fx.Node) or node.op != "call_function" or _is_const(node.args[0]):
        return False
    if node.target is ops.DEQUANTIZE:
        return isinstance(node.args[0], fx.Node) and node.args[0].target is ops.QUANTIZE
    return node.target is ops.QUANTIZE_DEQUANTIZE or node.target in FAKE_QUANTIZERS


def _is_const_quantizer(node: Any) -> bool:
    """A quantized constant (weight or bias): DQ of stored codes, or a fake quantizer on a constant."""
    return (isinstance(node, fx.Node) and node.op == "call_function" and _is_const(node.args[0])
            and (node.target is ops.DEQUANTIZE or node.target in FAKE_QUANTIZERS))


def _float_input(q: fx.Node) -> fx.Node:
    """What an activation quantizer quantizes: x of DQ(Q(x)) or of a one-node quantizer."""
    return q.args[0].args[0] if q.target is ops.DEQUANTIZE else q.args[0]


def _act_bits(graph: Graph, q: fx.Node) -> int | None:
    if q.target is ops.DEQUANTIZE:
        return torch.iinfo(graph.attr(q.args[2]).dtype).bits
    if q.target in (ops.QUANTIZE_DEQUANTIZE, fake_uniform):
        return round(math.log2(int(q.args[3]) + 1))
    if q.target in (fake_log, log_sqrt2_as_log2):
        return int(q.args[2])
    if q.target is fake_tan:
        return round(math.log2(graph.attr(q.args[1]).numel()))
    return None


def _weight_bits(graph: Graph, q: fx.Node) -> int | None:
    noted = graph.annotation(q, "quant", {}).get("weight_bits")
    if noted:
        return int(noted)
    if q.target is fake_uniform:
        return round(math.log2(int(q.args[3]) + 1))
    codes = graph.attr(q.args[0])
    if codes.dtype.is_floating_point:
        return None
    if codes.dtype == torch.uint8:  # asymmetric codes: the span reaches the grid's ends
        return max(1, math.ceil(math.log2(int(codes.max()) + 1)))
    return math.ceil(math.log2(int(codes.abs().max()) + 1)) + 1  # symmetric signed


def _check_supported(graph: Graph) -> None:
    for n in graph.nodes:
        if n.op == "call_function" and getattr(n.target, "namespace", None) == "compressor" \
                and n.target not in KNOWN_OPS:
            raise CompressorError(
                f"per-layer sensitivity: node {n.name} calls {n.target}, an integer-only or kernel op with no float "
                "form to bypass; sensitivity supports Q/DQ graphs (quant.int8_ptq, quant.repq/dopq/aphq).")
        if n.target is ops.QUANTIZE and any(u.target is not ops.DEQUANTIZE for u in n.users):
            raise CompressorError(f"per-layer sensitivity: quantized tensor {n.name} feeds an integer consumer "
                                  f"({', '.join(u.name for u in n.users)}); only Q→DQ pairs can be bypassed.")


def _matmul_name(node: fx.Node) -> str:
    """q@k when the product reaches a softmax, attn@v when an operand comes from one."""
    cur = node
    for _ in range(4):
        users = list(cur.users)
        if len(users) != 1:
            break
        cur = users[0]
        if is_kind(cur, "softmax"):
            return "q@k"
    src = node.args[0]
    for _ in range(3):
        if not isinstance(src, fx.Node):
            break
        if is_kind(src, "softmax"):
            return "attn@v"
        src = src.args[0] if src.args else None
    return "matmul"


def _producer(node: fx.Node, computes: dict[str, Layer]) -> Layer | None:
    """The layer whose output `node` is, looking back through value-moving ops."""
    cur: Any = node
    for _ in range(8):
        if not isinstance(cur, fx.Node):
            return None
        if cur.name in computes:
            return computes[cur.name]
        if cur.op != "call_function" or not (cur.target in PASS_THROUGH or is_kind(cur, "view")
                                             or _is_act_quantizer(cur)
                                             or (cur.target is aten.add.Tensor and _is_bias_add(cur))):
            return None
        cur = cur.args[0]
    return None


def _is_bias_add(node: fx.Node) -> bool:
    other = node.args[1] if len(node.args) > 1 else None
    return _is_const(other) or _is_const_quantizer(other)


def _reference_graph(float_graph: Graph, quant_graph: Graph) -> Graph:
    """The float graph in the form the quantizer saw: BatchNorm folded if the quantized graph has none."""
    if float_graph.count("batch_norm") and not quant_graph.count("batch_norm"):
        from compressor.passes import PASSES, PassContext

        folded = float_graph.clone()
        PASSES["reparam.fold_bn"]().run(folded, PassContext())
        return folded
    return float_graph


def _float_counterparts(ref: Graph) -> dict[tuple[str, str], list[fx.Node]]:
    found: dict[tuple[str, str], list[fx.Node]] = {}
    for n in ref.nodes:
        for kind in ("linear", "conv", "layer_norm"):
            if is_kind(n, kind):
                found.setdefault((kind, ref.module_path(n)), []).append(n)
    return found


def quantized_layers(float_graph: Graph, quant_graph: Graph) -> list[Layer]:
    """Every quantized layer of `quant_graph`, in graph order, with the float tensors that bypass it."""
    _check_supported(quant_graph)
    ref = _reference_graph(float_graph, quant_graph)
    counterparts = _float_counterparts(ref)
    used: dict[tuple[str, str], int] = {}
    layers: list[Layer] = []
    computes: dict[str, Layer] = {}
    owned_consts: set[str] = set()
    g = quant_graph
    for n in g.nodes:
        if n.op != "call_function":
            continue
        weighted = (is_kind(n, "linear") or is_kind(n, "conv") or is_kind(n, "matmul")) and len(n.args) > 1 \
            and _is_const_quantizer(n.args[1])
        attention = is_kind(n, "matmul") and not weighted and any(_is_act_quantizer(a) for a in n.args[:2])
        plain = (is_kind(n, "linear") or is_kind(n, "conv")) and _is_act_quantizer(n.args[0])
        if not (weighted or attention or plain):
            continue
        path = g.module_path(n) or n.name
        kind = "conv" if is_kind(n, "conv") else "linear" if (weighted or plain) else "matmul"
        layer = Layer(name=path if kind != "matmul" else f"{path}.{_matmul_name(n)}", kind=kind,
                      compute=n.name, output=n.name)
        if weighted:
            _attach_weight(g, n, layer, counterparts, used, owned_consts)
        layers.append(layer)
        computes[n.name] = layer
    for n in g.nodes:
        if not _is_act_quantizer(n):
            continue
        for user in n.users:
            owner = computes.get(user.name) or _producer(_float_input(n), computes) or computes.get(n.name)
            if owner is None:
                owner = Layer(name=f"{g.module_path(n) or n.name}.act", kind="activation", compute=n.name,
                              output=n.name, float_output=_float_input(n).name)
                layers.append(owner)
                computes[n.name] = owner
            owner.act_uses.append((n.name, user.name))
            bits = _act_bits(g, n)
            if bits is not None and owner.compute == user.name:
                owner.a_bits.append(bits)
    stray = [n.name for n in g.nodes if _is_const_quantizer(n) and n.name not in owned_consts]
    if stray:
        raise CompressorError(f"per-layer sensitivity: quantized constants {stray[:5]} feed no Linear/Conv this "
                              "analysis knows, so they cannot be restored to float.")
    if not layers:
        raise CompressorError("per-layer sensitivity: the graph has no quantized layers (no Q/DQ or fake "
                              "quantizers found); run it on the output of a quant.* pass.")
    _dedupe_names(layers)
    order = {n.name: i for i, n in enumerate(g.nodes)}
    return sorted(layers, key=lambda layer: order[layer.compute])


def _attach_weight(g: Graph, n: fx.Node, layer: Layer, counterparts: dict, used: dict, owned: set[str]) -> None:
    """Weight, bias and (RepQ) LayerNorm of a weighted layer, with their float values."""
    wq = n.args[1]
    layer.weight, layer.w_bits = wq.name, _weight_bits(g, wq)
    owned.add(wq.name)
    key = (layer.kind, g.module_path(n))
    i = used.get(key, 0)
    used[key] = i + 1
    candidates = counterparts.get(key, [])
    if i >= len(candidates):
        raise CompressorError(f"per-layer sensitivity: {layer.name} ({layer.kind}) has no float counterpart in the "
                              "float graph; pass the graph the quantization pass started from.")
    fnode = candidates[i]
    ref_attr = _attr_getter(fnode)
    w = ref_attr(fnode.args[1])
    shape = tuple(wq.meta["val"].shape) if "val" in wq.meta else tuple(g.attr(wq.args[0]).shape)
    if is_kind(n, "matmul") and w.dim() == 2:  # int8 Linear as MatMul(x, Wᵀ): weights stored [in, out]
        w = w.t().contiguous()
    if tuple(w.shape) == shape:
        layer.float_weight = w
    else:
        raise CompressorError(f"per-layer sensitivity: {layer.name}'s float weight {tuple(w.shape)} does not fit its "
                              f"quantized weight {shape}; the float graph is not the one that was quantized.")
    fbias = fnode.args[2] if len(fnode.args) > 2 else None
    layer.float_bias = ref_attr(fbias) if fbias is not None else None
    if is_kind(n, "matmul"):  # int8 Linear lowered to MatMul (+ bias Add)
        users = list(n.users)
        if len(users) == 1 and users[0].target is aten.add.Tensor and users[0].args[0] is n and _is_bias_add(users[0]):
            layer.bias, layer.output = (users[0].name, 1), users[0].name
    elif len(n.args) > 2 and n.args[2] is not None:
        layer.bias = (n.name, 2)
    if layer.bias is not None:
        holder = n if layer.bias[0] == n.name else next(iter(n.users))
        b = holder.args[layer.bias[1]]
        if _is_const_quantizer(b):
            owned.add(b.name)
    ln = _input_layer_norm(n)
    if ln is not None:
        fl = counterparts.get(("layer_norm", g.module_path(ln)), [])
        if len(fl) == 1:
            qw, qb = (g.attr(a) if _is_const(a) else None for a in [*ln.args, None, None][2:4])
            fw, fb = (ref_attr(a) if _is_const(a) else None for a in [*fl[0].args, None, None][2:4])
            if not (_same(qw, fw) and _same(qb, fb)):
                layer.layer_norm, layer.float_ln = ln.name, (fw, fb)


def _attr_getter(node: fx.Node) -> Any:
    gm = node.graph.owning_module

    def get(arg: fx.Node) -> torch.Tensor:
        obj: Any = gm
        for part in str(arg.target).split("."):
            obj = getattr(obj, part)
        return obj.detach()
    return get


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))


def _input_layer_norm(n: fx.Node) -> fx.Node | None:
    """A LayerNorm directly feeding the layer's input quantizer (through reshapes)."""
    cur: Any = n.args[0]
    for _ in range(4):
        if not isinstance(cur, fx.Node):
            return None
        if is_kind(cur, "layer_norm"):
            return cur if len(cur.users) == 1 or all(
                u.target is aten.reshape.default or _is_act_quantizer(u) for u in cur.users) else None
        if not (_is_act_quantizer(cur) or cur.target in (aten.reshape.default, aten.view.default, ops.QUANTIZE)):
            return None
        cur = cur.args[0]
    return None


def _dedupe_names(layers: list[Layer]) -> None:
    seen: dict[str, int] = {}
    for layer in layers:
        k = seen.get(layer.name, 0)
        seen[layer.name] = k + 1
        if k:
            layer.name = f"{layer.name}#{k + 1}"


# -- rewriting ----------------------------------------------------------------------------------
def only_quantized(float_graph: Graph, quant_graph: Graph, keep: Iterable[str],
                   layers: list[Layer] | None = None) -> Graph:
    """A copy of `quant_graph` where only the layers named in `keep` stay quantized.

    Every other layer's input quantizers become identities and its weight, bias and (RepQ-folded)
    LayerNorm go back to the float values, so `keep=all` is the quantized graph and `keep=()` the
    float model, both exactly (tests check it).
    """
    layers = layers if layers is not None else quantized_layers(float_graph, quant_graph)
    keep = set(keep)
    unknown = keep - {layer.name for layer in layers}
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}; choose from {[la.name for la in layers]}")
    g = quant_graph.clone()
    by_name = {n.name: n for n in g.nodes}
    for layer in layers:
        if layer.name not in keep:
            _bypass(g, by_name, layer)
    g.recompile()
    return g


def _ident(name: str) -> str:
    """A buffer name from a layer name ('q@k', '#2' are not identifiers and fx emits attribute access)."""
    return re.sub(r"\W", "_", name)


def _bypass(g: Graph, by_name: dict[str, fx.Node], layer: Layer) -> None:
    for q_name, user_name in layer.act_uses:
        q = by_name[q_name]
        by_name[user_name].replace_input_with(q, _float_input(q))
    compute = by_name[layer.compute]
    if layer.weight is not None and layer.float_weight is not None:
        w = g.add_buffer(f"{_ident(layer.name)}.weight_float", layer.float_weight, before=compute)
        compute.replace_input_with(by_name[layer.weight], w)
    if layer.bias is not None:
        holder, i = by_name[layer.bias[0]], layer.bias[1]
        if layer.float_bias is None and holder.target is aten.add.Tensor:
            holder.replace_all_uses_with(holder.args[0])
        else:
            b = None if layer.float_bias is None else g.add_buffer(f"{_ident(layer.name)}.bias_float", layer.float_bias,
                                                                   before=holder)
            holder.update_arg(i, b)
    if layer.layer_norm is not None and layer.float_ln is not None:
        ln = by_name[layer.layer_norm]
        args = list(ln.args) + [None] * (4 - len(ln.args))
        for k, value in zip((2, 3), layer.float_ln, strict=True):
            args[k] = None if value is None else g.add_buffer(f"{_ident(layer.name)}.ln_float_{k}", value, before=ln)
        ln.args = tuple(args)


class _Tap(nn.Module):
    """Keeps the last tensor it saw, so one forward yields every layer output we compare."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.value = x
        return x


def _tapped(graph: Graph, names: list[str]) -> tuple[Graph, list[_Tap]]:
    g = graph.clone()
    by_name = {n.name: n for n in g.nodes}
    taps = []
    for i, name in enumerate(names):
        tap = _Tap()
        g.gm.add_submodule(f"_sensitivity_tap_{i}", tap)
        with g.gm.graph.inserting_after(by_name[name]):
            g.gm.graph.call_module(f"_sensitivity_tap_{i}", (by_name[name],))
        taps.append(tap)
    g.gm.recompile()  # not Graph.recompile: its dead-code pass would drop the user-less taps
    return g, taps


# -- measuring ----------------------------------------------------------------------------------
def _batches(data: DataSource, batch_size: int, limit: int | None,
             fill: bool) -> Iterable[tuple[torch.Tensor, Any]]:
    """The evaluation batches, decoded once and kept when they are small (one pass per layer)."""
    n = min(len(data), limit or len(data))
    try:
        per_item = 4 * math.prod(data.sample_shape())
    except Exception:  # a source that cannot tell its shape is simply streamed
        per_item = CACHE_BYTES
    if n * per_item <= CACHE_BYTES:
        return list(data.batches(batch_size, limit, fill=fill))

    class Stream:
        def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
            return data.batches(batch_size, limit, fill=fill)
    return Stream()


@torch.no_grad()
def _run(graph: Graph, batches: Iterable[tuple[torch.Tensor, Any]]) -> np.ndarray:
    return np.concatenate([graph.gm(x).float().reshape(x.shape[0], -1).numpy() for x, _ in batches])


def layer_sensitivity(float_graph: Graph, quant_graph: Graph, data: DataSource, metric: str = "top1",
                      batch_size: int = 64, progress: Progress | None = None,
                      limit: int | None = None) -> Sensitivity:
    """Per-layer SQNR and only-this-layer accuracy of `quant_graph` (see the module docstring).

    `float_graph` must compute the function the quantization pass started from (the captured
    baseline is fine: BatchNorm folding is redone here); `metric` is `top1` (needs labels) or
    `agreement` (top-1 agreement with the unquantized model). Cost: two passes over the data plus
    one per layer; `limit` caps the images.
    """
    start = time.perf_counter()
    if metric not in ("top1", "agreement"):
        raise ValueError(f"metric must be 'top1' or 'agreement', not {metric!r}")
    if metric == "top1" and not data.has_labels:
        raise CompressorError(f"{data.description}: top-1 sensitivity needs labels; use metric 'agreement'.")
    progress = progress or Progress()
    layers = quantized_layers(float_graph, quant_graph)
    if quant_graph.fixed_batch:  # a static-batch program: full batches, padded rows dropped below
        batch_size = quant_graph.fixed_batch
    batches = _batches(data, batch_size, limit, fill=bool(quant_graph.fixed_batch))
    n = min(len(data), limit or len(data))
    ref_graph, ref_taps = _tapped(only_quantized(float_graph, quant_graph, (), layers),
                                  [la.float_output or la.output for la in layers])
    q_graph, q_taps = _tapped(quant_graph, [la.output for la in layers])
    noise = np.zeros(len(layers))
    signal = np.zeros(len(layers))
    ref_logits, q_logits, labels = [], [], []
    checked = False
    steps = progress.track(_with_layers(layers), "per-layer sensitivity", total=len(layers) + 1)
    only_logits: list[np.ndarray] = []
    for step in steps:
        if step is None:  # the first step: reference and fully quantized runs, with taps
            for x, y in batches:
                with torch.no_grad():
                    r = ref_graph.gm(x).float().reshape(x.shape[0], -1)
                    ref_vals = [t.value for t in ref_taps]
                    q = q_graph.gm(x).float().reshape(x.shape[0], -1)
                for k, (a, b) in enumerate(zip(ref_vals, (t.value for t in q_taps), strict=True)):
                    a64, b64 = a.double(), b.double()
                    noise[k] += float((b64 - a64).pow(2).sum())
                    signal[k] += float(a64.pow(2).sum())
                if not checked:
                    _check_reference(float_graph, x, r)
                    checked = True
                ref_logits.append(r.numpy())
                q_logits.append(q.numpy())
                if y is not None:
                    labels.append(y.numpy())
            continue
        g = only_quantized(float_graph, quant_graph, (step.name,), layers)
        only_logits.append(_run(g, batches)[:n])
    lab = np.concatenate(labels)[:n] if labels else None
    ref_out = Outputs(np.concatenate(ref_logits)[:n], lab)
    float_acc = score(ref_out, ref_out, metric)
    quant_acc = score(Outputs(np.concatenate(q_logits)[:n], lab), ref_out, metric)
    rows = []
    for layer, logits, nz, sg in zip(layers, only_logits, noise, signal, strict=True):
        acc = score(Outputs(logits, lab), ref_out, metric)
        rows.append({"layer": layer.name, "kind": layer.kind, "bits": layer.bits, "w_bits": layer.w_bits,
                     "a_bits": min(layer.a_bits) if layer.a_bits else None,
                     "sqnr_db": round(float("inf") if nz == 0 else 10 * math.log10(sg / nz), 2),
                     "accuracy_only_this": round(acc, 3), "delta": round(acc - float_acc, 3),
                     "logit_sqnr_db": round(sqnr_db(Outputs(logits, None), ref_out), 2)})
    ranked = sorted(range(len(rows)), key=lambda i: (rows[i]["delta"], rows[i]["logit_sqnr_db"]))
    for r, i in enumerate(ranked, 1):
        rows[i]["rank"] = r
    return Sensitivity(metric, len(ref_out.logits), round(float_acc, 3), round(quant_acc, 3), rows,
                       round(time.perf_counter() - start, 2))


def _with_layers(layers: list[Layer]) -> Iterator[Layer | None]:
    """None first (the reference and fully quantized runs), then each layer: one progress step each."""
    yield None
    yield from layers


def _check_reference(float_graph: Graph, x: torch.Tensor, bypassed: torch.Tensor) -> None:
    """Refuse when removing every quantizer does not give back the float model (see module docstring)."""
    with torch.no_grad():
        want = float_graph.gm(x).float().reshape(x.shape[0], -1)
    db = sqnr_db(Outputs(bypassed.numpy(), None), Outputs(want.numpy().astype(np.float64), None))
    if db < FLOAT_MATCH_DB:
        raise CompressorError(
            f"per-layer sensitivity: with every quantizer removed, the quantized graph does not compute the float "
            f"model (logit SQNR {db:.1f} dB < {FLOAT_MATCH_DB:.0f} dB): a pass changed the float function besides "
            "quantizing it (APHQ's MLP refit, pruning or fine-tuning after the float graph was taken). Pass the "
            "graph the quantization pass started from as the float graph.")
