"""Narrowing casts moved ahead of the data movement before them, for the `tvm` target.

Why: the integer ONNX keeps every value in int64 until the operator that needs 8 bits, so q, k and
v left their requantization as int64, went through reshape, transpose and slicing at 8 bytes an
element, and only then became int8 for the attention products. A cast commutes with any operator
that only moves elements, so `astype(reshape(x))` is `reshape(astype(x))`: moved up to the
requantization, the cast fuses into that kernel's epilogue and everything after it moves a byte
an element. `EliminateCommonSubexpr` then merges the copies made for each of q, k and v.
"""

from __future__ import annotations

from typing import Any

MOVES = ("relax.reshape", "relax.permute_dims", "relax.strided_slice", "relax.squeeze", "relax.expand_dims",
         "relax.take")  # element movers: `take` gathers (q/k/v selection), its index is a separate input
BITS = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64}


def sink_narrowing_casts(mod: Any) -> Any:
    """`mod` with each narrowing `astype` of a data-movement result applied to that op's input."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    astype = tvm.ir.Op.get("relax.astype")
    moves = [tvm.ir.Op.get(name) for name in MOVES]

    @mutator
    class Sink(PyExprMutator):
        def visit_call_(self, call: Any) -> Any:
            call = super().visit_call_(call)
            if not (call.op.same_as(astype) and _narrows(str(call.args[0].ty.dtype), str(call.attrs.dtype))):
                return call
            producer = call.args[0]
            if isinstance(producer, relax.Var):
                producer = self.lookup_binding(producer)
            if producer is None or not hasattr(producer, "op") or not any(producer.op.same_as(m) for m in moves):
                return call
            moved = self.visit_expr(relax.Call(call.op, [producer.args[0]], call.attrs))
            return relax.Call(producer.op, [moved, *producer.args[1:]], producer.attrs)

    main = Sink(mod).visit_expr(mod["main"])
    mod["main"] = main
    return relax.transform.DeadCodeElimination()(relax.transform.EliminateCommonSubexpr()(mod))


def _narrows(source: str, target: str) -> bool:
    """An integer cast to fewer bits (int64 -> int8): widening casts stay where the consumer wants them."""
    return source in BITS and target in BITS and BITS[target] < BITS[source]
