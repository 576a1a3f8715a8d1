"""ViT low-bit PTQ comparison table (issue 3, in progress): top-1 on the MNIST ViT test digits.

Rows so far: naive min-max, percentile (RepQ's search without its reparameterizations), RepQ-ViT
(post-LN scale reparameterization + log√2 post-softmax), and RepQ-ViT with the rounded z̃ that
integer deployment needs. All are `quant.repq` with pieces switched off, calibrated on 32
images, and measured on the PyTorch simulation: no ONNX export of these quantizers exists yet.
DopQ-ViT and APHQ-ViT rows are not built yet.

    python benches/vit_ptq_table.py [--md FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from compressor.data import Preprocess, open_source
from compressor.graph import capture
from compressor.io import load_model
from compressor.passes import PASSES, PassContext

ROOT = Path(__file__).resolve().parent.parent
BITS = (8, 6, 4, 3)
METHODS = {
    "naive min-max": {"range": "minmax", "post_ln": "layerwise", "softmax": "uniform"},
    "percentile": {"post_ln": "layerwise", "softmax": "uniform"},
    "RepQ-ViT": {},
    "RepQ-ViT, rounded z̃": {"round_zero_point": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(ROOT / "vit_mnist.pt")
    model, spec = loaded.module.eval(), Preprocess(**loaded.preprocess.model_dump())
    calib = open_source(ROOT / "calibration_data/mnist/calib", spec)
    x, y = map(torch.cat, zip(*open_source(ROOT / "calibration_data/mnist/test", spec).batches(1000), strict=True))
    with torch.no_grad():
        base = float((model(x).argmax(1) == y).float().mean() * 100)
    lines = ["| method | " + " | ".join(f"W{b}A{b}" for b in BITS) + " | pass wall s (W4A4) |",
             "|---|" + "---|" * (len(BITS) + 1)]
    for name, kw in METHODS.items():
        cells, wall = [], 0.0
        for bits in BITS:
            g = capture(model, x[:2])
            start = time.perf_counter()
            params = PASSES["quant.repq"].Params(w_bits=bits, a_bits=bits, **kw)
            PASSES["quant.repq"](params).run(g, PassContext(calib=calib))
            wall = time.perf_counter() - start if bits == 4 else wall
            with torch.no_grad():
                cells.append(f"{float((g(x).argmax(1) == y).float().mean() * 100):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {wall:.1f} |")
        print(lines[-1], flush=True)
    text = f"MNIST ViT, float top-1 {base:.2f}; PyTorch simulation\n\n" + "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
