"""The `openvino` target against NNCF + OpenVINO and ONNX Runtime's quantizers, all in one process.

Per model (DeiT-S with random weights, as the issue measured it; EfficientNet-Lite0 with its real
ImageNet weights): the `int8-ptq` recipe's passes (its defaults, or with `--symmetric-attention` the
opt-in zero-point-free attention operands OpenVINO runs in int8) calibrate on photo crops, the float
and int8 graphs are exported with the `onnx` and `openvino` targets, and every peer quantizes the same float
ONNX with the same calibration tensors (`benches/peers_openvino.py`). Every artifact then runs on the
same evaluation crops (top-1 agreement with the float model with its 95 % Wilson interval, top-5
containment, max |logit diff| to the simulation for compressor's artifacts) and all of them are timed
interleaved round by round at batch 1 and 8 with 2 threads, so each ratio comes from one run. The
int8 column counts GEMMs that run in int8 in the runtime's own graph (OpenVINO's compiled runtime
model, ONNX Runtime's optimized graph). The CPU's flags and the machine's load print with the tables.

    python benches/openvino_target.py [--models deit_small_patch16_224,efficientnet_lite0] [--calib 128]
                               [--eval 300] [--min-seconds 20] [--runs 10] [--symmetric-attention] [--md FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import peers_openvino as peers
import torch
from machine import cpu_line

from compressor import zoo
from compressor.data import IMAGENET_MEAN, IMAGENET_STD, DataSource, Preprocess
from compressor.data.photo_crops import crops
from compressor.eval import Outputs, collect, measure, torch_runner, wilson_interval
from compressor.eval.metrics import top5_containment
from compressor.graph import capture
from compressor.passes import PassContext
from compressor.progress import Progress
from compressor.recipe import load_recipe
from compressor.report.render import markdown_table
from exporters import get_exporter
from exporters.onnx import OnnxArtifact

THREADS = 2
BATCHES = (1, 8)
PRE = Preprocess(size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = zoo.build(name).eval()
    if name == "efficientnet_lite0":
        model.load_state_dict(torch.load(zoo.pretrained_file(name), weights_only=True))
    return model


def artifacts(name: str, calib: DataSource, work: Path, bar: Progress,
              symmetric_attention: bool) -> tuple[dict[str, Path], torch.nn.Module, dict[str, dict]]:
    """compressor's files for `name`: float ONNX, int8 ONNX, int8 and float IR, and the simulation."""
    model = build(name)
    graph = capture(model, next(calib.batches(2))[0])
    float_graph = graph.clone()
    ctx = PassContext(calib=calib, calib_batch_size=32, progress=bar)
    for entry in load_recipe("int8-ptq").passes:
        if entry.name == "quant.int8_ptq" and symmetric_attention:  # OpenVINO's int8 attention matmuls
            entry = entry.model_copy(update={"params": {**entry.params, "symmetric_attention": True}})
        entry.build().run(graph, ctx)
    files, checks = {}, {}
    for target, role, g, precision in (("onnx", "baseline", float_graph, "fp32"), ("onnx", "model", graph, "int8"),
                                       ("openvino", "baseline", float_graph, "fp32"),
                                       ("openvino", "model", graph, "int8")):
        bar.info(f"{name}: export {target} {precision}")
        ex = get_exporter(target)
        art = ex.export(g, work / f"{role}{ex.suffix}", precision)
        files[f"{target}/{role}"] = art.path
        checks[f"{target}/{role}"] = art.meta
    return files, graph.gm, checks


def rows_for(name: str, calib_n: int, eval_n: int, min_seconds: float, runs_n: int,
             bar: Progress, symmetric_attention: bool) -> tuple[list, list]:
    calib = DataSource(f"photo crops (calib, {calib_n})", crops("calib", calib_n), None, PRE)
    data = DataSource(f"photo crops (eval, {eval_n})", crops("eval", eval_n), None, PRE)
    calib_tensors = [b[0].numpy() for b in calib.batches(32)]
    with tempfile.TemporaryDirectory(prefix="bench-openvino-") as tmp:
        work = Path(tmp)
        files, sim_gm, checks = artifacts(name, calib, work, bar, symmetric_attention)
        base_onnx = files["onnx/baseline"]
        made: dict[str, Path] = {}
        for peer, fn in peers.peers(transformer=name.startswith("deit")).items():
            bar.info(f"{name}: peer {peer}")
            start = time.perf_counter()
            made[peer] = fn(base_onnx, calib_tensors, work / (f"{peer}.xml" if "openvino" in peer else f"{peer}.onnx"))
            bar.info(f"{name}: {peer} took {time.perf_counter() - start:.0f} s")
        ort = lambda p: OnnxArtifact("onnx", p, "").runner(THREADS)  # noqa: E731
        ov = lambda p, prec="default": peers.openvino_runner(p, THREADS, prec)  # noqa: E731
        xml = lambda key: files[key] / "model.xml"  # noqa: E731
        runs: dict[str, tuple[Callable, Callable[[], dict | str]]] = {
            "ORT fp32": (ort(base_onnx), lambda: "-"),
            "OpenVINO fp32 (f32 forced)": (ov(xml("openvino/baseline"), "f32"), lambda: "-"),
            "OpenVINO float default (baseline.openvino)": (ov(xml("openvino/baseline")), lambda: "-"),
            "compressor int8 model.onnx in ORT": (ort(files["onnx/model"]),
                                                  lambda: peers.ort_int8(files["onnx/model"])),
            "compressor int8 model.onnx in OpenVINO": (ov(files["onnx/model"]),
                                                       lambda: peers.openvino_int8(files["onnx/model"], base_onnx)),
            "compressor int8 model.openvino": (ov(xml("openvino/model")),
                                               lambda: checks["openvino/model"]["runtime_int8"]),
        }
        for peer, path in made.items():
            runs[peer] = ((ov(path), lambda p=path: peers.openvino_int8(p, base_onnx)) if "openvino" in peer
                          else (ort(path), lambda p=path: peers.ort_int8(p)))
        ref = collect(torch_runner(build(name)), data, 32, bar, "float model")
        sim = collect(torch_runner(sim_gm), data, 32, bar, "simulation")
        outs = {label: collect(run, data, 32, bar, label) for label, (run, _) in runs.items()}
        int8 = {label: counts() for label, (_, counts) in runs.items()}
        timing = measure({k: r for k, (r, _) in runs.items()}, (1, 3, 224, 224), BATCHES, 3, runs_n, bar,
                         min_seconds=min_seconds, max_runs=200)
        ov_choice = checks["openvino/baseline"]["inference_precision"]
    return accuracy_rows(name, ref, sim, outs, int8), latency_rows(name, timing, ov_choice)


