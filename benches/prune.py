"""Pruning bench (issue 5): accuracy vs sparsity on the MNIST ViT, and what structured pruning buys.

Every accuracy is top-1 of the exported ONNX artifact in ONNX Runtime on the 1000 test digits
(dense: 97.00), through `compressor.compress` with an inline recipe; "+ft" adds
`finetune.distill` (300 steps of distillation from the dense model on the 500 unlabelled
calibration images). The 16 block Linears are pruned; the head and patch embedding stay dense.

- N:M at 30/50/70 %: patterns 11:16, 8:16, 5:16 (the grid the issue asks for); 2:4 separately.
- block (LPViT): 16×16 blocks, Taylor saliency, rate-distortion allocation; and l1 + uniform.
- structured 30 % (NViT): heads and FFN channels removed; parameters, top-1, ORT latency at
  batch 8 against the dense artifact in the same run, on the MNIST ViT and on a ViT-S-shaped
  random-init model (saliencies on random weights are meaningless, the latency ratio is not).
- kernel: block pruning then `sparse.kernels` on the ViT-S shape, exported as `torch` programs;
  the block-sparse kernel against the dense program, end to end.

    python benches/prune.py [--md FILE] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

import compressor
from compressor import zoo
from compressor.data import Preprocess
from compressor.recipe import recipe_from_dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benches"))
from spine import photo_crops  # noqa: E402

SPARSITIES = (0.3, 0.5, 0.7)
NM_OF_16 = {0.3: 11, 0.5: 8, 0.7: 5}
ACCURACY_ONLY = {"batch_sizes": [8], "runs": 3, "warmup": 1, "min_seconds": 0.0}
# the curves measure how far each method falls, so the passes' stop rule (min_agreement) is off
FT = {"pass": "finetune.distill", "steps": 300, "min_agreement": None}
NM = {"pass": "prune.nm", "min_agreement": None}


def compress(work: Path, name: str, passes: list[dict[str, Any]], timing: dict[str, Any] | None = None,
             **kwargs: Any) -> dict[str, Any]:
    recipe = recipe_from_dict({"name": name, "passes": passes, "benchmark": timing or ACCURACY_ONLY})
    kwargs.setdefault("model", ROOT / "vit_mnist.pt")
    return compressor.compress(recipe=recipe, out_dir=work / name, progress=False, **kwargs).report


def top1(report: dict[str, Any]) -> float:
    return report["artifacts"][0]["accuracy"]


def curve_rows(work: Path, quick: bool, only: str | None) -> list[str]:
    methods = {
        "N:M magnitude": lambda s: {**NM, "n": NM_OF_16[s], "m": 16, "method": "magnitude"},
        "N:M second-order": lambda s: {**NM, "n": NM_OF_16[s], "m": 16, "method": "sparsegpt"},
        "block 16×16 taylor+rd+refit": lambda s: {"pass": "prune.block", "sparsity": s},
        "block 16×16 taylor+rd": lambda s: {"pass": "prune.block", "sparsity": s, "refit": False},
        "block 16×16 l1+uniform": lambda s: {"pass": "prune.block", "sparsity": s, "saliency": "l1",
                                             "allocation": "uniform", "refit": False},
        "block 8×8 taylor+rd+refit": lambda s: {"pass": "prune.block", "sparsity": s, "block": [8, 8]},
    }
    lines = ["| method | fine-tune | 0 % | 30 % | 50 % | 70 % |", "|---|---|---|---|---|---|"]
    dense = None
    for label, make in methods.items():
        if only and only not in label:
            continue
        for ft in ((False,) if quick else (False, True)):
            cells = []
            for s in SPARSITIES:
                rep = compress(work, f"{label}-{s}-{ft}".replace(" ", "_"), [make(s)] + ([FT] if ft else []))
                dense = rep["baseline"]["accuracy"]
                cells.append(f"{top1(rep):.2f}")
                print(f"  {label} {s:.0%} ft={ft}: {cells[-1]}", flush=True)
            lines.append(f"| {label} | {'300 steps' if ft else 'none'} | {dense:.2f} | " + " | ".join(cells) + " |")
    return lines


def two_four_rows(work: Path) -> list[str]:
    lines = ["| 2:4 (50 %) | none | +ft |", "|---|---|---|"]
    for method in ("magnitude", "sparsegpt"):
        cells = [top1(compress(work, f"2of4-{method}-{ft}", [{**NM, "method": method}] + ([FT] if ft
                                                                                                        else [])))
                 for ft in (False, True)]
        lines.append(f"| {method} | {cells[0]:.2f} | {cells[1]:.2f} |")
    return lines


def latency(report: dict[str, Any], which: str) -> float:
    entry = report["baseline"] if which == "baseline" else report["artifacts"][0]
    return entry["latency_ms"]["median"]


def structured_rows(work: Path) -> list[str]:
    timed = {"batch_sizes": [8], "runs": 30, "min_seconds": 3.0}
    lines = ["| model | fine-tune | params dense → pruned | top-1 dense → pruned | b8 ms dense → pruned | ratio |",
             "|---|---|---|---|---|---|"]
    for ft in (False, True):
        rep = compress(work, f"structured-{ft}", [{"pass": "prune.structured", "sparsity": 0.3}] + ([FT] if ft else []),
                       timing=timed)
        s = rep["passes"][0]["summary"]
        lines.append(f"| MNIST ViT | {'300 steps' if ft else 'none'} | {s['params_before']} → {s['params_after']} | "
                     f"{rep['baseline']['accuracy']:.2f} → {top1(rep):.2f} | {latency(rep, 'baseline'):.2f} → "
                     f"{latency(rep, 'model'):.2f} | {latency(rep, 'model') / latency(rep, 'baseline'):.3f} |")
    rep = compress(work, "structured-vits", [{"pass": "prune.structured", "sparsity": 0.3}], timing=timed,
                   **vit_small(work))
    s = rep["passes"][0]["summary"]
    lines.append(f"| ViT-S 224 (random init) | none | {s['params_before']} → {s['params_after']} | (agreement "
                 f"{top1(rep):.2f}) | {latency(rep, 'baseline'):.2f} → {latency(rep, 'model'):.2f} | "
                 f"{latency(rep, 'model') / latency(rep, 'baseline'):.3f} |")
    return lines


def vit_small(work: Path) -> dict[str, Any]:
    """A random-init DeiT-S checkpoint and 32 photo crops: latency cases where accuracy means nothing."""
    torch.manual_seed(0)
    sd = work / "deit_small_random.pt"
    if not sd.exists():
        torch.save(zoo.build("deit_small_patch16_224").state_dict(), sd)
        np.save(work / "calib32.npy", photo_crops(32))
    return {"model": sd, "arch": "deit_small_patch16_224", "calib": work / "calib32.npy",
            "eval_data": work / "calib32.npy",
            "preprocess": Preprocess(size=(224, 224), channels=3, mean=(0.485, 0.456, 0.406),
                                     std=(0.229, 0.224, 0.225))}


def kernel_rows(work: Path) -> list[str]:
    """prune.block + sparse.kernels on ViT-S, exported as a torch program, against the dense program."""
    timed = {"batch_sizes": [8], "runs": 20, "min_seconds": 3.0}
    lines = ["| ViT-S 224 (random init), block 16×16, uniform | Linears on the kernel | b8 ms dense → sparse | "
             "speedup | agreement with dense |", "|---|---|---|---|---|"]
    for sparsity in (0.5, 0.75):
        rep = compress(work, f"kernel-vits-{sparsity}", [
            {"pass": "prune.block", "sparsity": sparsity, "allocation": "uniform", "refit": False},
            {"pass": "sparse.kernels"}], timing=timed, export=["torch"], **vit_small(work))
        k = rep["passes"][1]["summary"]
        lines.append(f"| {sparsity:.0%} of the block Linears' weights | {k['swapped']} / {len(k['layers'])} | "
                     f"{latency(rep, 'baseline'):.1f} → {latency(rep, 'model'):.1f} | "
                     f"{rep['artifacts'][0]['speedup_vs_baseline']:.2f}x | {top1(rep):.2f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--quick", action="store_true", help="curve without the fine-tuned rows")
    ap.add_argument("--sections", default="curve,2of4,structured,kernel", help="comma-separated subset to run")
    ap.add_argument("--only", help="curve rows whose method contains this text (e.g. 'block')")
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-prune-"))
    chosen = args.sections.split(",")
    sections = []
    if "curve" in chosen:
        sections += ["### Accuracy vs sparsity (MNIST ViT, ORT top-1 %)", *curve_rows(work, args.quick, args.only), ""]
    if "2of4" in chosen:
        sections += ["### 2:4 (MNIST ViT, ORT top-1 %)", *two_four_rows(work), ""]
    if "structured" in chosen:
        sections += ["### Structured 30 % (ORT, batch 8, 2 threads; dense and pruned timed in one run)",
                     *structured_rows(work), ""]
    if "kernel" in chosen:
        sections += ["### Block pruning + sparse.kernels, end to end (torch programs, batch 8, 2 threads; "
                     "dense and sparse timed in one run)", *kernel_rows(work)]
    text = "\n".join(sections)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
