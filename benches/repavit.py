"""RePaViT bench (issue 5): plain ViT vs RePa ViT before and after `reparam.repavit`, on ONNX artifacts.

Rows per model: the plain ViT, the RePa ViT as trained (BatchNorm channel-idle FFNs), the RePa
ViT folded (the default: the GELU branch and the C×C shortcut share one Linear over their
concatenated inputs) and folded with `merge_shortcut: false` (two Linears and an add). Top-1 is
measured on the exported ONNX artifact in ONNX Runtime on the 1000 MNIST test digits; latency is
ONNX Runtime CPU at batch 8 with 2 threads, all artifacts of a model timed interleaved in one run
(medians). Cases: the bundled MNIST checkpoints (`vit_mnist.pt`, `repavit_mnist.pt`: same width,
depth and MLP ratio) and a ViT-Small-shaped pair at 224 px with random weights (random BN
statistics too, so the fold has something to fold), where the FFN dominates the cost and the
issue's aim is folded ≤ 0.7x the plain ViT.

A last table converts the plain `vit_mnist.pt` with the `repavit-convert` recipe
(`reparam.channel_idle` then `finetune.distill`) through `compressor.compress`: top-1 of the
ONNX artifacts, agreement with the original on the calibration images before and after the
fine-tune, and the latency ratio against the plain artifact from the same run.

    python benches/repavit.py [--skip-vit-small] [--skip-convert] [--mlp-ratio 4] [--seconds 5] [--md FILE]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import compressor
from compressor import zoo
from compressor.data import open_source
from compressor.eval.latency import measure
from compressor.graph import Graph, capture
from compressor.io import load_model
from compressor.passes import PassContext
from compressor.passes.reparam.repavit import RePaViT
from compressor.progress import Progress
from exporters import get_exporter

ROOT = Path(__file__).resolve().parent.parent
BATCH, THREADS = 8, 2
UNMERGED = "RePa folded, merge_shortcut off"


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(1 + 0.1 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))


def _ffn_params_plain(model: nn.Module) -> int:
    """FFN parameters of block 0 of a plain ViT: LayerNorm norm2 plus fc1 and fc2."""
    block = model.blocks[0]
    return sum(p.numel() for m in (block.norm2, block.mlp) for p in m.parameters())


def run_case(name: str, plain: nn.Module, repa: nn.Module, example: torch.Tensor, work: Path,
             data: Path | None, preprocess, seconds: float, rounds: int) -> list[dict]:
    graphs: dict[str, Graph] = {"plain ViT": capture(plain, example), "RePa unfolded": capture(repa, example)}
    for variant, merge in (("RePa folded", True), (UNMERGED, False)):
        graphs[variant] = graphs["RePa unfolded"].clone()
        ctx = PassContext()
        RePaViT(RePaViT.Params(merge_shortcut=merge)).run(graphs[variant], ctx)
    summary = ctx.log[0].summary
    ffn = {"plain ViT": _ffn_params_plain(plain), "RePa unfolded": summary["ffns"][0]["params_before"],
           "RePa folded": summary["ffns"][0]["params_after"], UNMERGED: summary["ffns"][0]["params_after"]}
    arts = {k: get_exporter("onnx").export(g, work / f"{name}-{k.replace(' ', '_')}.onnx", "fp32")
            for k, g in graphs.items()}
    runners = {k: a.runner(THREADS) for k, a in arts.items()}
    top1 = {k: None for k in arts}
    x = torch.randn(BATCH, *example.shape[1:], generator=torch.Generator().manual_seed(1)).numpy()
    diff = float(np.abs(runners["RePa folded"](x) - runners["RePa unfolded"](x)).max()
                 / np.abs(runners["RePa unfolded"](x)).max())
    if data is not None:
        src = open_source(data, preprocess, "evaluation")
        for k, run in runners.items():
            hits = n = 0
            for xb, yb in src.batches(250):
                hits += int((run(xb.numpy()).argmax(1) == yb.numpy()).sum())
                n += len(yb)
            top1[k] = 100.0 * hits / n
    lat = measure(runners, tuple(example.shape), [BATCH], warmup=5, runs=rounds, progress=Progress(),
                  min_seconds=seconds)
    ms = {k: v[BATCH]["median"] for k, v in lat.items()}
    return [{"model": name, "variant": k, "ffn_params": ffn[k], "top1": top1[k], "ms": ms[k],
             "ratio": ms[k] / ms["plain ViT"], "runs": lat[k][BATCH]["runs"], "rel_diff": diff,
             "folded": summary["folded"]} for k in arts]


def convert_rows(work: Path) -> list[str]:
    rep = compressor.compress(ROOT / "vit_mnist.pt", recipe="repavit-convert", out_dir=work / "convert",
                              batch_sizes=[BATCH]).report
    conv, ft = rep["passes"][0]["summary"], rep["passes"][1]["summary"]
    art, base = rep["artifacts"][0], rep["baseline"]
    return ["| plain vit_mnist.pt → repavit-convert | FFN params (all blocks) | top-1 ORT | agreement with original "
            "on calib, before → after fine-tune | b8 ms plain → converted | ratio |", "|---|---|---|---|---|---|",
            f"| idle 0.75, {ft['steps']} distillation steps | {conv['params_before']:,} → {conv['params_after']:,} | "
            f"{base['accuracy']:.2f} → {art['accuracy']:.2f} | {ft['teacher_agreement_before']:.2f} → "
            f"{ft['teacher_agreement_after']:.2f} | {base['latency_ms']['median']:.2f} → "
            f"{art['latency_ms']['median']:.2f} | {1 / art['speedup_vs_baseline']:.3f} |"]


def _checkpoint(path: Path) -> tuple[nn.Module, object]:
    loaded = load_model(path)
    return loaded.module.eval(), loaded.preprocess


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-vit-small", action="store_true")
    ap.add_argument("--skip-convert", action="store_true")
    ap.add_argument("--mlp-ratio", type=float, default=4.0, help="MLP ratio of the ViT-Small-shaped pair")
    ap.add_argument("--seconds", type=float, default=5.0, help="least time spent in timing rounds per case")
    ap.add_argument("--rounds", type=int, default=30, help="least interleaved timing rounds per case")
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="bench-repavit-"))
    plain, pre = _checkpoint(ROOT / "vit_mnist.pt")
    repa, _ = _checkpoint(ROOT / "repavit_mnist.pt")
    rows = run_case("MNIST (vit_mnist.pt / repavit_mnist.pt)", plain, repa, torch.randn(2, 1, 28, 28), work,
                    ROOT / "calibration_data" / "mnist" / "test", pre, args.seconds, args.rounds)
    if not args.skip_vit_small:
        torch.manual_seed(0)
        plain = zoo.build("deit_small_patch16_224", mlp_ratio=args.mlp_ratio).eval()
        repa = zoo.build("repavit_small_patch16_224", mlp_ratio=args.mlp_ratio).eval()
        _randomize_bn(repa)
        rows += run_case(f"ViT-S 224, MLP ratio {args.mlp_ratio:g} (random init)", plain, repa,
                         torch.randn(2, 3, 224, 224), work, None, None, args.seconds, args.rounds)
    lines = ["| model | variant | FFN params / block | top-1 ORT | b8 ms (median) | vs plain (aim folded ≤ 0.7) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{r['top1']:.2f}"
        lines.append(f"| {r['model']} | {r['variant']} | {r['ffn_params']:,} | {top1} | {r['ms']:.2f} | "
                     f"{r['ratio']:.3f} |")
    lines.append("")
    for r in rows[::4]:
        lines.append(f"- {r['model']}: {r['folded']} FFNs folded; folded vs unfolded ONNX outputs, max relative "
                     f"difference {r['rel_diff']:.1e}; {r['runs']} interleaved timing rounds.")
    if not args.skip_convert:
        lines += ["", *convert_rows(work)]
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
