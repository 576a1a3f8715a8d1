"""`sparse.kernels`: run block-sparse Linears through the block-sparse CPU kernel where it is faster.

Zero blocks only save time if a kernel skips them, and whether that beats the dense sgemm
depends on the layer's shape, its sparsity, the token count and the CPU. So the pass does not
guess: for every Linear with a constant, block-sparse weight it times dense `F.linear` against
`compressor::block_sparse_linear` at the layer's real input shape (found by running one batch
of `batch_size` images through the graph), interleaved round by round so machine noise hits
both alike, and swaps the node only where the kernel measured at least `min_speedup` faster.
The summary lists every Linear with its timings and the reason for the decision.

The block shape comes from the "sparsity" annotation `prune.block` leaves ({"pattern": "block",
"block": [bh, bw]}); without one, `block: auto` takes whichever of 32x32 and 16x16 skips more
weights (32x32 on a near-tie: fewer, larger tiles run faster). N:M layers
("pattern": "2:4") have no zero blocks and are left alone.

The swapped graph runs in PyTorch (eager, or a `torch.export` program that imports
`compressor.kernels` before loading); exporters that translate ATen ops (ONNX) do not know the op.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import fx, nn

from compressor.graph.graph import ANNOTATION_KEY, Graph, is_kind
from compressor.kernels.block_sparse import (
    BLOCK_SPARSE_LINEAR,
    BlockSparseWeight,
    block_sparsity,
    check_block,
    kernel_available,
)
from compressor.passes.base import Pass, PassContext, PassParams, register_pass
from compressor.passes.calibrate import insert_observers, observer_of, remove_observer

AUTO_BLOCKS = ([32, 32], [16, 16])


class SparseKernelParams(PassParams):
    block: list[int] | Literal["auto"] = Field(
        "auto", description="[rows, cols] of a weight block; auto: the block prune.block recorded, else whichever "
                            "of 32x32, 16x16 has more zero blocks")
    min_sparsity: float = Field(0.3, ge=0, le=1, description="fewer zero blocks than this: not timed, left dense")
    min_speedup: float = Field(1.05, ge=0, description="swap only where dense_ms / sparse_ms reaches this")
    batch_size: int = Field(8, ge=1, description="images per batch when timing (a static-batch graph uses its own)")
    rounds: int = Field(15, ge=1, description="timed rounds per layer (after 3 warm-up rounds); the median counts")
    skip: list[str] = Field(default_factory=list, description="module paths (glob) left dense")

    @field_validator("block")
    @classmethod
    def _valid_block(cls, v: list[int] | str) -> list[int] | str:
        if v != "auto":
            check_block(v)
        return v


class ShapeObserver(nn.Module):
    """Records the shape of the tensor it sees (the layer's input at the timing batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.shape: tuple[int, ...] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shape = tuple(x.shape)
        return x


def time_pair(dense: Callable[[], object], sparse: Callable[[], object], rounds: int,
              warmup: int = 3) -> tuple[float, float]:
    """Median milliseconds of two callables, run alternately (which goes first flips every round)."""
    times: tuple[list[float], list[float]] = ([], [])
    fns = (dense, sparse)
    for r in range(warmup + rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            fns[i]()
            if r >= warmup:
                times[i].append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


@register_pass
class SparseKernels(Pass):
    name = "sparse.kernels"
    Params = SparseKernelParams
    description = "block-sparse Linears run through the block-sparse CPU kernel where it measures faster"

    def apply(self, graph: Graph, ctx: PassContext) -> dict[str, Any]:
        p = self.params
        ok, kernel = kernel_available()
        linears = [n for n in graph.nodes if is_kind(n, "linear")]
        layers: list[dict[str, Any]] = []
        plans: dict[fx.Node, tuple[BlockSparseWeight, dict[str, Any]]] = {}
        for node in linears:
            entry, packed = self._plan(graph, node, ok)
            layers.append(entry)
            if packed is not None:
                plans[node] = (packed, entry)
        batch = graph.fixed_batch or p.batch_size
        if plans:
            shapes = self._input_shapes(graph, ctx, list(plans), batch)
            with torch.no_grad():
                for node, (packed, entry) in plans.items():
                    self._measure(graph, node, packed, entry, shapes[node], ctx)
        swapped = 0
        for node, (packed, entry) in plans.items():
            if entry["decision"] == "sparse":
                self._swap(graph, node, packed)
                swapped += 1
        if swapped:
            graph.drop_unused_attrs()
            graph.recompile()
        return {"kernel": kernel, "available": ok, "threads": torch.get_num_threads(), "batch_size": batch,
                "min_speedup": p.min_speedup, "swapped": swapped, "layers": layers}

    def _plan(self, graph: Graph, node: fx.Node, ok: bool) -> tuple[dict[str, Any], BlockSparseWeight | None]:
        """The layer's summary entry, and its packed weight when it is worth timing."""
        p = self.params
        path = graph.module_path(node) or node.name
        entry: dict[str, Any] = {"module": path, "decision": "dense"}
        w = graph.attr(node.args[1]) if graph.is_constant(node.args[1]) else None
        if w is None:
            return {**entry, "why": "weight is computed at run time (e.g. quantized), not a constant"}, None
        entry["shape"] = list(w.shape)
        note = graph.annotation(node, "sparsity") or {}
        if graph.matcher(p.skip, "sparse.kernels skip")(node):
            return {**entry, "why": "skipped by the skip list"}, None
        if note.get("pattern") not in (None, "block"):
            return {**entry, "why": f"{note['pattern']} sparsity has no zero blocks to skip"}, None
        if w.dtype != torch.float32:
            return {**entry, "why": f"weight is {w.dtype}; the kernel is float32"}, None
        if not ok:
            return {**entry, "why": "kernel unavailable"}, None
        if note.get("pattern") == "block":
            candidates = [list(note["block"])]
        else:
            candidates = [p.block] if p.block != "auto" else [list(b) for b in AUTO_BLOCKS]
        try:
            for b in candidates:
                check_block(b)
        except ValueError as e:
            return {**entry, "why": str(e)}, None
        scored = [(block_sparsity(w, b), b) for b in candidates]
        best = max(s for s, _ in scored)  # the most skipped work; a larger block wins near-ties (fewer, bigger tiles)
        chosen = max(((s, b) for s, b in scored if s >= best - 0.01), key=lambda sb: sb[1][0] * sb[1][1])
        entry.update(block=chosen[1], block_sparsity=round(chosen[0], 4))
        if chosen[0] < p.min_sparsity:
            return {**entry, "why": f"block sparsity {chosen[0]:.2f} below min_sparsity {p.min_sparsity}"}, None
        return entry, BlockSparseWeight.from_dense(w, tuple(chosen[1]))

    def _input_shapes(self, graph: Graph, ctx: PassContext, nodes: list[fx.Node],
                      batch: int) -> dict[fx.Node, tuple[int, ...]]:
        """Each layer's input shape at `batch` images, from one forward pass with shape observers."""
        x = next(ctx.calibration_batches(), None) if ctx.calib is not None else None
        x = graph.example_inputs[0] if x is None else x
        x = x[torch.arange(batch) % x.shape[0]]
        observed = insert_observers(graph, [(n, [0]) for n in nodes], ShapeObserver)
        with torch.no_grad():
            graph.gm(x)
        by_input = {}
        for src, obs_node in observed.items():
            by_input[src] = observer_of(graph, obs_node).shape
            remove_observer(graph, obs_node)
        graph.recompile()
        return {n: by_input[n.args[0]] for n in nodes}

    def _measure(self, graph: Graph, node: fx.Node, packed: BlockSparseWeight, entry: dict[str, Any],
                 shape: tuple[int, ...], ctx: PassContext) -> None:
        """Time dense vs sparse on random input of the layer's shape, check they agree, decide."""
        p = self.params
        w = graph.attr(node.args[1])
        bias_arg = node.args[2] if len(node.args) > 2 else None
        bias = graph.attr(bias_arg) if isinstance(bias_arg, fx.Node) else None
        x = torch.randn(shape, generator=ctx.rng)
        args = (packed.values, packed.row_ptr, packed.col_idx, bias, packed.shape[0], *packed.block)
        ref, out = F.linear(x, w, bias), BLOCK_SPARSE_LINEAR(x, *args)
        err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        dense_ms, sparse_ms = time_pair(lambda: F.linear(x, w, bias), lambda: BLOCK_SPARSE_LINEAR(x, *args), p.rounds)
        speedup = dense_ms / sparse_ms
        entry.update(input=list(shape), dense_ms=round(dense_ms, 4), sparse_ms=round(sparse_ms, 4),
                     speedup=round(speedup, 3), max_rel_err=float(f"{err:.3g}"))
        if err > 1e-4:
            entry["why"] = f"kernel output differs from dense by {err:.2g} (relative); kept dense"
        elif speedup >= p.min_speedup:
            entry.update(decision="sparse", why=f"{speedup:.2f}x faster than dense (min_speedup {p.min_speedup})")
        else:
            entry["why"] = f"only {speedup:.2f}x of dense, below min_speedup {p.min_speedup}"

    def _swap(self, graph: Graph, node: fx.Node, packed: BlockSparseWeight) -> None:
        path = graph.module_path(node) or node.name
        arrays = [graph.add_buffer(f"{path}.bsr_{name}", getattr(packed, name), before=node)
                  for name in ("values", "row_ptr", "col_idx")]
        bias = node.args[2] if len(node.args) > 2 else None
        new = graph.call(BLOCK_SPARSE_LINEAR, [node.args[0], *arrays, bias, packed.shape[0], *packed.block],
                         before=node, like=node)
        for key in ("val", "tensor_meta"):
            if key in node.meta:
                new.meta[key] = node.meta[key]
        new.meta[ANNOTATION_KEY] = dict(node.meta.get(ANNOTATION_KEY, {}))
        graph.annotate(new, "kernel", {"op": "block_sparse_linear", "block": list(packed.block),
                                       "block_sparsity": round(packed.block_sparsity, 4)})
        node.replace_all_uses_with(new)
        graph.gm.graph.erase_node(node)
