"""Every deployment target in one run: int8-ptq on the bundled MNIST ViT and CNN.

For each model, one `compress` run exports the float and the int8 artifact of every target
available here, measures top-1 on the 1000 test digits in each target's own runtime, and times
all artifacts interleaved round by round (batch 1 and 8, 2 threads), so each INT8/FP32 ratio
comes from one run. Targets that cannot run on this machine (CoreML off macOS, TensorRT without
its libraries) are exported and inspected, and their rows say why they have no numbers.

    python benches/targets.py [--targets onnx,tvm,executorch,coreml,tensorrt] [--recipe int8-ptq] [--md FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import compressor
from compressor.report.render import markdown_table
from exporters import EXPORTERS

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("vit_mnist.pt", "cnn_mnist.pt")
TARGET = 0.5  # points of top-1 an int8 artifact may lose


def available_targets(wanted: list[str]) -> tuple[list[str], dict[str, str]]:
    ok, missing = [], {}
    for t in wanted:
        usable, why = EXPORTERS[t].available() if t in EXPORTERS else (False, "no such exporter")
        if usable:
            ok.append(t)
        else:
            missing[t] = why
    return ok, missing


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def accuracy_rows(model: str, r: dict) -> list[list[str]]:
    rows = []
    for a in r["artifacts"]:
        base = r["baselines"][a["target"]]
        measured = a["accuracy"] is not None
        verdict = "-" if a["drop"] is None else ("yes" if a["drop"] <= TARGET else "NO")
        ci = "-" if a["drop_ci95"] is None else f"[{a['drop_ci95'][0]:+.2f}, {a['drop_ci95'][1]:+.2f}]"
        rows.append([model, a["target"], _f(base["accuracy"]), _f(a["accuracy"]), _f(a["sim_accuracy"]),
                     _f(a["sim_gap"], "+.2f"), _f(a["drop"], "+.2f"), ci, verdict,
                     "ok" if measured else a["status"]])
    return rows


def latency_rows(model: str, r: dict, batches: list[int]) -> list[list[str]]:
    rows = []
    for a in r["artifacts"]:
        base = r["baselines"][a["target"]]
        if a["latency_ms"] is None or base["latency_ms"] is None:
            rows.append([model, a["target"]] + ["-"] * (3 * len(batches)) + [a["status"]])
            continue
        cells = []
        for b in batches:
            f = base["latency_ms"]["per_batch"][str(b)]["median"]
            q = a["latency_ms"]["per_batch"][str(b)]["median"]
            cells += [f"{f:.2f}", f"{q:.2f}", f"{f / q:.2f}x"]
        rows.append([model, a["target"], *cells, f"{base['size_bytes'] / 1e6:.2f} → {a['size_bytes'] / 1e6:.2f}"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="onnx,tvm,executorch,coreml,tensorrt")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--recipe", default="int8-ptq", help="int8-ptq-edge: Linear outputs quantized for XNNPACK")
    ap.add_argument("--md", type=Path, help="also write the tables as Markdown here")
    args = ap.parse_args()
    targets, missing = available_targets(args.targets.split(","))
    batches = [int(b) for b in args.batch_sizes.split(",")]
    for t, why in missing.items():
        print(f"skipped target {t}: {why}")
    acc, lat, walls = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            start = time.perf_counter()
            res = compressor.compress(ROOT / model, recipe=args.recipe, export=targets, out_dir=Path(tmp) / model,
                                      batch_sizes=batches, threads=2)
            walls.append(f"{model}: {time.perf_counter() - start:.0f} s "
                         f"(export {res.report['timings_s']['export_s']:.0f} s, "
                         f"evaluate+time {res.report['timings_s']['evaluate_s']:.0f} s)")
            name = model.removesuffix(".pt")
            acc += accuracy_rows(name, res.report)
            lat += latency_rows(name, res.report, batches)
    acc_header = ["model", "target", "FP32 artifact", "INT8 artifact", "simulation", "sim gap", "drop",
                  "drop 95% CI", f"within {TARGET}", "status"]
    lat_header = ["model", "target"] + [f"{k} b{b}" for b in batches for k in ("FP32 ms", "INT8 ms", "speedup")]
    lat_header.append("MB FP32 → INT8")
    lines = [f"Recipe `{args.recipe}`.", "",
             "## Top-1 on the 1000 MNIST test digits, measured in each target's runtime", "",
             *markdown_table(acc_header, acc), "", "## Latency, median ms, 2 threads, same run", "",
             *markdown_table(lat_header, lat), "", "wall: " + "; ".join(walls)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)


if __name__ == "__main__":
    main()
