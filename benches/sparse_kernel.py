"""Block-sparse kernel bench (issue 5): our kernel vs dense sgemm vs torch's BSR at ViT-S FFN shapes.

x is 197 tokens × batch 8 = 1576 rows; fc1 maps 384 → 1536 features, fc2 1536 → 384 (fp32).
Weights are random with a given fraction of their blocks zeroed (blocks are rows × cols of W,
i.e. output × input features). Dense is `F.linear` (MKL/oneDNN sgemm), ours is
`compressor::block_sparse_linear`, torch BSR is `W.to_sparse_bsr(block) @ xᵀ` (xᵀ prepared
outside the timing). Dense and ours run interleaved in every round, in rotating order, after
warm-up, and each cell is the median over the rounds, so load from other processes hits both
alike. BSR is timed in separate rounds against dense again (its speedup is over that dense): in
the same rounds its allocations and cache sweeps moved the dense time by up to 30 %.

    python benches/sparse_kernel.py [--threads 2] [--rounds 40] [--md FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from compressor.cpu import cpu_model
from compressor.kernels import BlockSparseWeight, block_sparse_linear, kernel_available

LAYERS = [("fc1 384→1536", 384, 1536), ("fc2 1536→384", 1536, 384)]
BLOCKS = [(16, 16), (32, 32)]
SPARSITIES = [0.5, 0.75, 0.9]


def busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux), to tell how loaded the run was."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def block_sparse_weight(n: int, k: int, block: tuple[int, int], sparsity: float, g: torch.Generator) -> torch.Tensor:
    """Exactly round(sparsity · blocks) zero blocks, at random positions."""
    bh, bw = block
    grid = (n // bh) * (k // bw)
    keep = torch.ones(grid, dtype=torch.bool)
    keep[torch.randperm(grid, generator=g)[: round(sparsity * grid)]] = False
    mask = keep.reshape(n // bh, k // bw).repeat_interleave(bh, 0).repeat_interleave(bw, 1)
    return torch.randn(n, k, generator=g) * mask


def interleaved(fns: list[Callable[[], object]], rounds: int, warmup: int) -> list[float]:
    """Median ms of each callable; every round runs all of them, starting one later each round."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(warmup + rounds):
        for j in range(len(fns)):
            i = (r + j) % len(fns)
            start = time.perf_counter()
            fns[i]()
            if r >= warmup:
                times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=197 * 8)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-bsr", action="store_true", help="skip torch's BSR (slow at 50 %)")
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse BSR tensor support is in beta")
    ok, kernel = kernel_available()
    if not ok:
        raise SystemExit(f"the block-sparse kernel is unavailable here: {kernel}")
    g = torch.Generator().manual_seed(0)
    head = (f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, kernel {kernel}; "
            f"{args.tokens} tokens, fp32, median of {args.rounds} interleaved rounds")
    lines = [head, "",
             "| layer | block | sparsity | dense ms | ours ms | ours speedup | torch BSR ms | BSR speedup |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    busy0, own0, wall0 = busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    with torch.no_grad():
        for name, k, n in LAYERS:
            x, bias = torch.randn(args.tokens, k, generator=g), torch.randn(n, generator=g)
            xt = x.T.contiguous()
            for block in BLOCKS:
                for sparsity in SPARSITIES:
                    w = block_sparse_weight(n, k, block, sparsity, g)
                    packed = BlockSparseWeight.from_dense(w, block)
                    ref = F.linear(x, w, bias)
                    err = float((block_sparse_linear(x, packed, bias) - ref).abs().max() / ref.abs().max())
                    if err > 1e-4:
                        raise SystemExit(f"{name} {block} {sparsity}: kernel differs from dense by {err:.2g}")
                    dense = partial(F.linear, x, w, bias)
                    ms = interleaved([dense, partial(block_sparse_linear, x, packed, bias)], args.rounds, args.warmup)
                    bsr_cells = "- | -"
                    if not args.no_bsr:  # its own rounds: its allocations and cache sweeps slowed the other two
                        bsr = partial(torch.matmul, w.to_sparse_bsr(block), xt)
                        d, b = interleaved([dense, bsr], max(args.rounds // 2, 5), args.warmup)
                        bsr_cells = f"{b:.2f} | {d / b:.2f}x"
                    line = (f"| {name} | {block[0]}x{block[1]} | {sparsity:.0%} | {ms[0]:.2f} | {ms[1]:.2f} | "
                            f"**{ms[0] / ms[1]:.2f}x** | {bsr_cells} |")
                    lines.append(line)
                    print(line, flush=True)
    if busy0 is not None:
        other = (busy_seconds() - busy0 - (sum(os.times()[:2]) - own0)) / (time.perf_counter() - wall0)
        lines.append(f"\nOther processes kept {other:.2f} of {os.cpu_count()} CPUs busy during the run "
                     f"(above ~0.1 the timings are contended).")
        print(lines[-1])
    if args.md:
        args.md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
