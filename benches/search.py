"""`compress search` on real models, against the bundled recipes and the peers, and on Ray.

Three parts (each prints its table with the machine line; ratios only compare within one run):

- `effnet`: EfficientNet-Lite0 (real ImageNet weights, photo crops, agreement with the float
  model), `--max-drop 1.0` over the search's targets. The published artifact is then timed again,
  interleaved with its target's float artifact and the peers' int8 artifacts (ONNX Runtime
  quantize_static, NNCF's ONNX backend) built from the same float ONNX and calibration tensors.
  Targets: it meets the limit, it is no slower than every bundled recipe that meets it (in the
  search's own interleaved timing), and faster than the fastest peer int8 artifact.
- `vit`: the 197-token ViT (`vit_digits224.pt`), `--objective size` over int8-ptq and w6a6-repq:
  uniform W4A8 (int8-ptq w4) and W6A6 against the sensitivity-driven 4/8-bit allocations at an
  average of 6 and 5 bits. Target: an allocation at <= 6 bits keeps drop <= 1 where the uniform ones
  do not.
- `ray`: the MNIST CNN, every applicable bundled recipe plus the mixed-precision ones (>= 8
  candidates), in-process and on a local Ray of 1 and 2 workers: the wall time of each, and whether
  the choice and the accuracy numbers are the same.

    python benches/search.py [--parts effnet,vit,ray] [--export onnx,openvino] [--effnet-recipes A,B]
                             [--min-seconds S]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benches.conformance import _efficientnet  # noqa: E402
from benches.machine import cpu_line  # noqa: E402
from benches.peers import peers  # noqa: E402
from compressor.eval import agreement, collect, measure  # noqa: E402
from compressor.eval.metrics import torch_runner  # noqa: E402
from compressor.progress import Progress  # noqa: E402
from compressor.search import search  # noqa: E402
from exporters.onnx import OnnxArtifact  # noqa: E402

# every bundled recipe that applies to a CNN (the others refuse in seconds: see the ray part), but block50,
# whose 300 distillation steps at 224 px take longer than the rest of the search on 2 cores
EFFNET_RECIPES = ["int8-ptq", "int8-ptq-edge", "fold-bn", "2of4", "2of4-int8", "w8a8-repq"]


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def candidates_table(report: dict[str, Any]) -> list[str]:
    s = report["search"]
    lines = [f"candidates ({s['engine']}; objective {s['objective']}, max drop {s['max_drop']}; "
             f"latency at batch {s['batch']}, {s['timing']}):", "",
             "| candidate | target | accuracy | drop | within | ms | vs float | MB | origin |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in s["candidates"]:
        if c["status"] != "ok":
            lines.append(f"| {c['candidate']} | - | - | - | - | - | - | - | {c['status'][:90]} |")
            continue
        lines.append(f"| {c['candidate']}{' **(chosen)**' if c['chosen'] else ''} | {c['target']} | "
                     f"{_f(c['accuracy'])} | {c['drop']:+.2f} | {'yes' if c['meets'] else 'no'} | "
                     f"{_f(c['latency_ms'], '.3f')} | {_f(c['speedup_vs_float'])}x | {c['size_bytes'] / 1e6:.2f} | "
                     f"{c['origin'][:80]} |")
    return lines


def effnet(export: list[str], recipes: list[str], min_seconds: float, work: Path, bar: Progress) -> list[str]:
    model, calib, evaluation = _efficientnet()
    start = time.perf_counter()
    res = search(model, max_drop=1.0, out_dir=work / "effnet", export=export, calib=calib, eval_data=evaluation,
                 recipes=recipes, batch_sizes=[1, 8], progress=bar)
    wall = time.perf_counter() - start
    r = res.report
    chosen = next(c for c in r["search"]["candidates"] if c["chosen"])
    lines = [f"## EfficientNet-Lite0, max drop 1.0 (agreement), targets {','.join(export)}: {wall:.0f} s", "",
             *candidates_table(r), ""]
    # the published artifact, its float artifact and the peers, timed again in one loop
    ref = collect(torch_runner(model.eval()), evaluation, 64, bar, "float model")
    art, base = res.artifacts[chosen["target"]], res.baselines[chosen["target"]]
    runners = {"chosen": art.runner(2), "float": base.runner(2)}
    acc = {"chosen": agreement(collect(runners["chosen"], evaluation, 64, bar, "chosen"), ref),
           "float": agreement(collect(runners["float"], evaluation, 64, bar, "float"), ref)}
    onnx_float = res.out_dir / "baseline.onnx"
    if chosen["target"] != "onnx":  # the peers quantize the float ONNX: export one
        import torch

        onnx_float = work / "float.onnx"
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, 224, 224),), str(onnx_float), dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    calib_arrays = [x.numpy() for x, _ in calib.batches(32)]
    for name, make in peers().items():
        try:
            path = make(onnx_float, calib_arrays, work / f"{name}.onnx")
        except Exception as e:
            lines.append(f"peer {name} failed: {type(e).__name__}: {str(e)[:120]}")
            continue
        runners[name] = OnnxArtifact("onnx", path, "int8").runner(2)
        acc[name] = agreement(collect(runners[name], evaluation, 64, bar, name), ref)
    lat = measure(runners, (1, 3, 224, 224), [1, 8], warmup=5, runs=30, progress=bar, min_seconds=min_seconds)
    lines += ["published artifact vs peers (one interleaved loop; agreement with the float PyTorch model):", "",
              "| artifact | agreement | b1 ms | b8 ms | b8 vs float |", "|---|---|---|---|---|"]
    for name in runners:
        lines.append(f"| {name} | {acc[name]:.2f} | {lat[name][1]['median']:.2f} | {lat[name][8]['median']:.2f} | "
                     f"{lat['float'][8]['median'] / lat[name][8]['median']:.2f}x |")
    bundled = [c for c in r["search"]["candidates"] if c.get("meets") and c["origin"] == "bundled recipe"]
    fastest_bundled = min((c["latency_ms"] for c in bundled), default=None)
    peer_ms = [lat[n][8]["median"] for n in runners if n not in ("chosen", "float")]
    lines += ["", f"- meets the limit: {chosen['meets']} (drop {chosen['drop']:+.2f})",
              f"- chosen {chosen['latency_ms']:.3f} ms vs fastest bundled recipe within the limit "
              f"{_f(fastest_bundled, '.3f')} ms (search timing, b{r['search']['batch']}): "
              f"{fastest_bundled is None or chosen['latency_ms'] <= fastest_bundled}",
              f"- chosen {lat['chosen'][8]['median']:.2f} ms vs fastest peer int8 {_f(min(peer_ms, default=None))} ms "
              f"(b8): {bool(peer_ms) and lat['chosen'][8]['median'] < min(peer_ms)}", ""]
    return lines


def vit(work: Path, bar: Progress) -> list[str]:
    start = time.perf_counter()
    res = search(ROOT / "vit_digits224.pt", max_drop=1.0, out_dir=work / "vit", objective="size",
                 recipes=["int8-ptq", "w6a6-repq"], batch_sizes=[1], progress=bar)
    return [f"## vit_digits224 (197 tokens), objective size, max drop 1.0 (top-1): {time.perf_counter() - start:.0f} s",
            "", *candidates_table(res.report), ""]


def ray_scaling(work: Path, bar: Progress) -> list[str]:
    cnn = ROOT / "cnn_mnist.pt"
    runs: dict[str, dict[str, Any]] = {}
    for label, kw in (("in-process", {}), ("ray, 1 worker", {"ray": "auto", "workers": 1}),
                      ("ray, 2 workers", {"ray": "auto", "workers": 2})):
        start = time.perf_counter()
        res = search(cnn, max_drop=1.0, out_dir=work / label.replace(" ", "_").replace(",", ""),
                     batch_sizes=[1, 8], progress=bar, **kw)
        runs[label] = {"wall": time.perf_counter() - start, "report": res.report}
    first = runs["in-process"]["report"]["search"]

    def numbers(s: dict[str, Any]) -> list[tuple]:
        return [(c["candidate"], c["status"], c.get("accuracy"), c.get("drop")) for c in s["candidates"]]

    lines = ["## MNIST CNN: in-process vs Ray", "", *candidates_table(runs["in-process"]["report"]), "",
             "| engine | candidates | built | wall s | chosen | same accuracy numbers as in-process |",
             "|---|---|---|---|---|---|"]
    for label, run in runs.items():
        s = run["report"]["search"]
        ok = sum(c["status"] == "ok" for c in s["candidates"])
        lines.append(f"| {label} | {len(s['candidates'])} | {ok} | {run['wall']:.0f} | {s['chosen']['candidate']} "
                     f"| {numbers(s) == numbers(first)} |")
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="effnet,vit,ray")
    ap.add_argument("--export", default="onnx", help="targets of the EfficientNet search, e.g. onnx,openvino")
    ap.add_argument("--effnet-recipes", default=",".join(EFFNET_RECIPES), help="bundled candidates of the effnet part")
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--md", type=Path, help="also write the tables to this file")
    args = ap.parse_args()
    bar = Progress(enabled=True)
    lines = [cpu_line(2), ""]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for part in args.parts.split(","):
            if part == "effnet":
                lines += effnet(args.export.split(","), args.effnet_recipes.split(","), args.min_seconds, work, bar)
            elif part == "vit":
                lines += vit(work, bar)
            elif part == "ray":
                lines += ray_scaling(work, bar)
            else:
                raise SystemExit(f"unknown part {part!r}: effnet, vit, ray")
            print("\n".join(lines), flush=True)
    if args.md:
        args.md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
