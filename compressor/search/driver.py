"""`compress search`: the fastest (or smallest) artifact of a model, on its targets, within --max-drop.

1. Every candidate (`compressor.search.candidates`) is built by `compress()` itself (calibration,
   passes, export, accuracy of each artifact in its runtime against that target's float artifact),
   in this process or as Ray tasks (`compressor.search.engine`); the anchor candidates also measure
   the per-layer sensitivity table that the mixed-precision candidates are made from.
2. Latency is timed afterwards, on this machine only, every candidate's artifact and each target's
   float artifact interleaved in one loop, so the numbers compare like with like whatever node
   built them (timing inside parallel tasks would measure the tasks' contention).
3. The winner (the fastest or smallest artifact whose drop meets the limit; if none does, the one with
   the smallest drop) is published by a normal `compress()` run of its recipe into the output
   folder, with the candidates table added to its report: its recipe.yaml reproduces it with plain
   `compress -r`, and the gate (exit 1 when no candidate met the limit) is that run's.

Candidates are built in temporary folders that are removed whatever happens; only step 3 writes
to the output folder, through the same publish-or-nothing rules as `compress`.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from compressor.api import CompressResult, check_inputs, compress, interleaved_latencies
from compressor.errors import CompressorError, ToolchainError, first_line
from compressor.io.publish import sigterm_unwinds
from compressor.progress import Progress
from compressor.recipe import BenchSpec, GateOn
from compressor.report.render import primary_batch
from compressor.search import candidates as cands
from compressor.search.engine import engine
from exporters import Artifact

Objective = Literal["latency", "size"]
# a candidate's own compress() run only needs accuracy; its latency is timed with the others later
QUICK_BENCH = BenchSpec(batch_sizes=[1], warmup=0, runs=3, min_seconds=0.0)
TIMING_NOTE = ("latency timed after all candidates were built, on the machine that ran the search, every artifact "
               "interleaved in one loop with each target's float artifact")


@dataclass
class Job:
    """One candidate to build; everything by value so it can run as a Ray task on another node."""

    candidate: cands.Candidate
    model: Any
    targets: list[str]
    options: dict[str, Any]


@dataclass
class Built:
    """What a candidate's run measured, and its artifacts (files carried back as bytes)."""

    candidate: cands.Candidate
    status: str = "ok"
    seconds: float = 0.0
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # target → report artifact entry
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    baselines: dict[str, Artifact] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    sensitivity: dict[str, Any] | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)
    input_shape: list[int] = field(default_factory=list)


