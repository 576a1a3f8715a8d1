"""Conformance suite: every recipe on real pretrained models, measured on its artifact, peers side by side.

The definition of done for every quantization and pruning method: a method holds when its artifact,
run in its runtime, keeps the float model's predictions on real photographs, and when it beats the
peers' int8 artifacts made from the same float ONNX and the same calibration tensors, timed in the
same interleaved rounds. The MNIST models stay in the suite as smoke tests.

For each model: one `compress` run per recipe (a recipe that cannot apply must refuse with a message,
which the table shows), the peers of benches/peers.py on the int8-ptq run's baseline.onnx, accuracy
of every artifact against the float PyTorch model (top-1 agreement, agreement on the inputs the float
model is confident about, top-5 containment; top-1 where there are labels), then the latency of all
ONNX Runtime artifacts interleaved round by round. `--check` compares the accuracies with
benches/conformance_reference.yaml (value − tolerance is the floor, as NNCF's conformance suite
keeps them) and exits 1 on a regression; `--update` writes this run's values into the file.

    python benches/conformance.py [--models efficientnet_lite0,cnn_mnist,vit_mnist] [--recipes int8-ptq,...]
                                  [--no-peers] [--min-seconds S] [--fast] [--tvm RECIPES]
                                  [--check | --update] [--md FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import compressor  # noqa: E402
from benches.machine import cpu_line  # noqa: E402
from benches.peers import peers  # noqa: E402
from compressor.data import IMAGENET_MEAN, IMAGENET_STD, DataSource, Preprocess, open_source  # noqa: E402
from compressor.errors import CompressorError  # noqa: E402
from compressor.eval import Outputs, agreement, collect, confident_agreement, measure, top5_containment  # noqa: E402
from compressor.eval.metrics import Runner, torch_runner  # noqa: E402
from compressor.io import load_model, load_module  # noqa: E402
from compressor.progress import Progress  # noqa: E402
from compressor.recipe import BenchSpec, list_recipes, load_recipe  # noqa: E402
from exporters.base import Artifact  # noqa: E402
from exporters.onnx import OnnxArtifact  # noqa: E402

REFERENCE = Path(__file__).with_name("conformance_reference.yaml")
#: targets whose runtime runs on this machine class (TensorRT and CoreML are exported, never timed, here)
RUNS_HERE = ("onnx", "executorch", "torch", "openvino", "tvm")
METRICS = ("agreement", "confident", "top5", "top1")
CALIB_CROPS, EVAL_CROPS = 128, 600


@dataclass
class Model:
    """A conformance model: how to load it and its data; `recipes` None means every bundled recipe."""

    name: str
    load: Callable[[], tuple[Any, DataSource, DataSource]]
    recipes: list[str] | None = None
    skip_recipes: list[str] = field(default_factory=list)


def _efficientnet() -> tuple[Any, DataSource, DataSource]:
    from compressor import zoo
    from compressor.data.photo_crops import crops

    model = zoo.build("efficientnet_lite0").eval()
    model.load_state_dict(torch.load(zoo.pretrained_file("efficientnet_lite0"), weights_only=True))
    pre = Preprocess(size=(224, 224), channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return (model, DataSource(f"{CALIB_CROPS} photo crops (calib)", crops("calib", CALIB_CROPS), None, pre),
            DataSource(f"{EVAL_CROPS} photo crops (eval)", crops("eval", EVAL_CROPS), None, pre))


def _bundled(path: str) -> Callable[[], tuple[Any, DataSource, DataSource]]:
    """A bundled checkpoint with its own calibration split and labelled test split."""

    def load() -> tuple[Any, DataSource, DataSource]:
        loaded = load_model(ROOT / path)
        data, pre = ROOT / "calibration_data" / str(loaded.dataset), loaded.preprocess
        return ROOT / path, open_source(data / "calib", pre), open_source(data / "test", pre)

    return load


MODELS = {
    "efficientnet_lite0": Model("efficientnet_lite0", _efficientnet),
    "cnn_mnist": Model("cnn_mnist", _bundled("cnn_mnist.pt"), ["int8-ptq", "int8-ptq-edge", "2of4-int8"]),
    "vit_mnist": Model("vit_mnist", _bundled("vit_mnist.pt"), ["int8-ptq", "int8-ptq-edge", "w8a8-repq"]),
    "vit_digits224": Model("vit_digits224", _bundled("vit_digits224.pt")),
}


@dataclass
class Row:
    model: str
    artifact: str  # recipe/target, peer name (ONNX Runtime) or "float (target)"
    runner: str | None = None  # key of its runner in the interleaved timing
    metrics: dict[str, float | None] = field(default_factory=dict)
    latency: dict[int, float] = field(default_factory=dict)
    size_mb: float | None = None
    sim_gap: float | None = None  # artifact − simulation, in the recipe's gate metric (compress's report)
    note: str = ""
    target: str = "onnx"  # the runtime it ran in


def _quick_bench() -> BenchSpec:
    """compress() times its own artifacts; the suite times everything together afterwards."""
    return BenchSpec(batch_sizes=[1], warmup=1, runs=3, min_seconds=0.0)


def _scores(out: Outputs, ref: Outputs) -> dict[str, float | None]:
    scores: dict[str, float | None] = {"agreement": agreement(out, ref), "confident": confident_agreement(out, ref),
                                       "top5": top5_containment(out, ref)}
    if out.labels is not None:
        scores["top1"] = float((out.logits.argmax(1) == out.labels).mean() * 100)
    return scores


def run_model(m: Model, recipes: list[str] | None, with_peers: bool, work: Path, batches: list[int],
              bar: Progress, min_seconds: float = 2.0, fast: bool = False, tvm: tuple[str, ...] = (),
              unguarded: bool = False) -> list[Row]:
    module, calib, evaluation = m.load()
    names = [r for r in (recipes or m.recipes or list(list_recipes())) if r not in m.skip_recipes]
    loaded = load_model(module) if isinstance(module, Path) else load_module(module)
    ref = collect(torch_runner(loaded.runnable()), evaluation, 64, bar, "float model")
    rows: list[Row] = []
    runners: dict[str, Runner] = {}
    for name in names:
        rec = load_recipe(name)
        targets = sorted({"onnx", *(t for t in rec.export if t in RUNS_HERE), *(["tvm"] if name in tvm else [])})
        rec = rec.model_copy(update={"benchmark": _quick_bench(), "export": targets})
        recipe = rec.name  # a recipe file's path would make an absolute out_dir below
        if fast and (sped := rec.with_pass_param("fast", True)).passes != rec.passes:  # recipes with a CPU preset
            rec, recipe = sped, f"{recipe} --fast"
        if unguarded:
            # every min_agreement guard off: what a refused recipe would have shipped
            rec, recipe = rec.with_pass_param("min_agreement", None), f"{recipe} (unguarded)"
        start = time.perf_counter()
        try:
            res = compressor.compress(module, recipe=rec, calib=calib, eval_data=evaluation, out_dir=work / recipe,
                                      progress=bar)
        except CompressorError as e:
            rows.append(Row(m.name, recipe, note="refused: " + " ".join(str(e).split())[:200]))
            continue
        seconds = time.perf_counter() - start
        for target, art in sorted(res.artifacts.items()):
            if "failed" in art.meta:  # e.g. block50's sparse kernels have no ONNX form: its torch row still counts
                why = " ".join(art.meta["failed"].split())[:200]
                rows.append(Row(m.name, f"{recipe}/{target}", note=f"failed: {why}"))
                continue
            base = type(art)(target, res.out_dir / res.report["baselines"][target]["path"], "fp32", dict(art.meta))
            if f"{m.name}/float ({target})" not in runners:  # every recipe's float baseline is the same model
                rows.append(_row(m.name, f"float ({target})", base, evaluation, ref, bar, runners))
            row = _row(m.name, f"{recipe}/{target}", art, evaluation, ref, bar, runners)
            report = next(a for a in res.report["artifacts"] if a["target"] == target)
            row.note, row.sim_gap = f"{seconds:.0f} s; {report['status']}", report["sim_gap"]
            rows.append(row)
        if name == "int8-ptq" and with_peers:
            rows += _peers(m.name, res.out_dir / "baseline.onnx", calib, evaluation, ref, work, bar, runners)
    if runners:
        lat = measure(runners, (1, *evaluation.sample_shape()), batches, warmup=5, runs=30, progress=bar,
                      min_seconds=min_seconds)
        for row in rows:
            if row.runner is not None:
                row.latency = {b: lat[row.runner][b]["median"] for b in batches}
    return rows


def _peers(model: str, baseline: Path, calib: DataSource, evaluation: DataSource, ref: Outputs, work: Path,
           bar: Progress, runners: dict[str, Runner]) -> list[Row]:
    """Each installed peer on the same float ONNX and the same calibration tensors (batches of 32)."""
    rows = []
    calib_arrays = [x.numpy() for x, _ in calib.batches(32)]
    for peer, make in peers().items():
        start = time.perf_counter()
        try:
            path = make(baseline, calib_arrays, work / f"{peer}.onnx")
        except Exception as e:  # a peer's own failure is a row, not the suite's end
            rows.append(Row(model, peer, note=f"failed: {type(e).__name__}: {str(e)[:120]}"))
            continue
        row = _row(model, peer, OnnxArtifact("onnx", path, "int8"), evaluation, ref, bar, runners)
        row.note = f"{time.perf_counter() - start:.0f} s"
        rows.append(row)
    return rows


def _row(model: str, name: str, art: Artifact, data: DataSource, ref: Outputs, bar: Progress,
         runners: dict[str, Runner]) -> Row:
    """Accuracy of the artifact in its runtime, and its runner registered for timing."""
    key = f"{model}/{name}"
    run = runners[key] = art.runner(2)
    out = collect(run, data, 64, bar, name)
    return Row(model, name, key, _scores(out, ref), size_mb=art.size_bytes / 1e6, target=art.target)


# -- reporting ---------------------------------------------------------------------------------------
def table(rows: list[Row], batches: list[int]) -> list[str]:
    """The rows, with latency against the same runtime's float artifact and against the model's
    fastest float artifact in any runtime (what a user could ship instead), named under the table."""
    from compressor.report.render import markdown_table

    float_rows = [r for r in rows if r.artifact.startswith("float (")]
    floats = {(r.model, r.target): r.latency for r in float_rows}
    best: dict[tuple[str, int], Row] = {}
    for r in float_rows:
        for b in batches:
            if r.latency.get(b) and ((r.model, b) not in best or r.latency[b] < best[(r.model, b)].latency[b]):
                best[(r.model, b)] = r
    header = ["model", "artifact", "agreement %", "confident %", "top-5 %", "top-1 %", "sim gap",
              *(f"b{b} ms" for b in batches), *(f"b{b} vs float" for b in batches),
              *(f"b{b} vs best float" for b in batches), "MB", "note"]
    body = []
    for r in rows:
        cells = [r.model, r.artifact] + [_f(r.metrics.get(k)) for k in METRICS] + [_f(r.sim_gap, "+.2f")]
        cells += [_f(r.latency.get(b)) for b in batches]
        base = floats.get((r.model, r.target), {})
        cells += [_ratio(r.latency.get(b), base.get(b)) for b in batches]
        cells += [_ratio(r.latency.get(b), best[(r.model, b)].latency[b] if (r.model, b) in best else None)
                  for b in batches]
        body.append([*cells, _f(r.size_mb), r.note])
    named = [f"fastest float of {model} at b{b}: {row.artifact}" for (model, b), row in best.items()]
    return [*markdown_table(header, body), "", "; ".join(named)]


def _ratio(value: float | None, base: float | None) -> str:
    return _f(value / base, ".2f") + "x" if value and base else "-"


def _f(v: float | None, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def check(rows: list[Row], reference: dict[str, Any]) -> list[str]:
    """Regressions among the artifacts this run tried: a metric below its reference value minus the
    tolerance, or an artifact with reference values that was refused or failed this time."""
    failures = []
    for row in rows:
        ref = reference.get(row.model, {}).get(row.artifact if row.metrics else f"{row.artifact}/onnx")
        if ref is None:
            continue
        if not row.metrics:
            failures.append(f"{row.model} {row.artifact}: has reference values but {row.note}")
            continue
        tol = ref.get("tolerance", 1.0)
        for metric, value in ref.items():
            got = row.metrics.get(metric)
            if metric != "tolerance" and (got is None or got < value - tol):
                failures.append(f"{row.model} {row.artifact}: {metric} {got} below {value - tol:.2f} "
                                f"(reference {value} − tolerance {tol})")
    return failures


def reference_from(rows: list[Row], tolerance: dict[str, float]) -> dict[str, Any]:
    ref: dict[str, Any] = {}
    for r in rows:
        if not r.metrics or "/" not in r.artifact:  # the float model and the peers are not ours to hold
            continue
        tol = tolerance["mnist" if "mnist" in r.model else "photo"]
        ref.setdefault(r.model, {})[r.artifact] = {
            **{k: round(v, 2) for k, v in r.metrics.items() if v is not None}, "tolerance": tol}
    return ref


def updated(reference: dict[str, Any], rows: list[Row]) -> dict[str, Any]:
    """The reference with this run's values: artifacts it measured replaced, recipes it saw refused
    dropped, models and recipes it did not run kept as they were."""
    out = {model: dict(entries) for model, entries in reference.items()}
    for row in rows:
        if not row.metrics:
            out[row.model] = {k: v for k, v in out.get(row.model, {}).items() if not k.startswith(row.artifact + "/")}
    for model, entries in reference_from(rows, {"mnist": 0.5, "photo": 1.5}).items():
        out[model] = {**out.get(model, {}), **entries}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--recipes", help="comma-separated bundled names or recipe files; default: each model's list "
                                      "(all bundled for real models)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--min-seconds", type=float, default=2.0,
                    help="timing budget per batch size for all artifacts together (latency targets need 20+)")
    ap.add_argument("--fast", action="store_true", help="recipes with a CPU preset (quant.aphq) run it, as `--fast`")
    ap.add_argument("--tvm", help="comma-separated recipes also exported to TVM (e.g. int-only,int-only-w4a8)")
    ap.add_argument("--unguarded", action="store_true",
                    help="turn every pass's min_agreement guard off, to measure what refused recipes would ship "
                         "(rows marked; not with --update)")
    ap.add_argument("--check", action="store_true", help="exit 1 if an accuracy regressed beyond its tolerance")
    ap.add_argument("--update", action="store_true", help=f"update {REFERENCE.name} with this run's artifacts")
    ap.add_argument("--md", type=Path, help="also write the table here")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args()
    if args.unguarded and args.update:
        ap.error("--unguarded rows are not what the recipes ship: they cannot update the reference")
    torch.set_num_threads(2)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    bar = Progress(enabled=sys.stderr.isatty())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            recipes = args.recipes.split(",") if args.recipes else None
            rows += run_model(MODELS[name], recipes, not args.no_peers, Path(tmp) / name, batches, bar,
                              args.min_seconds, args.fast, tuple(args.tvm.split(",")) if args.tvm else (),
                              args.unguarded)
    text = "\n".join([f"{cpu_line(2)}; every artifact in its runtime, all timed interleaved; "
                      "'vs float' is against the same runtime's float artifact", "",
                      *table(rows, batches)]) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    if args.update:
        REFERENCE.write_text(yaml.safe_dump(updated(yaml.safe_load(REFERENCE.read_text()), rows), sort_keys=True))
    if args.check:
        failures = check(rows, yaml.safe_load(REFERENCE.read_text()))
        for f in failures:
            print("REGRESSION:", f)
        sys.exit(1 if failures else 0)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
