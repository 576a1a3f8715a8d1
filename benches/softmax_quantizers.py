"""Post-softmax quantizers on the MNIST ViT: uniform, log2, log√2 and our TanQ at 3 and 4 bits.

Only the attention maps (softmax outputs) are quantized; everything else stays float, so the
table isolates the quantizer. Each layer's quantizer is fitted on the 500 calibration digits
(uniform: RepQ percentile search; log2/log√2: RepQ's percentile-MSE scale; TanQ: θ searched by
the attention-output error softmax·V), then measured on the 1000 test digits: the mean over
layers of the attention-output MSE relative to its float power, and top-1 of the PyTorch
simulation (the full low-bit recipes, exported and run in ONNX Runtime, are in vit_ptq_table.py).

    python benches/softmax_quantizers.py [--md FILE]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from compressor.data import Preprocess, open_source
from compressor.graph import Graph, capture
from compressor.graph.graph import is_kind
from compressor.io import load_model
from compressor.passes.quant.quantizers import (
    Log2Quantizer,
    LogSqrt2Quantizer,
    UniformQuantizer,
    search_tan_theta,
)

ROOT = Path(__file__).resolve().parent.parent
Fake = Callable[[torch.Tensor], torch.Tensor]


def attention_sites(graph: Graph) -> list[tuple]:
    """(softmax node, attn·v matmul node) per attention."""
    sites = []
    for sm in graph.find("softmax"):
        users = [u for u in sm.users if is_kind(u, "matmul") and u.args[0] is sm]
        if len(users) == 1:
            sites.append((sm, users[0]))
    return sites


def wrap(graph: Graph, sites: list[tuple], fns: list[Fake]) -> None:
    """Route each attention map through fns[i] before its attn·v matmul (a Python call in the graph)."""
    for (sm, mm), fn in zip(sites, fns, strict=True):
        with graph.gm.graph.inserting_after(sm):
            node = graph.gm.graph.call_function(fn, (sm,))
        mm.update_arg(0, node)
    graph.gm.recompile()


def record(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(attention maps, values) per layer for the inputs `x`."""
    g = capture(model, x[:2])
    sites = attention_sites(g)
    store: list[list[torch.Tensor]] = [[] for _ in sites]

    def keeper(i: int) -> Fake:
        def keep(a: torch.Tensor) -> torch.Tensor:
            store[i].append(a)
            return a
        return keep

    values: list[list[torch.Tensor]] = [[] for _ in sites]
    for i, (_sm, mm) in enumerate(sites):
        v_src = mm.args[1]
        with g.gm.graph.inserting_after(v_src):
            node = g.gm.graph.call_function(lambda t, i=i: values[i].append(t) or t, (v_src,))
        mm.update_arg(1, node)
    wrap(g, sites, [keeper(i) for i in range(len(sites))])
    with torch.no_grad():
        g.gm(x)
    return [(a[0], v[0]) for a, v in zip(store, values, strict=True)]


def fit(kind: str, bits: int, attn: torch.Tensor, v: torch.Tensor) -> Fake:
    if kind == "uniform":
        return UniformQuantizer.percentile(attn, bits).fake
    if kind == "log2":
        return Log2Quantizer.calibrate(attn, bits).fake
    if kind == "log√2":
        return LogSqrt2Quantizer.calibrate(attn, bits).fake
    return search_tan_theta(attn, v, bits).fake


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(ROOT / "vit_mnist.pt")
    model, spec = loaded.module.eval(), Preprocess(**loaded.preprocess.model_dump())
    calib = torch.cat([x for x, _ in open_source(ROOT / "calibration_data/mnist/calib", spec).batches(500)])
    x, y = map(torch.cat, zip(*open_source(ROOT / "calibration_data/mnist/test", spec).batches(1000), strict=True))
    cal_sites, test_sites = record(model, calib), record(model, x)
    lines = ["| quantizer | bits | attention-output rel. MSE (mean of layers) | top-1 (sim) | fitted |",
             "|---|---|---|---|---|"]
    with torch.no_grad():
        base = float((model(x).argmax(1) == y).float().mean() * 100)
    for bits in (4, 3):
        for kind in ("uniform", "log2", "log√2", "TanQ"):
            fns = [fit(kind, bits, a, v) for a, v in cal_sites]
            rel = [float((f(a) @ v - a @ v).pow(2).mean() / (a @ v).pow(2).mean())
                   for f, (a, v) in zip(fns, test_sites, strict=True)]
            g = capture(model, x[:2])
            wrap(g, attention_sites(g), fns)
            with torch.no_grad():
                acc = float((g.gm(x).argmax(1) == y).float().mean() * 100)
            note = ""
            if kind == "TanQ":
                note = "θ = " + ", ".join(f"{search_tan_theta(a, v, bits).theta:.2f}" for a, v in cal_sites)
            lines.append(f"| {kind} | {bits} | {sum(rel) / len(rel):.2e} | {acc:.2f} | {note} |")
            print(lines[-1], flush=True)
    text = f"float top-1 {base:.2f}\n\n" + "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