def build(job: Job) -> Built:
    """Run `compress()` on one candidate in a temporary folder (removed before returning)."""
    start = time.perf_counter()
    c = job.candidate
    work = Path(tempfile.mkdtemp(prefix="compressor-candidate-"))
    try:
        rec = c.recipe.model_copy(update={"benchmark": QUICK_BENCH.model_copy(
            update={"threads": job.options.get("threads") or c.recipe.benchmark.threads})})
        options = {k: v for k, v in job.options.items() if k != "threads"}
        try:
            result = compress(job.model, recipe=rec, export=job.targets, out_dir=work, sensitivity=c.sensitivity,
                              optional_export=job.targets, **options)
        except CompressorError as e:
            return Built(c, f"does not apply: {first_line(e, 300)}", time.perf_counter() - start)
        except ToolchainError as e:
            return Built(c, f"failed: {first_line(e, 300)}", time.perf_counter() - start)
        report = result.report
        entries = {e["target"]: e for e in report["artifacts"]}
        arts = {t: a for t, a in result.artifacts.items() if entries[t]["accuracy"] is not None}
        if not arts:
            why = "; ".join(f"{t}: {e['status']}" for t, e in entries.items())
            return Built(c, f"failed: no artifact ran ({why})", time.perf_counter() - start)
        bases = {t: result.baselines[t] for t in arts}
        files = _pack([a.path for a in [*arts.values(), *bases.values()]])
        return Built(c, "ok", time.perf_counter() - start, {t: entries[t] for t in arts}, arts, bases, files,
                     report.get("sensitivity"), report["passes"], report["model"]["input_shape"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pack(paths: Sequence[Path]) -> dict[str, bytes]:
    """{relative name: bytes} of artifact files or folders (an OpenVINO model is a folder)."""
    out = {}
    for p in paths:
        for f in [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()):
            out[str(f.relative_to(p.parent))] = f.read_bytes()
    return out


def _unpack(built: Built, folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, data in built.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    built.files = {}
    for art in [*built.artifacts.values(), *built.baselines.values()]:
        art.path = folder / art.path.name


def search(
    model: str | Path | nn.Module,
    max_drop: float,
    out_dir: str | Path = "out",
    objective: Objective = "latency",
    export: Sequence[str] | None = None,
    recipes: Sequence[str] | None = None,
    ray: str | None = None,
    workers: int | None = None,
    gate_on: GateOn | None = None,
    batch_sizes: Sequence[int] | None = None,
    threads: int | None = None,
    progress: bool | Progress = False,
    **options: Any,
) -> CompressResult:
    """Build and measure candidates, time them side by side, publish the best (module docstring).

    `options` are `compress()`'s data and model arguments (calib, eval_data, preprocess, input_shape,
    arch, trust_pickle, calib_size), passed to every candidate's run unchanged. `recipes` limits the
    bundled candidates (names or files); `ray` is None (in-process), "auto" (a local Ray of `workers`
    CPUs) or a cluster address. Returns the published run's result; its report holds `search`.
    """
    if objective not in ("latency", "size"):
        raise CompressorError(f"--objective {objective!r}: expected latency or size.")
    if max_drop is None or not max_drop >= 0:
        raise CompressorError(f"--max-drop {max_drop!r}: the search needs a limit of 0 points or more.")
    bar = progress if isinstance(progress, Progress) else Progress(enabled=progress)
    targets = list(export or ["onnx"])
    first = cands.bundled(recipes)
    if workers is not None and ray is None:
        raise CompressorError("--workers needs --ray auto (in-process search builds one candidate at a time).")
    check_inputs(model, first[0].recipe, targets, **options)
    options = {**options, "max_drop": max_drop, "gate_on": gate_on, "threads": threads}
    with sigterm_unwinds():  # a killed search still removes its work folders and stops Ray
        return _run(model, max_drop, Path(out_dir), objective, targets, first, ray, workers, gate_on, batch_sizes,
                    threads, bar, options)


def _run(model: Any, max_drop: float, out_dir: Path, objective: Objective, targets: list[str],
         first: list[cands.Candidate], ray: str | None, workers: int | None, gate_on: GateOn | None,
         batch_sizes: Sequence[int] | None, threads: int | None, bar: Progress,
         options: dict[str, Any]) -> CompressResult:
    start = time.perf_counter()
    runner = engine(ray, workers)
    work = Path(tempfile.mkdtemp(prefix="compressor-search-"))
    try:
        base = cands.anchor(first)
        if base is not None:
            base.sensitivity = cands.SENSITIVITY_IMAGES
            if objective == "size":
                first.append(cands.w4_anchor(base))
        built = _build_all(runner, _sized(first, objective, targets), model, targets, options, work, bar, objective,
                           [])
        second = _sized(_mixed(built, base, objective), objective, targets)
        built = _build_all(runner, second, model, targets, options, work, bar, objective, built)
        build_s = time.perf_counter() - start
        bench = BenchSpec(**{k: v for k, v in (("batch_sizes", batch_sizes), ("threads", threads)) if v})
        table, floats = _time_all(built, bench, bar)
        rows, chosen = _choose(table, max_drop, gate_on or "point", objective)
        section = {"objective": objective, "max_drop": max_drop, "gate_on": gate_on or "point",
                   "engine": runner.label, "timing": TIMING_NOTE, "batch": primary_batch(bench.batch_sizes),
                   "float_latency_ms": floats, "build_s": round(build_s, 1),
                   "chosen": None if chosen is None else {"candidate": chosen["candidate"], "target": chosen["target"],
                                                          "meets": chosen["meets"]},
                   "candidates": rows}
    finally:
        runner.close()
        shutil.rmtree(work, ignore_errors=True)
    if chosen is None:
        why = "; ".join(f"{r['candidate']}: {r['status']}" for r in rows)
        if all(r["status"].startswith("does not apply") for r in rows):
            raise CompressorError(f"no candidate recipe applies to this model: {why}. Name recipes that do with "
                                  "--recipes.")
        raise ToolchainError(f"no candidate produced an artifact that runs here: {why}")
    winner = next(b.candidate for b in built if b.candidate.name == chosen["candidate"])
    bar.info(f"publishing {winner.name} on {chosen['target']}")
    return compress(model, recipe=winner.recipe, export=[chosen["target"]], out_dir=out_dir, max_drop=max_drop,
                    gate_on=gate_on, batch_sizes=batch_sizes, threads=threads, progress=bar, search=section,
                    **{k: v for k, v in options.items() if k not in ("max_drop", "gate_on", "threads")})


def _sized(todo: list[cands.Candidate], objective: Objective, targets: list[str]) -> list[cands.Candidate]:
    """For `--objective size`, ONNX weights on a 4-bit grid are stored as INT4 (exporters/onnx.py): the
    4-bit candidates are then smaller on disk, not only in name. The option goes into each recipe, so
    the published recipe.yaml reproduces the file."""
    if objective != "size" or "onnx" not in targets:
        return todo
    for c in todo:
        options = {**c.recipe.export_options, "onnx": {**c.recipe.export_options.get("onnx", {}), "pack_int4": True}}
        c.recipe = c.recipe.model_copy(update={"export_options": options})
    return todo


def _build_all(runner: Any, todo: list[cands.Candidate], model: Any, targets: list[str], options: dict[str, Any],
               work: Path, bar: Progress, objective: Objective, done: list[Built]) -> list[Built]:
    """Build `todo` on the engine; progress shows done/total and the best candidate so far (by the
    objective; latency from each candidate's own quick timing, until the interleaved one)."""
    jobs = [Job(c, model, targets, options) for c in todo]
    built = list(done)
    for b in bar.track(runner.imap(build, jobs), f"candidates ({runner.label})", total=len(jobs)):
        if b.status == "ok":
            _unpack(b, work / f"c{len(built)}")
        built.append(b)
        best = _best_so_far(built, options["max_drop"], objective)
        bar.info(f"{b.candidate.name}: {_summary(b)} · best so far: {best}")
    order = {c.name: i for i, c in enumerate(todo)}  # the candidates' order, not the engine's completion order
    return [*done, *sorted(built[len(done):], key=lambda b: order[b.candidate.name])]


def _summary(b: Built) -> str:
    if b.status != "ok":
        return b.status
    return ", ".join(f"{t} drop {e['drop']:+.2f}" if e["drop"] is not None else f"{t} {e['status']}"
                     for t, e in b.entries.items())


def _best_so_far(built: list[Built], max_drop: float, objective: Objective) -> str:
    ok = [(b, t, e) for b in built for t, e in b.entries.items()
          if e["drop"] is not None and e["drop"] <= max_drop and e["latency_ms"] is not None]
    if not ok:
        return "none within the limit yet"
    key = "size_bytes" if objective == "size" else "latency_ms"
    b, t, _ = min(ok, key=lambda x: x[2][key] if key == "size_bytes" else x[2][key]["median"])
    return f"{b.candidate.name} on {t}"


def _mixed(built: list[Built], base: cands.Candidate | None, objective: Objective) -> list[cands.Candidate]:
    """Mixed-precision candidates from the anchors' sensitivity tables (none without an anchor that ran)."""
    by_name = {b.candidate.name: b for b in built if b.status == "ok"}
    if base is None or base.name not in by_name or not by_name[base.name].sensitivity:
        return []
    out = cands.float_back(base, by_name[base.name].sensitivity)
    w4 = by_name.get(f"{base.name} w4")
    if objective == "size" and w4 is not None and w4.sensitivity:
        out += cands.bit_allocation(base, w4.sensitivity, cands.weight_counts(w4.passes))
    return out


def _time_all(built: list[Built], bench: BenchSpec,
              bar: Progress) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Interleaved latency of every built artifact and each target's float artifact (from the first
    candidate that built it: the float model is the same for all). An artifact that fails to run at
    a timing batch size gets that as its status."""
    runners, floats, failed = {}, {}, {}
    for i, b in enumerate(built):
        for t, art in b.artifacts.items():
            runners[f"{i}.{t}/artifact"] = art.runner(bench.threads)
            if t not in floats:
                floats[t] = b.baselines[t]
                runners[f"float.{t}/artifact"] = floats[t].runner(bench.threads)
    shape = next((tuple(b.input_shape) for b in built if b.status == "ok"), ())
    lat = interleaved_latencies(runners, shape, bench, bar, failed) if runners else {}
    batch = primary_batch(bench.batch_sizes)
    float_ms = {t: round(lat[f"float.{t}/artifact"][batch]["median"], 4) for t in floats
                if f"float.{t}/artifact" in lat}
    table = []
    for i, b in enumerate(built):
        row = {"candidate": b.candidate.name, "origin": b.candidate.origin, "status": b.status,
               "build_s": round(b.seconds, 1)}
        if b.status != "ok":
            table.append(row)
            continue
        for t, e in b.entries.items():
            key = f"{i}.{t}/artifact"
            if key not in lat or t not in float_ms:
                why = failed.get(f"{i}.{t}") or failed.get(f"float.{t}")
                table.append({**row, "target": t, "status": f"failed: {why}"})
                continue
            ms = lat[key][batch]["median"]
            table.append({**row, "target": t, "accuracy": e["accuracy"], "drop": e["drop"], "drop_ci95": e["drop_ci95"],
                          "latency_ms": round(ms, 4), "speedup_vs_float": round(float_ms[t] / ms, 4),
                          "speedup_vs_fastest_float": round(min(float_ms.values()) / ms, 4),
                          "size_bytes": e["size_bytes"], "size_ratio_vs_float": e["size_ratio_vs_baseline"]})
    return table, float_ms


def _choose(rows: list[dict[str, Any]], max_drop: float, gate_on: str,
            objective: Objective) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Mark each measured row `meets`; the chosen one is the best by the objective among those that
    meet the limit (ties: the smaller drop), else the one with the smallest drop."""
    measured = [r for r in rows if r["status"] == "ok" and r["drop"] is not None]
    for r in measured:
        judged = r["drop"] if gate_on == "point" else r["drop_ci95"][0]
        r["meets"] = judged <= max_drop + 1e-9
    key = "size_bytes" if objective == "size" else "latency_ms"
    meeting = [r for r in measured if r["meets"]]
    chosen = min(meeting, key=lambda r: (r[key], r["drop"])) if meeting else min(
        measured, key=lambda r: (r["drop"], r[key]), default=None)
    for r in rows:
        r["chosen"] = r is chosen
    return rows, chosen
