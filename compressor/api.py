"""`compress()`: load → capture → passes → export → evaluate on artifacts → report → gate.

The CLI is a thin shell over this function, so pipelines get the same behaviour from Python.
All files are written to a staging folder inside the locked `out_dir` and replace its previous
results as one unit only once everything succeeded (`compressor.io.publish`), so a failure, a
Ctrl-C or a SIGTERM never leaves a half-written or mixed result behind.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.data import DataSource, Preprocess, fingerprint, from_iterable, open_source
from compressor.errors import EXIT_GATE_FAILED, EXIT_OK, EXIT_TOOLCHAIN, CompressorError, ToolchainError, first_line
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
from compressor.io.publish import OutputFolder, disk_error
from compressor.passes import PassContext
from compressor.passes.quant.ops import graph_precision
from compressor.progress import Progress
from compressor.recipe import BenchSpec, GateOn, Recipe, load_recipe
from compressor.report import write_report
from exporters import Artifact, get_exporter

log = logging.getLogger(__name__)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
EVAL_BATCH = 64


# compress() arguments that override a recipe field: (the field, the CLI flag), validated together
OVERRIDES: dict[str, tuple[tuple[str, ...], str]] = {
    "export": (("export",), "--export"),
    "optional_export": (("optional_export",), "--optional-export"),
    "max_drop": (("gate", "max_drop"), "--max-drop"),
    "gate_on": (("gate", "gate_on"), "--gate-on"),
    "calib_size": (("calibration", "max_images"), "--calib-size"),
    "batch_sizes": (("benchmark", "batch_sizes"), "--batch-sizes"),
    "threads": (("benchmark", "threads"), "--threads"),
}


@dataclass
class CompressResult:
    """What a run produced: the report (as written to report.json), artifacts and the verdict."""

    report: dict[str, Any]
    artifacts: dict[str, Artifact]
    out_dir: Path
    graph: Graph
    files: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # target: why it failed to export or run
    optional: list[str] = field(default_factory=list)
    baselines: dict[str, Artifact] = field(default_factory=dict)  # each target's float artifact

    @property
    def passed_gate(self) -> bool:
        return bool(self.report["gate"]["passed"])

    @property
    def accuracy_drop(self) -> float | None:
        """The worst measured target's drop; None when no artifact could run on this machine."""
        drop = self.report["accuracy_drop"]
        return None if drop is None else float(drop)

    @property
    def exit_code(self) -> int:
        """The CLI's: 3 if a target the user did not mark optional failed, else 1 if the gate failed."""
        if any(t not in self.optional for t in self.failed):
            return EXIT_TOOLCHAIN
        return EXIT_OK if self.passed_gate else EXIT_GATE_FAILED


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
    sensitivity: bool | int = False,
    optional_export: Sequence[str] | None = None,
    search: dict[str, Any] | None = None,
) -> CompressResult:
    """Compress `model` with `recipe`, export, measure every artifact in its runtime and gate.

    `model` is a file (checkpoint, state_dict with `arch`, .pt2; TorchScript or a pickled module
    only with `trust_pickle`) or an `nn.Module`. `calib`/`eval_data` are folders, array files, or
    iterables of tensors / (tensor, label) batches; bundled checkpoints find their own data.
    `fast` switches passes with a CPU preset (reconstruction) to it. `gate_on="lower-bound"` fails
    the gate only when the drop's 95 % interval lies wholly above `max_drop` (a significant drop).
    `sensitivity` adds the per-layer table (SQNR, accuracy with only that layer quantized), on every
    evaluation image, or on the first `sensitivity` images when it is a number.
    A target that fails to export or run is reported as failed and the others still publish;
    `exit_code` is 3 then, unless the target is in `optional_export`. `search` is the candidates
    table of `compress search` that chose this recipe, added to the report and the Pareto plot.

    Bad input raises `CompressorError` before anything is written; a crash of a pass, exporter or
    runtime outside a target raises `ToolchainError`. Either way `out_dir` is left as it was.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    bar = progress if isinstance(progress, Progress) else Progress(enabled=progress)
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    rec = _with_arguments(rec.fast() if fast else rec, export=export, optional_export=optional_export,
                          max_drop=max_drop, gate_on=gate_on, calib_size=calib_size, batch_sizes=batch_sizes,
                          threads=threads)
    exporters = {t: get_exporter(t, **rec.export_options.get(t, {})) for t in rec.export}
    out = Path(out_dir)
    with OutputFolder(out) as folder:
        with _stage("reading the inputs", out):
            run = _read_inputs(model, arch, trust_pickle, rec, preprocess, calib, eval_data, input_shape)
            rec = rec.model_copy(update={"preprocess": run.spec})  # the resolved recipe records what ran
        with _stage("capturing the model with torch.export", out):
            graph = capture(run.loaded.module, run.example)
            baseline_graph = graph.clone()
        fixed = graph.fixed_batch
        ctx = PassContext(calib=run.calib, calib_batch_size=fixed or rec.calibration.batch_size,
                          calib_limit=rec.calibration.max_images, fixed_batch=fixed is not None,
                          teacher=baseline_graph, progress=bar)
        with _stage("checking the data on the float model", out):  # before any long work: bad data is exit 2
            ref = collect(torch_runner(run.loaded.runnable()), run.eval, fixed or EVAL_BATCH, bar, "float model",
                          fixed_batch=fixed is not None)
            _check_reference(ref, run.loaded, run.eval)
            data = {"calibration": _data_info(run.calib, ctx), "evaluation": {
                "source": run.eval.description, "count": len(run.eval), "labels": run.eval.has_labels}}
        timings["load_s"] = time.perf_counter() - start

        t = time.perf_counter()
        for entry in rec.passes:
            bar.info(f"pass {entry.name}")
            with _stage(f"pass {entry.name}", out):
                entry.build().run(graph, ctx)
        timings["passes_s"] = time.perf_counter() - t

        t = time.perf_counter()
        baselines, artifacts, failed = _export_all(exporters, baseline_graph, graph, folder.staging, out, bar)
        timings["export_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if fixed is not None:  # the program only runs at its exported batch size
            rec = rec.model_copy(update={"benchmark": rec.benchmark.model_copy(update={"batch_sizes": [fixed]})})
        with _stage("evaluating", out):
            evaluation = _evaluate(graph, ref, baselines, artifacts, failed, run.eval, rec, run.shape, bar)
        if sensitivity:
            with _stage("the per-layer sensitivity analysis", out):
                limit = None if sensitivity is True else int(sensitivity)
                evaluation["sensitivity"] = _sensitivity(baseline_graph, graph, run.eval, evaluation["metric"], bar,
                                                         limit)
        timings["evaluate_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - start

        with _stage("writing the report", out):
            report = write_report(folder.staging, rec, ctx.log, run.loaded, run.shape, evaluation, baselines,
                                  artifacts, timings, data, files=folder.staged(), search=search)
        files = folder.publish(_artifact_names(), _inputs(model, calib, eval_data))
    for a in [*baselines.values(), *artifacts.values()]:
        a.path = out / a.path.name
    return CompressResult(report, artifacts, out, graph, files, failed, list(rec.optional_export), baselines)


def check_inputs(model: str | Path | nn.Module, recipe: Recipe, export: Sequence[str], calib: Any = None,
                 eval_data: Any = None, input_shape: Sequence[int] | None = None, arch: str | None = None,
                 trust_pickle: bool = False, preprocess: Preprocess | None = None, **_: Any) -> None:
    """Raise `CompressorError` for what `compress()` would refuse before any work (targets, their extras,
    the model, the data and their shapes), so a caller that runs it many times (`compress search`)
    fails once, up front, with the same message."""
    rec = _with_arguments(recipe, export=export)
    for t in rec.export:
        get_exporter(t, **rec.export_options.get(t, {}))
    _read_inputs(model, arch, trust_pickle, rec, preprocess, calib, eval_data, input_shape)


@dataclass
class _Inputs:
    loaded: LoadedModel
    spec: Preprocess
    calib: DataSource
    eval: DataSource
    shape: tuple[int, ...]
    example: torch.Tensor


def _read_inputs(model: str | Path | nn.Module, arch: str | None, trust_pickle: bool, rec: Recipe,
                 preprocess: Preprocess | None, calib: Any, eval_data: Any,
                 input_shape: Sequence[int] | None) -> _Inputs:
    """The model and data, checked against each other: shapes agree and the model runs."""
    loaded = load_model(model, arch, trust_pickle) if not isinstance(model, nn.Module) else load_module(model)
    spec = _preprocess_spec(loaded, rec, preprocess)
    calib_src = _data(calib, spec, "calibration", _bundled(loaded, "calib"), _missing_dataset(loaded))
    bundled_test = _bundled(loaded, "test")
    eval_src = calib_src if eval_data is None and bundled_test is None else _data(
        eval_data, spec, "evaluation", bundled_test)
    shape = _input_shape(loaded, calib_src, input_shape)
    _check_eval_shape(eval_src, calib_src, shape)
    return _Inputs(loaded, spec, calib_src, eval_src, shape, _check_runs(loaded, shape))


def _with_arguments(rec: Recipe, **given: Any) -> Recipe:
    """The recipe with compress()'s (the command line's) settings, through the recipe's validation,
    so `--max-drop nan` fails like `max_drop: nan` in YAML, before any work."""
    values = {OVERRIDES[k][0]: list(v) if isinstance(v, (list, tuple)) else v
              for k, v in given.items() if v is not None}
    labels = {OVERRIDES[k][0]: OVERRIDES[k][1] for k in given}
    return rec.with_overrides(values, labels) if values else rec


@contextlib.contextmanager
def _stage(what: str, out: Path) -> Iterator[None]:
    """Name the stage a crash came from (exit 3); bad input, Ctrl-C and a full disk pass through."""
    try:
        yield
    except (CompressorError, ToolchainError):
        raise
    except OSError as e:
        raise disk_error(e, out) or ToolchainError(f"{what} failed: {type(e).__name__}: {first_line(e)}") from e
    except Exception as e:
        raise ToolchainError(f"{what} failed: {type(e).__name__}: {first_line(e)}") from e


def _artifact_names() -> set[str]:
    from exporters import EXPORTERS

    return {f"{stem}{ex.suffix}" for ex in EXPORTERS.values() for stem in ("model", "baseline")}


def _inputs(*given: Any) -> set[Path]:
    return {Path(g) for g in given if isinstance(g, (str, Path))}


# -- exporting -------------------------------------------------------------------------------------
class FailedArtifact(Artifact):
    """A target that did not export: reported with `status: failed: <reason>`, never run."""

    def runner(self, threads: int) -> Runner:
        raise RuntimeError(self.meta["failed"])


def _export_all(exporters: dict[str, Any], baseline_graph: Graph, graph: Graph, staging: Path, out: Path,
                bar: Progress) -> tuple[dict[str, Artifact], dict[str, Artifact], dict[str, str]]:
    """Each target's float and compressed artifact; a target whose exporter crashes is recorded as
    failed and the others carry on (their results still publish)."""
    precision = graph_precision(graph)
    baselines: dict[str, Artifact] = {}
    artifacts: dict[str, Artifact] = {}
    failed: dict[str, str] = {}
    for name, ex in exporters.items():  # each target's own float artifact: speedups compare like with like
        bar.info(f"export {name}")
        for role, exporter, g, file, prec in (("baseline", ex.for_baseline(), baseline_graph, "baseline", "fp32"),
                                             ("model", ex, graph, "model", precision)):
            target = baselines if role == "baseline" else artifacts
            try:
                target[name] = exporter.export(g, staging / f"{file}{ex.suffix}", prec)
            except Exception as e:
                if isinstance(e, OSError) and disk_error(e, out):
                    raise disk_error(e, out) from e
                failed[name] = f"export of the {'float ' if role == 'baseline' else ''}model: {_reason(e)}"
                log.debug("exporting %s failed", name, exc_info=True)
                for role_map, stem, prec_ in ((baselines, "baseline", "fp32"), (artifacts, "model", precision)):
                    role_map.setdefault(name, FailedArtifact(name, staging / f"{stem}{ex.suffix}", prec_,
                                                             {"failed": failed[name]}))
                break
    return baselines, artifacts, failed


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e, 200)}"


# -- inputs ---------------------------------------------------------------------------------------
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


def _missing_dataset(loaded: LoadedModel) -> str:
    """Why a checkpoint that names its data set found none: generated sets are not in the repository."""
    if not loaded.dataset:
        return ""
    return (f" The checkpoint's data set {loaded.dataset!r} is not under ./calibration_data or the package's; "
            f"write it with `python scripts/make_data.py --only {loaded.dataset}` (make install does).")


def _data(given: Any, spec: Preprocess, role: str, default: Path | None, missing: str = "") -> DataSource:
    if given is None:
        if default is None:
            raise CompressorError(f"no {role} data: pass --{'calib' if role == 'calibration' else 'eval'} DIR "
                                  "(a folder of images, or an .npy/.npz/.pt file)." + missing)
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


def _check_eval_shape(eval_src: DataSource, calib_src: DataSource, shape: tuple[int, ...]) -> None:
    if eval_src is calib_src:
        return
    sample = tuple(eval_src.sample_shape())
    if sample != tuple(shape[1:]):
        raise CompressorError(
            f"evaluation data {eval_src.description} gives inputs of shape {'x'.join(map(str, sample))} but the model "
            f"takes {'x'.join(map(str, shape[1:]))} (as the calibration data does). Use evaluation images of the "
            "model's input size, or set a preprocessing size (--size H,W) that resizes both.")


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


def _data_info(src: DataSource, ctx: PassContext) -> dict[str, Any]:
    """What calibrates the model, with the SHA-256 of the tensors; reading them all here also
    finds an unreadable image or a NaN before the passes start."""
    used = ctx.calibration_size()
    return {"source": src.description, "count": used, "available": len(src),
            "sha256": fingerprint(src, ctx.calib_batch_size, used)}


# -- evaluation ------------------------------------------------------------------------------------
def _evaluate(graph: Graph, ref: Outputs, baselines: dict[str, Artifact], artifacts: dict[str, Artifact],
              failed: dict[str, str], data: DataSource, rec: Recipe, shape: tuple[int, ...],
              bar: Progress) -> dict[str, Any]:
    """Accuracy of the simulation and, per target, of the float and the compressed artifact run in
    that target's runtime (against `ref`, the float model's outputs); then their latencies,
    interleaved in one timing loop. A target whose artifact does not run (or returns NaN) is
    recorded in `failed`."""
    batch, fixed, bench = graph.fixed_batch or EVAL_BATCH, graph.fixed_batch is not None, rec.benchmark
    metric = rec.gate.metric if (rec.gate.metric != "top1" or data.has_labels) else "agreement"
    sim_out = collect(torch_runner(graph.gm), data, batch, bar, "simulation", fixed_batch=fixed)
    runners: dict[str, Runner] = {}
    targets: dict[str, dict[str, Any]] = {}
    for name in artifacts:
        measured: dict[str, dict[str, Any]] = {}
        outs: dict[str, Outputs] = {}
        for role, art in (("baseline", baselines[name]), ("artifact", artifacts[name])):
            if name in failed:
                measured[role] = {"failed": failed[name]}
                continue
            reason = art.not_measured()
            if reason is not None:
                measured[role] = {"not_measured": reason}
                continue
            try:
                run = art.runner(bench.threads)
                outs[role] = _finite(collect(run, data, batch, bar, art.path.name, fixed_batch=fixed))
            except (KeyboardInterrupt, CompressorError):
                raise
            except Exception as e:
                failed[name] = f"running {art.path.name}: {_reason(e)}"
                log.debug("running %s failed", art.path.name, exc_info=True)
                measured = {r: {"failed": failed[name]} for r in ("baseline", "artifact")}
                outs.clear()
                runners.pop(f"{name}/baseline", None)
                break
            runners[f"{name}/{role}"] = run
            measured[role] = _measurement(outs[role], ref, metric)
        if "artifact" in outs:
            out = outs["artifact"]
            measured["artifact"]["max_abs_diff_vs_sim"] = float(abs(out.logits - sim_out.logits).max())
            if "baseline" in outs:
                base = outs["baseline"]
                drop, lo, hi = paired_drop(hits(base, ref, metric), hits(out, ref, metric))
                measured["artifact"].update(agreement_vs_baseline=agreement(out, base), drop=drop, drop_ci95=[lo, hi])
        targets[name] = measured
    for key, lat in interleaved_latencies(runners, shape, bench, bar, failed).items():
        name, role = key.split("/")
        if name not in failed:
            targets[name][role]["latency"] = lat
    for name in failed:
        targets[name] = {r: {"failed": failed[name]} for r in ("baseline", "artifact")}
    return {"metric": metric, "float_torch": score(ref, ref, metric), "simulation": _measurement(sim_out, ref, metric),
            "targets": targets, "bench": bench.model_dump(), "gate": rec.gate, "optional": rec.optional_export}


def _finite(out: Outputs) -> Outputs:
    bad = ~np.isfinite(out.logits).all(axis=1)
    if bad.any():
        raise FloatingPointError(f"outputs NaN or infinite values on {int(bad.sum())} of {len(bad)} images")
    return out


def _check_reference(ref: Outputs, loaded: LoadedModel, data: DataSource) -> None:
    """The float model's outputs are the yardstick: they must be numbers, and the labels must be
    classes it has, or every accuracy after this is meaningless (0 % top-1 that passes a gate)."""
    bad = ~np.isfinite(ref.logits).all(axis=1)
    if bad.any():
        raise CompressorError(f"the model {loaded.source} outputs NaN or infinite values on {int(bad.sum())} of "
                              f"{len(bad)} images of {data.description}; check the model (its weights, its input "
                              "normalization: --mean/--std) before compressing it.")
    classes = ref.logits.shape[1]
    if ref.labels is not None and len(ref.labels) and int(ref.labels.max()) >= classes:
        raise CompressorError(f"evaluation data {data.description} has labels up to {int(ref.labels.max())}, but the "
                              f"model {loaded.source} outputs {classes} classes (0..{classes - 1}). Use labels that "
                              "index the model's classes (class folders named 0..N-1, or a labels file).")


def interleaved_latencies(runners: dict[str, Runner], shape: tuple[int, ...], bench: BenchSpec, bar: Progress,
               failed: dict[str, str]) -> dict[str, dict[int, dict[str, float]]]:
    """Interleaved latencies of `runners` (keyed "group/role"); a runner that fails at a timing batch
    size fails its group (recorded in `failed` under the group) and the others are timed without it."""
    try:
        return measure(runners, shape, bench.batch_sizes, bench.warmup, bench.runs, bar,
                       min_seconds=bench.min_seconds, max_runs=bench.max_runs)
    except (KeyboardInterrupt, CompressorError):
        raise
    except Exception as e:
        log.debug("timing failed; finding the runner", exc_info=True)
        error = e
    before = len(failed)
    for key, run in runners.items():
        try:
            for b in bench.batch_sizes:
                run(np.zeros((b, *shape[1:]), np.float32))
        except Exception as e:
            failed.setdefault(key.split("/")[0], f"timing {key}: {_reason(e)}")
    if len(failed) == before:  # every runner works alone: not a target's fault
        raise error
    working = {k: r for k, r in runners.items() if k.split("/")[0] not in failed}
    return interleaved_latencies(working, shape, bench, bar, failed) if working else {}


def _sensitivity(float_graph: Graph, graph: Graph, data: DataSource, metric: str, bar: Progress,
                 limit: int | None) -> dict[str, Any]:
    from compressor.eval.sensitivity import layer_sensitivity

    # a fixed-batch graph is run at its own batch by layer_sensitivity itself
    return layer_sensitivity(float_graph, graph, data, metric=metric, batch_size=EVAL_BATCH, progress=bar,
                             limit=limit).as_dict()


def _measurement(out: Outputs, ref: Outputs, metric: str) -> dict[str, Any]:
    h = hits(out, ref, metric)
    return {"accuracy": float(h.mean() * 100),
            "accuracy_ci95": list(wilson_interval(int(h.sum()), h.size)),
            "sqnr_db_vs_float": round(sqnr_db(out, ref), 2)}
