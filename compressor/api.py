"""`compress()`: load → capture → passes → export → evaluate on artifacts → report → gate.

The CLI is a thin shell over this function, so pipelines get the same behaviour from Python.
All files are written to a staging folder first and moved into `out_dir` only once everything
succeeded, so a failure never leaves a half-written result behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.data import DataSource, Preprocess, fingerprint, from_iterable, open_source
from compressor.errors import CompressorError
from compressor.eval import (
    Outputs,
    agreement,
    collect,
    hits,
    measure,
    paired_drop,
    score,
    sqnr_db,
    torch_runner,
    wilson_interval,
)
from compressor.eval.metrics import Runner
from compressor.graph import Graph, capture
from compressor.graph.capture import program_batch
from compressor.io import LoadedModel, load_model, load_module
from compressor.passes import PassContext
from compressor.passes.quant.ops import graph_precision
from compressor.progress import Progress
from compressor.recipe import BenchSpec, GateOn, Recipe, load_recipe
from compressor.report import write_report
from exporters import Artifact, get_exporter

log = logging.getLogger(__name__)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
EVAL_BATCH = 64


@dataclass
class CompressResult:
    """What a run produced: the report (as written to report.json), artifacts and the verdict."""

    report: dict[str, Any]
    artifacts: dict[str, Artifact]
    out_dir: Path
    graph: Graph
    files: list[Path] = field(default_factory=list)

    @property
    def passed_gate(self) -> bool:
        return bool(self.report["gate"]["passed"])

    @property
    def accuracy_drop(self) -> float | None:
        """The worst measured target's drop; None when no artifact could run on this machine."""
        drop = self.report["accuracy_drop"]
        return None if drop is None else float(drop)


