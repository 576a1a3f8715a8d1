"""Pruning bench (N:M part of issue 5): accuracy vs sparsity on the MNIST ViT, magnitude vs second-order.

Every accuracy is top-1 of the exported ONNX artifact in ONNX Runtime on the 1000 test digits,
through `compressor.compress` with an inline recipe. N:M patterns along the reduction dimension:
3:4 (25 %), 2:4 (50 %), 1:4 (75 %) of the 16 block Linears (head and patch embedding dense).
No fine-tune yet (issue 5's `finetune.distill` is not built).

    python benches/prune.py [--md FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import compressor
from compressor.recipe import recipe_from_dict

ROOT = Path(__file__).resolve().parent.parent
PATTERNS = [(3, 4), (2, 4), (1, 4)]


def top1(work: Path, n: int, m: int, method: str) -> tuple[float, float]:
    recipe = recipe_from_dict({"name": f"{n}of{m}-{method}",
                               "passes": [{"pass": "prune.nm", "n": n, "m": m, "method": method}]})
    res = compressor.compress(ROOT / "vit_mnist.pt", recipe=recipe, out_dir=work / f"{n}of{m}-{method}",
                              batch_sizes=[8])
    return res.report["baseline"]["accuracy"], res.report["artifacts"][0]["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-prune-"))
    rows = {}
    for method in ("magnitude", "sparsegpt"):
        for n, m in PATTERNS:
            dense, rows[(method, n, m)] = top1(work, n, m, method)
    lines = ["| method | dense (0 %) | " + " | ".join(f"{n}:{m} ({100 * (m - n) // m} %)" for n, m in PATTERNS) + " |",
             "|---|---|" + "---|" * len(PATTERNS)]
    for method in ("magnitude", "sparsegpt"):
        cells = " | ".join(f"{rows[(method, n, m)]:.2f}" for n, m in PATTERNS)
        lines.append(f"| {method} | {dense:.2f} | {cells} |")
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
