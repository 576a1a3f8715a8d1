"""`Graph`: PyTorch's own exported FX graph plus what compression passes need.

We add no graph format of our own: a `Graph` holds the `GraphModule` that `torch.export`
produced (unlifted, so parameters are attributes and passes can swap them) and adds module
paths, pattern matching, buffer helpers and per-node annotations that later passes keep.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import operator
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import fx

from compressor.errors import CompressorError

aten = torch.ops.aten

#: Targets that name a kind of node in patterns; a kind may also be an op overload or a predicate.
KINDS: dict[str, tuple[Any, ...]] = {
    "linear": (aten.linear.default,),
    "conv": (aten.conv2d.default, aten.conv1d.default, aten.convolution.default),
    "matmul": (aten.matmul.default, aten.bmm.default),
    "layer_norm": (aten.layer_norm.default,),
    "softmax": (aten.softmax.int, aten._softmax.default),
    "gelu": (aten.gelu.default,),
    "relu": (aten.relu.default, aten.relu_.default),
    "batch_norm": (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default),
    "sdpa": (aten.scaled_dot_product_attention.default,),
    "add": (aten.add.Tensor,),
    # ops that only select, reorder or copy elements: a quantized value stays on its grid through them
    "view": (aten.reshape.default, aten.view.default, aten.permute.default, aten.transpose.int, aten.t.default,
             aten.flatten.using_ints, aten.unflatten.int, aten.unsqueeze.default, aten.squeeze.dim,
             aten.select.int, aten.slice.Tensor, aten.expand.default, aten.unbind.int, aten.split.Tensor,
             aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default,
             aten.dropout.default, operator.getitem),  # getitem: one output of unbind/split
}
NodeKind = str | Callable[[fx.Node], bool] | Any
ANNOTATION_KEY = "compressor"


def is_kind(node: fx.Node, kind: NodeKind) -> bool:
    """Whether `node` is of `kind`: a KINDS name, an op overload or a predicate."""
    if node.op != "call_function":
        return False
    if isinstance(kind, str):
        return node.target in KINDS[kind]
    if callable(kind) and not isinstance(kind, torch._ops.OpOverload):
        return bool(kind(node))
    return node.target == kind


def layer_norm_args(ln: fx.Node) -> tuple[Any, ...]:
    """(input, normalized_shape, weight, bias, eps) of an aten.layer_norm node, defaults filled in."""
    return (*ln.args, *(None, None, None, None, 1e-5)[len(ln.args):])[:5]


class Graph:
    """A captured model: the exported `GraphModule`, example inputs and pass annotations."""

    def __init__(self, gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...],
                 fixed_batch: int | None = None) -> None:
        """`fixed_batch` is set when the program only runs at one batch size (static export)."""
        for m in gm.modules():  # exported graphs are already specialized to inference; the flag tells exporters
            m.training = False  # (exported modules refuse .eval() itself)
        self.gm = gm
        self.example_inputs = example_inputs
        self.fixed_batch = fixed_batch

    # -- inspection -------------------------------------------------------------------------
    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.gm.graph.nodes)

    def find(self, kind: NodeKind) -> list[fx.Node]:
        return [n for n in self.gm.graph.nodes if is_kind(n, kind)]

    def count(self, kind: NodeKind) -> int:
        return len(self.find(kind))

    @staticmethod
    def module_path(node: fx.Node) -> str:
        """Dotted path of the innermost nn.Module that produced `node` ('' for the root), as the user's
        model names it: `_blocks.3._depthwise_conv` in efficientnet_pytorch's naming."""
        stack = node.meta.get("nn_module_stack") or {}
        return next(reversed(stack.values()), ("", None))[0] if stack else ""

    def layer_paths(self) -> list[str]:
        """Module paths of the Linear, Conv and matmul nodes, in graph order: what per-layer settings
        (`skip:`) match against and what `--sensitivity` rows are named by."""
        kinds = ("linear", "conv", "matmul")
        return list(dict.fromkeys(self.module_path(n) for n in self.nodes if any(is_kind(n, k) for k in kinds)))

    def matcher(self, patterns: Sequence[str], setting: str) -> Callable[[fx.Node], bool]:
        """A test "does `node`'s module path match one of `patterns` (globs)", after checking that each
        pattern matches some layer: a typo that matched nothing would silently quantize (or prune) a
        layer the user meant to protect. The error lists the closest module paths."""
        paths = self.layer_paths()
        for pat in patterns:
            if not any(fnmatch.fnmatchcase(p, pat) for p in paths):
                close = difflib.get_close_matches(pat, paths, n=5, cutoff=0.4) or paths[:5]
                raise CompressorError(
                    f"{setting}: pattern {pat!r} matches no layer of this model. Patterns are globs over module "
                    f"paths, the names --sensitivity prints; closest: {', '.join(close)}.")
        return lambda node: any(fnmatch.fnmatchcase(self.module_path(node), pat) for pat in patterns)

    def attr(self, node: fx.Node) -> torch.Tensor | None:
        """The tensor behind a `get_attr` node, or None if `node` computes at run time."""
        if node.op != "get_attr":
            return None
        obj: Any = self.gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj

    def constant_numel(self, nodes: Iterable[Any] | None = None) -> int:
        """Elements held by the constants among `nodes` (default: the whole graph): a parameter count."""
        return sum(self.attr(n).numel() for n in (self.nodes if nodes is None else nodes) if self.is_constant(n))

    def is_constant(self, node: Any) -> bool:
        return isinstance(node, fx.Node) and node.op == "get_attr"

    def match(self, *kinds: NodeKind) -> list[tuple[fx.Node, ...]]:
        """Chains where each node's first input is the previous node, e.g. ('layer_norm', 'linear').

        Only single-consumer links count (a value that feeds several nodes is not "followed by"
        any one of them), which is what a fold or a fused kernel needs.
        """
        found = []
        for head in self.find(kinds[0]):
            chain, cur = [head], head
            for kind in kinds[1:]:
                users = list(cur.users)
                if len(users) != 1 or not is_kind(users[0], kind) or users[0].args[0] is not cur:
                    break
                cur = users[0]
                chain.append(cur)
            if len(chain) == len(kinds):
                found.append(tuple(chain))
        return found

    def annotate(self, node: fx.Node, key: str, value: Any) -> None:
        """Leave a note on a node for later passes and the report (e.g. quantizer parameters)."""
        node.meta.setdefault(ANNOTATION_KEY, {})[key] = value

    def annotation(self, node: fx.Node, key: str, default: Any = None) -> Any:
        return node.meta.get(ANNOTATION_KEY, {}).get(key, default)

    def annotated(self, key: str) -> Iterator[tuple[fx.Node, Any]]:
        """Every node carrying a `key` annotation, with its value, in graph order."""
        for n in self.gm.graph.nodes:
            if key in n.meta.get(ANNOTATION_KEY, {}):
                yield n, n.meta[ANNOTATION_KEY][key]

    # -- editing ----------------------------------------------------------------------------
    def add_buffer(self, name: str, value: torch.Tensor, before: fx.Node) -> fx.Node:
        """Register `value` as a buffer under a fresh name and return a get_attr node for it."""
        base = name.replace(".", "_")
        unique, i = base, 1
        while hasattr(self.gm, unique):
            unique, i = f"{base}_{i}", i + 1
        self.gm.register_buffer(unique, value.detach())  # a constant, whatever autograd history built it
        with self.gm.graph.inserting_before(before):
            return self.gm.graph.get_attr(unique)

    def call(self, target: Any, args: Sequence[Any], after: fx.Node | None = None,
             before: fx.Node | None = None, like: fx.Node | None = None) -> fx.Node:
        """Insert a call_function node; `like` lends its module stack so paths stay meaningful."""
        ctx = self.gm.graph.inserting_after(after) if after is not None else self.gm.graph.inserting_before(before)
        with ctx:
            node = self.gm.graph.call_function(target, tuple(args))
        if like is not None and "nn_module_stack" in like.meta:
            node.meta["nn_module_stack"] = dict(like.meta["nn_module_stack"])
        return node

    def drop_unused_attrs(self) -> None:
        """Delete parameters and buffers no node reads, so artifacts do not carry dead weights."""
        g = self.gm.graph
        g.eliminate_dead_code()
        used = {str(n.target) for n in g.nodes if n.op == "get_attr"}
        called = {str(n.target) for n in g.nodes if n.op == "call_module"}
        names = [k for k, _ in self.gm.named_parameters()] + [k for k, _ in self.gm.named_buffers()]
        for name in names:
            owner_path, _, leaf = name.rpartition(".")
            if name in used or any(owner_path == c or owner_path.startswith(c + ".") for c in called):
                continue
            owner = self.gm.get_submodule(owner_path) if owner_path else self.gm
            delattr(owner, leaf)

    def recompile(self) -> Graph:
        self.gm.graph.eliminate_dead_code()
        self.gm.graph.lint()
        self.gm.recompile()
        return self

    def clone(self) -> Graph:
        with warnings.catch_warnings():  # torch's pytree spec pickling warns about its own deprecation
            warnings.simplefilter("ignore", FutureWarning)
            return Graph(copy.deepcopy(self.gm), self.example_inputs, self.fixed_batch)

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.gm(*inputs)