def compress(
    model: str | Path | nn.Module,
    recipe: str | Path | Recipe = "int8-ptq",
    calib: str | Path | DataSource | Iterable | None = None,
    eval_data: str | Path | DataSource | Iterable | None = None,
    export: Sequence[str] | None = None,
    out_dir: str | Path = "out",
    max_drop: float | None = None,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    preprocess: Preprocess | None = None,
    calib_size: int | None = None,
    batch_sizes: Sequence[int] | None = None,
    threads: int | None = None,
    progress: bool | Progress = False,
    fast: bool = False,
    gate_on: GateOn | None = None,
    sensitivity: bool = False,
) -> CompressResult:
    """Compress `model` with `recipe`, export, measure every artifact in its runtime and gate.

    `model` is a file (checkpoint, state_dict with `arch`, TorchScript, .pt2, or a pickled module
    with `trust_pickle`) or an `nn.Module`. `calib`/`eval_data` are folders, array files, or
    iterables of tensors / (tensor, label) batches; bundled checkpoints find their own data.
    `fast` switches passes with a CPU preset (reconstruction) to it. `gate_on="lower-bound"` fails
    the gate only when the drop's 95 % interval lies wholly above `max_drop` (a significant drop).
    `sensitivity` adds the per-layer table (SQNR, accuracy with only that layer quantized).
    """
    if calib_size is not None and calib_size < 1:
        raise CompressorError(f"calib_size {calib_size}: use at least 1 calibration image (None uses all).")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    bar = progress if isinstance(progress, Progress) else Progress(enabled=progress)
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    rec = rec.fast() if fast else rec
    targets = list(export or rec.export)
    exporters = {t: get_exporter(t, **rec.export_options.get(t, {})) for t in targets}
    out = Path(out_dir)
    staging = _staging_dir(out)
    try:
        loaded = load_model(model, arch, trust_pickle) if not isinstance(model, nn.Module) else load_module(model)
        spec = _preprocess_spec(loaded, rec, preprocess)
        calib_src = _data(calib, spec, "calibration", _bundled(loaded, "calib"))
        bundled_test = _bundled(loaded, "test")
        eval_src = calib_src if eval_data is None and bundled_test is None else _data(
            eval_data, spec, "evaluation", bundled_test)
        shape = _input_shape(loaded, calib_src, input_shape)
        example = _check_runs(loaded, shape)
        timings["load_s"] = time.perf_counter() - start

        t = time.perf_counter()
        graph = capture(loaded.module, example)
        baseline_graph = graph.clone()
        fixed = graph.fixed_batch
        ctx = PassContext(calib=calib_src, calib_batch_size=fixed or rec.calibration.batch_size,
                          calib_limit=calib_size or rec.calibration.max_images, fixed_batch=fixed is not None,
                          teacher=baseline_graph, progress=bar)
        for entry in rec.passes:
            bar.info(f"pass {entry.name}")
            entry.build().run(graph, ctx)
        timings["passes_s"] = time.perf_counter() - t

        t = time.perf_counter()
        precision = graph_precision(graph)
        baselines, artifacts = {}, {}
        for name, ex in exporters.items():  # each target's own float artifact: speedups compare like with like
            bar.info(f"export {name}")
            baselines[name] = ex.for_baseline().export(baseline_graph, staging / f"baseline{ex.suffix}", "fp32")
            artifacts[name] = ex.export(graph, staging / f"model{ex.suffix}", precision)
        timings["export_s"] = time.perf_counter() - t

        t = time.perf_counter()
        bench = rec.benchmark.model_copy(update={k: v for k, v in
                                                 (("batch_sizes", batch_sizes), ("threads", threads)) if v})
        if fixed is not None:  # the program only runs at its exported batch size
            bench = bench.model_copy(update={"batch_sizes": [fixed]})
        evaluation = _evaluate(loaded, graph, baselines, artifacts, eval_src, rec, bench, shape, bar)
        if sensitivity:
            evaluation["sensitivity"] = _sensitivity(baseline_graph, graph, eval_src, evaluation["metric"], bar)
        evaluation["gate"] = rec.gate.model_copy(update={k: v for k, v in (("max_drop", max_drop),
                                                                           ("gate_on", gate_on)) if v is not None})
        timings["evaluate_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - start

        report = write_report(
            staging, rec, ctx.log, loaded, shape, evaluation, baselines, artifacts, timings,
            data={"calibration": _data_info(calib_src, ctx.calibration_size(), ctx),
                  "evaluation": {"source": eval_src.description, "count": len(eval_src),
                                 "labels": eval_src.has_labels}})
        files = _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for a in [*baselines.values(), *artifacts.values()]:
        a.path = out / a.path.name
    return CompressResult(report, artifacts, out, graph, files)


# -- inputs ---------------------------------------------------------------------------------------
def _staging_dir(out: Path) -> Path:
    """A private folder beside `out` (same file system, so publishing is a rename)."""
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and not out.is_dir():
            raise CompressorError(f"output path {out} exists and is not a folder; choose another -o.")
        if out.exists() and not os.access(out, os.W_OK):
            raise PermissionError(out)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as e:
        raise CompressorError(f"output folder {out} is not writable ({e.strerror or 'permission denied'}); "
                              "choose another folder with -o.") from e


def _preprocess_spec(loaded: LoadedModel, rec: Recipe, override: Preprocess | None) -> Preprocess:
    """Checkpoint < recipe < caller, field by field."""
    spec = loaded.preprocess or Preprocess()
    return spec.merged(rec.preprocess).merged(override)


def _data_roots() -> list[Path]:
    return [Path.cwd() / "calibration_data", PACKAGE_ROOT / "calibration_data"]


def _bundled(loaded: LoadedModel, split: str) -> Path | None:
    """Bundled data for a model: its data set's split, or the photographs for RGB models' calibration."""
    if loaded.dataset:
        rel = Path(loaded.dataset) / split
    elif split == "calib" and loaded.preprocess is not None and loaded.preprocess.channels == 3:
        rel = Path("photos")
    else:
        return None
    return next((r / rel for r in _data_roots() if (r / rel).exists()), None)


def _data(given: Any, spec: Preprocess, role: str, default: Path | None) -> DataSource:
    if given is None:
        if default is None:
            raise CompressorError(f"no {role} data: pass --{'calib' if role == 'calibration' else 'eval'} DIR "
                                  "(a folder of images, or an .npy/.npz/.pt file).")
        given = default
    if isinstance(given, DataSource):
        return given
    if isinstance(given, (str, Path)):
        src = open_source(given, spec, role)
    else:
        src = from_iterable(given, f"in-memory {role} loader")
    if len(src) == 0:
        raise CompressorError(f"{role} data {src.description} is empty.")
    return src


def _input_shape(loaded: LoadedModel, calib: DataSource, given: Sequence[int] | None) -> tuple[int, ...]:
    sample = calib.sample_shape()
    if given is not None:
        shape = tuple(int(d) for d in given)
        if len(shape) != 4 or any(d < 1 for d in shape):
            raise CompressorError(f"--input-shape {','.join(map(str, shape))}: expected N,C,H,W with positive sizes.")
        if tuple(sample) != shape[1:]:
            raise CompressorError(
                f"calibration data {calib.description} gives inputs of shape {'x'.join(map(str, sample))} but "
                f"--input-shape says {'x'.join(map(str, shape[1:]))}. Set a preprocessing size (--size H,W) "
                "and channels (--channels) to resize, or use data of the model's input size.")
        return shape
    pre = loaded.preprocess
    if pre is not None and pre.size is not None and pre.channels is not None:
        expected = (pre.channels, *pre.size)
        if tuple(sample) != expected:
            raise CompressorError(f"calibration data gives {'x'.join(map(str, sample))} inputs but the model "
                                  f"expects {'x'.join(map(str, expected))}.")
    return (1, *sample)


def _check_runs(loaded: LoadedModel, shape: tuple[int, ...]) -> torch.Tensor:
    """Run the model once; the example has batch 2 because torch.export specializes a batch of 1,
    or the batch a static-batch program was exported with."""
    fixed = program_batch(loaded.module) if isinstance(loaded.module, torch.export.ExportedProgram) else None
    example = torch.zeros((fixed or 2, *shape[1:]))
    module = loaded.runnable()
    try:
        with torch.no_grad():
            out = module(example)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CompressorError(
            f"the model does not run on inputs of shape {','.join(map(str, shape))} ({first}). "
            "Pass the model's real input shape with --input-shape N,C,H,W and matching data, or a "
            "preprocessing size (--size H,W) that resizes the images to it.") from e
    if not isinstance(out, torch.Tensor) or out.dim() < 1:
        raise CompressorError("the model must return one tensor of logits (N, classes); "
                              f"it returned {type(out).__name__}.")
    return example


def _data_info(src: DataSource, used: int, ctx: PassContext) -> dict[str, Any]:
    return {"source": src.description, "count": used, "available": len(src),
            "sha256": fingerprint(src, ctx.calib_batch_size, used)}


# -- evaluation ------------------------------------------------------------------------------------
def _evaluate(loaded: LoadedModel, graph: Graph, baselines: dict[str, Artifact], artifacts: dict[str, Artifact],
              data: DataSource, rec: Recipe, bench: BenchSpec, shape: tuple[int, ...],
              bar: Progress) -> dict[str, Any]:
    """Accuracy of the float model, the simulation and, per target, of the float and the compressed
    artifact run in that target's runtime; then their latencies, interleaved in one timing loop."""
    batch, fixed = graph.fixed_batch or EVAL_BATCH, graph.fixed_batch is not None
    ref = collect(torch_runner(loaded.runnable()), data, batch, bar, "float model", fixed_batch=fixed)
    metric = rec.gate.metric if (rec.gate.metric != "top1" or data.has_labels) else "agreement"
    sim_out = collect(torch_runner(graph.gm), data, batch, bar, "simulation", fixed_batch=fixed)
    runners: dict[str, Runner] = {}
    targets: dict[str, dict[str, Any]] = {}
    for name in artifacts:
        measured, outs = {}, {}
        for role, art in (("baseline", baselines[name]), ("artifact", artifacts[name])):
            reason = art.not_measured()
            if reason is not None:
                measured[role] = {"not_measured": reason}
                continue
            run = runners[f"{name}/{role}"] = art.runner(bench.threads)
            outs[role] = collect(run, data, batch, bar, art.path.name, fixed_batch=fixed)
            measured[role] = _measurement(outs[role], ref, metric)
        if "artifact" in outs:
            out = outs["artifact"]
            measured["artifact"]["max_abs_diff_vs_sim"] = float(abs(out.logits - sim_out.logits).max())
            if "baseline" in outs:
                base = outs["baseline"]
                drop, lo, hi = paired_drop(hits(base, ref, metric), hits(out, ref, metric))
                measured["artifact"].update(agreement_vs_baseline=agreement(out, base), drop=drop, drop_ci95=[lo, hi])
        targets[name] = measured
    latency = measure(runners, shape, bench.batch_sizes, bench.warmup, bench.runs, bar,
                      min_seconds=bench.min_seconds, max_runs=bench.max_runs)
    for key, lat in latency.items():
        name, role = key.split("/")
        targets[name][role]["latency"] = lat
    return {"metric": metric, "float_torch": score(ref, ref, metric), "simulation": _measurement(sim_out, ref, metric),
            "targets": targets, "bench": bench.model_dump()}


def _sensitivity(float_graph: Graph, graph: Graph, data: DataSource, metric: str, bar: Progress) -> dict[str, Any]:
    from compressor.eval.sensitivity import layer_sensitivity

    # a fixed-batch graph is run at its own batch by layer_sensitivity itself
    return layer_sensitivity(float_graph, graph, data, metric=metric, batch_size=EVAL_BATCH, progress=bar).as_dict()


def _measurement(out: Outputs, ref: Outputs, metric: str) -> dict[str, Any]:
    h = hits(out, ref, metric)
    return {"accuracy": float(h.mean() * 100),
            "accuracy_ci95": list(wilson_interval(int(h.sum()), h.size)),
            "sqnr_db_vs_float": round(sqnr_db(out, ref), 2)}


def _publish(staging: Path, out: Path) -> list[Path]:
    """Move every staged file into `out` (each a rename), after everything was written."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for f in sorted(staging.iterdir()):
        if f.name.startswith("."):
            continue
        os.replace(f, out / f.name)
        files.append(out / f.name)
    return files
