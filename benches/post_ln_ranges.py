"""Post-LayerNorm inter-channel range variation of the bundled ViTs (issue 17).

RepQ-ViT exists because a real ViT's post-LayerNorm activations vary strongly from channel to
channel: one layer-wise activation scale then wastes most of its grid on a few wide channels. A
model whose LayerNorm outputs are nearly uniform across channels would flatter every layer-wise
quantizer, so this prints, for each LayerNorm output of each checkpoint, the per-channel range
(max − min over the calibration images and tokens) as max / median and max / min, on the first
`--images` calibration images of the checkpoint's own dataset.

    python benches/post_ln_ranges.py [--models vit_mnist.pt,vit_mnist_deep.pt,vit_digits224.pt] [--images 64]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compressor.data import Preprocess, open_source  # noqa: E402
from compressor.io import load_model  # noqa: E402
from compressor.report.render import markdown_table  # noqa: E402


def channel_ranges(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel (last axis) max − min of every LayerNorm's output over all images and tokens."""
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: torch.nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
            low, high = torch.aminmax(out.detach().reshape(-1, out.shape[-1]), dim=0)
            lo[name] = torch.minimum(lo.get(name, low), low)
            hi[name] = torch.maximum(hi.get(name, high), high)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad():
        for batch in x.split(16):
            model(batch)
    for h in handles:
        h.remove()
    return {name: hi[name] - lo[name] for name in hi}


def rows(file: str, images: int) -> list[list[str]]:
    loaded = load_model(ROOT / file)
    spec = Preprocess(**loaded.preprocess.model_dump())
    calib = open_source(ROOT / "calibration_data" / str(loaded.dataset) / "calib", spec)
    x = torch.cat([b for b, _ in itertools.islice(calib.batches(16), -(-images // 16))])[:images]
    out = []
    for name, r in channel_ranges(loaded.module.eval(), x).items():
        med = r.median()
        out.append([file, name, f"{r.max():.2f}", f"{med:.2f}", f"{r.min():.3f}", f"{r.max() / med:.1f}",
                    f"{r.max() / r.min():.0f}", str(int((r > 4 * med).sum()))])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_mnist.pt,vit_mnist_deep.pt,vit_digits224.pt")
    ap.add_argument("--images", type=int, default=64)
    args = ap.parse_args()
    body = [row for file in args.models.split(",") for row in rows(file, args.images)]
    header = ["model", "LayerNorm", "max range", "median range", "min range", "max / median", "max / min",
              "channels > 4x median"]
    print(f"per-channel range (max − min over {args.images} calibration images x tokens) of each LayerNorm output")
    print("\n".join(markdown_table(header, body)))


if __name__ == "__main__":
    main()