def _counts(c: dict | str) -> str:
    if isinstance(c, str):
        return c
    if "int8" in c and isinstance(c["int8"], int):  # ORT: kernels in its optimized graph
        return f"{c['int8']} int8 / {c['float']} float"
    return ", ".join(f"{k} {v['int8']}/{v['graph']}" for k, v in c.items())


def accuracy_rows(name: str, ref: Outputs, sim: Outputs, outs: dict[str, Outputs], int8: dict) -> list[list[str]]:
    def agree(o: Outputs) -> str:
        hits = int((o.logits.argmax(1) == ref.logits.argmax(1)).sum())
        lo, hi = wilson_interval(hits, len(o.logits))
        return f"{100 * hits / len(o.logits):.2f} [{lo:.1f}, {hi:.1f}]"

    rows = [[name, "simulation (PyTorch)", agree(sim), f"{top5_containment(sim, ref):.1f}", "0", "-"]]
    for label, o in outs.items():
        diff = f"{np.abs(o.logits - sim.logits).max():.3f}" if label.startswith("compressor") else "-"
        rows.append([name, label, agree(o), f"{top5_containment(o, ref):.1f}", diff, _counts(int8[label])])
    return rows


def latency_rows(name: str, timing: dict, ov_choice: str) -> list[list[str]]:
    ms = {k: {b: v[b]["median"] for b in BATCHES} for k, v in timing.items()}
    floats = [k for k in ms if "fp32" in k or "float" in k]
    best = {b: min(floats, key=lambda k: ms[k][b]) for b in BATCHES}
    ov32 = "OpenVINO fp32 (f32 forced)"
    rows = []
    for label, t in ms.items():
        rows.append([name, label + (f" [runs {ov_choice}]" if label.startswith("OpenVINO float default") else ""),
                     *(f"{t[b]:.1f}" for b in BATCHES), *(f"{t[b] / ms[ov32][b]:.2f}" for b in BATCHES),
                     *(f"{t[b] / ms[best[b]][b]:.2f}" for b in BATCHES)])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="deit_small_patch16_224,efficientnet_lite0")
    ap.add_argument("--calib", type=int, default=128, help="calibration crops (the same tensors for every quantizer)")
    ap.add_argument("--eval", type=int, default=300, help="evaluation crops")
    ap.add_argument("--min-seconds", type=float, default=20.0, help="timing budget per batch size")
    ap.add_argument("--runs", type=int, default=10, help="timed rounds at least, per batch size")
    ap.add_argument("--symmetric-attention", action="store_true",
                    help="int8-ptq's opt-in zero-point-free attention operands (OpenVINO then runs those matmuls in "
                         "int8); without it the recipe's default")
    ap.add_argument("--md", type=Path, help="also write the tables as Markdown")
    args = ap.parse_args()
    bar = Progress(enabled=True)
    acc, lat = [], []
    for name in args.models.split(","):
        a, t = rows_for(name, args.calib, args.eval, args.min_seconds, args.runs, bar, args.symmetric_attention)
        acc += a
        lat += t
    lines = [cpu_line(THREADS), "", "Accuracy: top-1 agreement with the float model [95% CI], top-5 containment, on "
             f"{args.eval} photo crops; int8 GEMMs in the runtime's graph", "",
             *markdown_table(["model", "artifact", "agreement %", "top-5 %", "max |Δ| vs sim", "int8 GEMMs"], acc),
             "", f"Latency: median ms, {THREADS} threads, all artifacts of a model interleaved round by round", "",
             *markdown_table(["model", "artifact", *(f"b{b} ms" for b in BATCHES),
                              *(f"b{b} / OV fp32" for b in BATCHES), *(f"b{b} / best float" for b in BATCHES)], lat),
             "", cpu_line(THREADS)]
    text = "\n".join(lines)
    print(text)
    if args.md:
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
