"""ViT low-bit PTQ comparison table (issue 3): top-1 on each model's 1000 test images (its checkpoint's
dataset), measured in ONNX Runtime on the exported artifact, for ViTs of different shape and length
(the MNIST ViTs at 17 tokens, vit_digits224.pt at 197).

Rows: naive min-max, percentile (RepQ's range search without its reparameterizations), RepQ-ViT
(rounded z̃, all Q/DQ), RepQ-ViT with its fractional z̃ (those quantizers run as float ops in
ONNX), DopQ-ViT (MOSF + TanQ), APHQ-ViT with the `--fast` preset. Every method calibrates on the
500 calibration digits' first images (32 for RepQ/DopQ, 128 + 256 for APHQ). Wall time is the
pass alone, per bit width, on this machine. `--ablation` adds APHQ variants on the first
model: plain QDrop MSE loss, APHQ's all-ones H̄ direction, no MLP reconstruction.

    python benches/vit_ptq_table.py [--models vit_mnist.pt,vit_mnist_deep.pt,vit_digits224.pt] [--bits 8,6,4,3]
                                    [--only TEXT] [--ablation] [--md FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from compressor.data import Preprocess, open_source
from compressor.graph import capture
from compressor.io import load_model
from compressor.passes import PASSES, PassContext
from exporters.onnx import OnnxExporter

ROOT = Path(__file__).resolve().parent.parent
METHODS = {
    "naive min-max": ("quant.repq", {"range": "minmax", "post_ln": "layerwise", "softmax": "uniform"}),
    "percentile": ("quant.repq", {"post_ln": "layerwise", "softmax": "uniform"}),
    "RepQ-ViT": ("quant.repq", {}),
    "RepQ-ViT, fractional z̃": ("quant.repq", {"round_zero_point": False}),
    "DopQ-ViT (MOSF+TanQ)": ("quant.dopq", {}),
    "APHQ-ViT --fast": ("quant.aphq", {"fast": True}),
}
ABLATION = {
    "APHQ --fast, QDrop MSE loss (no H̄)": ("quant.aphq", {"fast": True, "hessian": "mse"}),
    "APHQ --fast, H̄ along all-ones (paper)": ("quant.aphq", {"fast": True, "aph_direction": "ones"}),
    "APHQ --fast, no MLP reconstruction": ("quant.aphq", {"fast": True, "mlp_reconstruction": False}),
}


def top1(logits: np.ndarray, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y.numpy()).mean() * 100)


def measure(model: torch.nn.Module, calib, x: torch.Tensor, y: torch.Tensor, pass_name: str, kw: dict,
            bits: int, tmp: Path) -> tuple[float, float, float]:
    """(ORT top-1, simulation top-1, pass seconds) of one method at WbAb."""
    g = capture(model, x[:2])
    start = time.perf_counter()
    PASSES[pass_name](PASSES[pass_name].Params(w_bits=bits, a_bits=bits, **kw)).run(g, PassContext(calib=calib))
    seconds = time.perf_counter() - start
    sim = top1(g(x).numpy(), y)
    run = OnnxExporter().export(g, tmp / "model.onnx", "quantized").runner(2)
    ort = top1(np.concatenate([run(xb.numpy()) for xb in x.split(250)]), y)
    return ort, sim, seconds


def table(name: str, model: torch.nn.Module, calib, x, y, methods: dict, bits: tuple[int, ...]) -> list[str]:
    with torch.no_grad():
        base = top1(model(x).numpy(), y)
    lines = [f"**{name}** (float top-1 {base:.2f}; cells: ONNX Runtime top-1, simulation in brackets where it differs)",
             "", "| method | " + " | ".join(f"W{b}A{b}" for b in bits) + " | pass wall s |",
             "|---|" + "---|" * (len(bits) + 1)]
    with tempfile.TemporaryDirectory() as d:
        for label, (pass_name, kw) in methods.items():
            cells, walls = [], []
            for b in bits:
                ort, sim, seconds = measure(model, calib, x, y, pass_name, kw, b, Path(d))
                cells.append(f"{ort:.2f}" + (f" ({sim:.2f})" if abs(ort - sim) > 1e-9 else ""))
                walls.append(f"{seconds:.0f}")
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {'/'.join(walls)} |")
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_mnist.pt,vit_mnist_deep.pt")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--bits", default="8,6,4,3", help="bit widths (WbAb), e.g. 4,3")
    ap.add_argument("--only", help="rows whose name contains this text")
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = ["Pass wall seconds are listed per bit width in column order (2 CPU cores).", ""]
    for i, file in enumerate(args.models.split(",")):
        loaded = load_model(ROOT / file)
        model, spec = loaded.module.eval(), Preprocess(**loaded.preprocess.model_dump())
        data = ROOT / "calibration_data" / str(loaded.dataset)
        calib = open_source(data / "calib", spec)
        batches = open_source(data / "test", spec).batches(1000)
        x, y = map(torch.cat, zip(*batches, strict=True))
        bits = tuple(int(b) for b in args.bits.split(","))
        rows = {k: v for k, v in METHODS.items() if not args.only or args.only in k}
        if rows:
            out += [*table(file, model, calib, x, y, rows, bits), ""]
        if args.ablation and i == 0:
            out += [*table(f"{file}, APHQ ablation", model, calib, x, y, ABLATION, bits), ""]
    text = "\n".join(out)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
