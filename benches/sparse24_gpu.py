"""2:4 semi-structured vs dense Linear on a lent NVIDIA GPU, ViT-Base FFN shapes, fp16 and bf16.

fc1 768→3072 and fc2 3072→768 at 197 tokens × batch {8, 64}; the weight is 2:4-pruned by
magnitude (the pattern `prune.nm` produces), timed with CUDA events, dense and sparse
interleaved, median of 200 rounds after warm-up. Prints why it skipped where no GPU is.

    python benches/sparse24_gpu.py [--md FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from compressor.kernels.semi_structured import (  # noqa: E402
    semi_structured_available,
    semi_structured_linear,
    semi_structured_weight,
)
from compressor.passes.prune.nm import magnitude_mask  # noqa: E402

SHAPES = {"fc1 768→3072": (768, 3072), "fc2 3072→768": (3072, 768)}


def cuda_ms(fn, rounds: int = 200) -> float:
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    ok, reason = semi_structured_available()
    if not ok:
        print(f"skipped: {reason}")
        return
    lines = [f"GPU: {torch.cuda.get_device_name()}", "",
             "| shape | tokens | dtype | dense ms | 2:4 cuSPARSELt ms | speedup | 2:4 CUTLASS ms | speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for label, (k, n) in SHAPES.items():
        for batch in (8, 64):
            for dtype in (torch.float16, torch.bfloat16):
                w = torch.randn(n, k, device="cuda", dtype=dtype)
                w = w * magnitude_mask(w, 2, 4)
                b = torch.randn(n, device="cuda", dtype=dtype)
                x = torch.randn(197 * batch, k, device="cuda", dtype=dtype)
                row = [label, str(197 * batch), str(dtype).removeprefix("torch.")]
                cuda_ms(lambda w=w, b=b, x=x: F.linear(x, w, b), 20)  # warm-up (cuBLAS heuristics)
                dense = cuda_ms(lambda w=w, b=b, x=x: F.linear(x, w, b))
                row.append(f"{dense:.4f}")
                for cutlass in (False, True):
                    try:
                        ws = semi_structured_weight(w, cutlass=cutlass)
                        torch.testing.assert_close(semi_structured_linear(x, ws, b), F.linear(x, w, b),
                                                   rtol=2e-2, atol=2e-1)
                        ms = cuda_ms(lambda ws=ws, b=b, x=x: semi_structured_linear(x, ws, b))
                        row += [f"{ms:.4f}", f"{dense / ms:.2f}x"]
                    except (RuntimeError, NotImplementedError) as e:
                        row += [f"unavailable: {str(e).splitlines()[0][:60]}", "-"]
                lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
