"""int8 x int8 -> int32 matmuls on AVX-512 VNNI for the `tvm` target (the integer-only ViT's Linears).

Why: relax lowers ONNX MatMulInteger to an int32 x int32 matmul and folds the int8 weight into an
int32 constant, so the integer ViT-S read 4x the weight bytes and multiplied with `vpmulld`: its
matmuls took 130 ms at batch 1 where the float ones take 98. `vpdpbusd` multiplies 64 u8 x s8 pairs
and accumulates into 16 int32 lanes in one instruction (TVM's `dot_16x4_vnni` intrinsic).

`vnni_matmuls` rewrites, in the imported relax module, every `matmul(int8/uint8 A, constant int8 B)`
(B may also come as uint8 with a scalar zero point, B − zero in int8 range: the integer ViT's
ONNX stores its weights so, for ONNX Runtime's exact uint8 × uint8 GEMM) into a call of
`vnni_matmul`, whose weight is packed once at compile time as [N/16, K/4, 16·4] (the
instruction's operand), K zero-padded to whole quads and N to whole vectors. The instruction wants
unsigned activations: a signed A is shifted to A + 128 (uint8), and zero point · Σ_k B[k, n] is
subtracted afterwards, exact in int32. `schedule_vnni_matmul` tiles it (rows x
16-column vectors in registers).

The attention products (q·kᵀ, attn·v: both operands activations) stay on the int32 schedule. The
same kernel with B packed per head by a fused transpose at run time ran q·kᵀ in 2.4 ms instead of
8.5 on ViT-S, but its results were wrong on the MNIST ViT (17 tokens, 4 heads: the row tile does not
divide the tokens and B changes per head), which was not understood in time; it was removed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

KERNEL = "vnni_matmul"
LANES, QUAD = 16, 4  # int32 lanes of a zmm register; u8 x s8 products summed per lane


def has_vnni(target: Any) -> bool:
    import tvm.target.codegen as codegen

    try:
        return bool(codegen.target_has_features("avx512vnni", target))
    except Exception:  # not an LLVM x86 target
        return False


def vnni_matmuls(mod: Any) -> Any:
    """`mod` with its 8-bit constant-weight matmuls (int8/uint8 A, int8 B, int32 out) replaced by
    `vnni_matmul` calls."""
    import tvm
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    a, b, zero, b_zero = wildcard(), wildcard(), is_const(), is_const()
    # MatMulInteger with a zero point for A imports as (astype(A) - astype(zero)) · astype(B), and B's alike
    shifted = is_op("relax.subtract")(is_op("relax.astype")(a), is_op("relax.astype")(zero))
    b_shifted = is_op("relax.subtract")(is_op("relax.astype")(b), is_op("relax.astype")(b_zero))
    pattern = is_op("relax.matmul")(is_op("relax.astype")(a) | shifted, is_op("relax.astype")(b) | b_shifted)
    builder = relax.BlockBuilder(mod)
    kernels: dict[tuple, Any] = {}

    def rewrite(call: Any, matches: dict) -> Any:
        lhs, rhs = matches[a], matches[b]
        shape, rhs_shape = [int(d) for d in lhs.ty.shape], [int(d) for d in rhs.ty.shape]
        if (str(call.ty.dtype) != "int32" or str(lhs.ty.dtype) not in ("int8", "uint8")
                or str(rhs.ty.dtype) not in ("int8", "uint8")
                or (zero in matches and matches[zero].value.numpy().size != 1) or len(shape) < 2
                or not isinstance(rhs, tvm.ir.expr.Constant) or len(rhs_shape) != 2 or rhs_shape[0] != shape[-1]):
            return call
        weight = rhs.value.numpy().astype(np.int32)
        if b_zero in matches:
            if matches[b_zero].value.numpy().size != 1:
                return call
            weight = weight - int(matches[b_zero].value.numpy())
        if weight.min() < -128 or weight.max() > 127:
            return call
        *batch, m, k = shape
        n = rhs_shape[-1]
        kp, np_ = -(-k // QUAD) * QUAD, -(-n // LANES) * LANES
        bt = int(np.prod(batch, dtype=np.int64))
        key = (bt, m, kp, np_)
        if key not in kernels:
            kernels[key] = builder.add_func(_kernel(*key), KERNEL)
        offset = int(matches[zero].value.numpy()) if zero in matches else 0  # A's zero point
        if str(lhs.ty.dtype) == "int8":  # vpdpbusd multiplies unsigned by signed bytes
            lhs = relax.op.astype(relax.op.add(relax.op.astype(lhs, "int16"), relax.const(128, "int16")), "uint8")
            offset += 128
        if len(shape) != 3:
            lhs = relax.op.reshape(lhs, [bt, m, k])
        if kp != k:  # zero bytes add nothing to the dot products
            lhs = relax.op.nn.pad(lhs, [0, 0, 0, 0, 0, kp - k], pad_value=0)
        weight = weight.astype(np.int8)
        packed = relax.const(pack_weight(np.pad(weight, [(0, kp - k), (0, np_ - n)])))
        colsum = relax.const(offset * weight.astype(np.int32).sum(0))
        y = relax.call_tir(kernels[key], [lhs, packed], relax.TensorType([bt, m, np_], "int32"))
        if np_ != n:
            y = relax.op.strided_slice(y, [2], [0], [n])
        if offset:
            y = relax.op.subtract(y, colsum)
        # a 3-D A (tokens of a ViT) keeps its shape, so the requantization epilogue fuses into the
        # kernel: a reshape after it would end the fused group (it is injective, not element-wise)
        return y if len(shape) == 3 else relax.op.reshape(y, [*batch, m, n])

    main = rewrite_call(pattern, rewrite, mod["main"])
    if not kernels:
        return mod
    mod = builder.get()
    mod["main"] = main
    return mod


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """[K, N] int8 -> [N/16, K/4, 64]: the 16 x 4 bytes one `vpdpbusd` reads, contiguous."""
    k, n = weight.shape
    packed = weight.reshape(k // QUAD, QUAD, n // LANES, LANES).transpose(2, 0, 3, 1)
    return np.ascontiguousarray(packed).reshape(n // LANES, k // QUAD, LANES * QUAD)


def _kernel(bt: int, m: int, k: int, n: int) -> Any:
    """C[t, m, n] = A[t, m, k] (uint8) x B (int8, packed [N/16, K/4, 64]), one `vpdpbusd` per
    block instance: 16 output columns += 4 products. Written with the intrinsic in the block body
    because `Schedule.tensorize` segfaults in this TVM wheel (it serializes through the same
    `ToJSONGraph` that crashes MetaSchedule); LLVM 20 declares the instruction on i8 vectors."""
    from tvm.script import tirx as T

    i64 = T.int64

    @T.prim_func(private=True, s_tir=True)
    def vnni_matmul(a: T.Buffer((i64(bt), i64(m), i64(k)), "uint8"),
                    b: T.Buffer((i64(n // LANES), i64(k // QUAD), i64(64)), "int8"),
                    c: T.Buffer((i64(bt), i64(m), i64(n)), "int32")) -> None:
        for t, i, jb, kq in T.grid(i64(bt), i64(m), i64(n // LANES), i64(k // QUAD)):
            with T.sblock(KERNEL):
                vt, vi, vj, vk = T.axis.remap("SSSR", [t, i, jb, kq])
                T.reads(a[vt, vi, vk * 4: vk * 4 + 4], b[vj, vk, 0:64])
                T.writes(c[vt, vi, vj * 16: vj * 16 + 16])
                with T.init():
                    c[vt, vi, T.ramp(vj * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
                c[vt, vi, T.ramp(vj * 16, 1, 16)] = T.call_llvm_pure_intrin(
                    "int32x16", "llvm.x86.avx512.vpdpbusd.512", c[vt, vi, T.ramp(vj * 16, 1, 16)],
                    T.reinterpret("int8x64", T.broadcast(T.reinterpret("int32", a[vt, vi, T.ramp(vk * 4, 1, 4)]), 16)),
                    b[vj, vk, T.ramp(i64(0), 1, 64)])

    return vnni_matmul.with_attr("op_pattern", 4)  # kOutEWiseFusable: the requantization fuses in


def find_vnni_block(sch: Any, blocks: list[Any]) -> Any | None:
    found = [b for b in blocks if sch.get(b).name_hint.startswith(KERNEL)]
    return found[0] if len(found) == 1 else None


def schedule_vnni_matmul(sch: Any, block: Any, rows: int = 4, vectors: int = 6) -> Any:
    """Tile: `rows` x (`vectors` x 16) int32 accumulators (24 of the 32 zmm registers), the k loop
    outside them; 4 x 6 measured best of 4x4 .. 12x2 on ViT-S's 197 x 384 x 1536 shapes (~190
    GMAC/s on 2 cores vs ~50 for the int32 schedule). A column count that 6 does not divide (63
    vectors for a 1000-class head) gets a predicated last tile. Returns the write-back block."""
    acc = sch.cache_write(block, 0, "local")
    t, i, j, k = sch.get_loops(block)
    i0, i1 = sch.split(i, [None, rows])
    j0, j1 = sch.split(j, [None, vectors])
    sch.reorder(t, j0, i0, k, i1, j1)
    outer = sch.fuse(t, j0, i0)
    sch.parallel(outer)
    sch.reverse_compute_at(acc, outer)
    sch.decompose_reduction(block, k)
    sch.unroll(i1)
    sch.unroll(j1)
    return acc
