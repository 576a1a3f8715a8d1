"""report.json (versioned schema), report.md/.html, pareto.png and the resolved recipe.yaml.

Every accuracy and latency in the report was measured on an exported artifact in its runtime;
the PyTorch simulation's accuracy is shown beside it with the gap, so a user sees when the
deployed model differs from what the toolkit simulated.
"""

from __future__ import annotations

import json
import math
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from compressor.io import LoadedModel
from compressor.io.publish import RESULT_NAMES
from compressor.passes import PassRecord
from compressor.recipe import SCHEMA_VERSION, Recipe
from compressor.report.pareto import plot_pareto
from compressor.report.render import primary_batch, render_html, render_markdown

if TYPE_CHECKING:
    from exporters import Artifact

REPORT_SCHEMA_VERSION = 4
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")  # the published JSON Schema of report.json
# why a number can be non-finite, by the key it sits under and its value (report.json has null there)
NON_FINITE_REASONS = {("sqnr", "inf"): "no difference from the reference (the noise is zero, the SQNR infinite)",
                      ("sqnr", "-inf"): "the reference outputs are all zero"}
NON_FINITE_DEFAULT = {"nan": "not a number: what it was computed from overflowed or is undefined",
                      "inf": "infinite", "-inf": "minus infinity"}
TOOLS = ("compressor", "torch", "onnx", "onnxscript", "onnxruntime", "numpy")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _latency(lat: dict[int, dict[str, float]] | None, batch: int) -> dict[str, Any] | None:
    if lat is None:
        return None
    return {"batch": batch, "median": lat[batch]["median"], "p90": lat[batch]["p90"],
            "per_batch": {str(b): v for b, v in lat.items()}}


def _entry(art: Artifact, measured: dict[str, Any], batch: int) -> dict[str, Any]:
    """What one artifact measured in its runtime; numbers it could not measure are null and its
    status says why, so nothing in the report is a stand-in for a measurement."""
    reason = measured.get("not_measured")
    status = f"failed: {measured['failed']}" if "failed" in measured else f"not_measured: {reason}" if reason else "ok"
    return {
        "target": art.target, "path": art.path.name if art.path.exists() else None, "precision": art.precision,
        "status": status,
        "accuracy": _round(measured.get("accuracy")), "accuracy_ci95": measured.get("accuracy_ci95"),
        "sqnr_db_vs_float": measured.get("sqnr_db_vs_float"),
        "latency_ms": _latency(measured.get("latency"), batch), "size_bytes": art.size_bytes,
        "checks": _jsonable(art.meta),
    }


def _round(v: float | None, digits: int = 4) -> float | None:
    return None if v is None else round(v, digits)


def build_report(rec: Recipe, passes: list[PassRecord], loaded: LoadedModel, shape: tuple[int, ...],
                 ev: dict[str, Any], baselines: dict[str, Artifact], artifacts: dict[str, Artifact],
                 timings: dict[str, float], data: dict[str, Any], files: list[str],
                 search: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report as report.json holds it: strict JSON (a non-finite number is null, listed with
    its reason under `non_finite`), valid against `SCHEMA_FILE`."""
    batch = primary_batch(ev["bench"]["batch_sizes"])
    sim = ev["simulation"]
    base_entries, entries = {}, []
    for name, art in artifacts.items():
        measured = ev["targets"][name]
        base = base_entries[name] = _entry(baselines[name], measured["baseline"], batch)
        e = _entry(art, measured["artifact"], batch)
        m = measured["artifact"]
        e.update(baseline=base["path"], optional=name in ev.get("optional", ()), sim_accuracy=_round(sim["accuracy"]),
                 sim_gap=_round(None if e["accuracy"] is None else e["accuracy"] - sim["accuracy"]),
                 drop=m.get("drop"), drop_ci95=m.get("drop_ci95"),
                 agreement_vs_baseline=_round(m.get("agreement_vs_baseline")),
                 max_abs_diff_vs_sim=m.get("max_abs_diff_vs_sim"),
                 size_ratio_vs_baseline=round(art.size_bytes / max(baselines[name].size_bytes, 1), 4),
                 speedup_vs_baseline=None)
        if e["latency_ms"] and base["latency_ms"] and e["latency_ms"]["median"] > 0:
            e["speedup_vs_baseline"] = round(base["latency_ms"]["median"] / e["latency_ms"]["median"], 4)
            if e["speedup_vs_baseline"] < 1.0:
                e["status"] = "slower_than_baseline"
        entries.append(e)
    gate = judge(entries, ev["metric"], ev["gate"].max_drop, ev["gate"].gate_on)
    best = best_float(base_entries)
    for e in [*base_entries.values(), *entries]:
        e["speedup_vs_best_float"] = None if best is None or not e["latency_ms"] else round(
            best["latency_ms"] / e["latency_ms"]["median"], 4)
    first = base_entries[next(iter(artifacts))]
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "files": sorted(set(files) | RESULT_NAMES),
        "tools": tool_versions(),
        "model": {"source": loaded.source, "kind": loaded.kind, "name": loaded.name,
                  "input_shape": list(shape)},
        "recipe": {"name": rec.name, "file": "recipe.yaml"},
        "data": data,
        "metric": ev["metric"],
        "float_torch_accuracy": round(ev["float_torch"], 4),
        "simulation": {"accuracy": round(sim["accuracy"], 4), "accuracy_ci95": sim["accuracy_ci95"]},
        "baseline": {**first, "float_torch_accuracy": round(ev["float_torch"], 4)},
        "baselines": base_entries,
        "artifacts": entries,
        "accuracy_drop": gate["drop"],
        "gate": gate,
        "best_float": best,
        "recommendation": recommend(base_entries, entries, gate),
        "sensitivity": _jsonable(ev.get("sensitivity")),
        "search": _jsonable(search),
        "benchmark": ev["bench"],
        "passes": [{"name": p.name, "params": p.params, "seconds": p.seconds, "summary": _jsonable(p.summary)}
                   for p in passes],
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    notes: list[dict[str, str]] = []
    report = _strict(report, "", notes)
    report["non_finite"] = notes
    return report


def runs_as(e: dict[str, Any]) -> str | None:
    """The precision a runtime really computes float ops in when it is not the artifact's own (OpenVINO
    runs an fp32 model in bf16 on CPUs that have it), else None."""
    chosen = e["checks"].get("inference_precision") if isinstance(e.get("checks"), dict) else None
    return chosen if chosen and chosen != "f32" else None


def best_float(base_entries: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest float artifact measured in the run (at the headline batch): the honest baseline, since a
    target's own float artifact may be slower than another runtime's float default."""
    timed = [b for b in base_entries.values() if b["latency_ms"]]
    if not timed:
        return None
    b = min(timed, key=lambda e: e["latency_ms"]["median"])
    return {"target": b["target"], "path": b["path"], "precision": b["precision"], "runs_as": runs_as(b),
            "latency_ms": b["latency_ms"]["median"], "batch": b["latency_ms"]["batch"]}


def recommend(base_entries: dict[str, dict[str, Any]], entries: list[dict[str, Any]],
              gate: dict[str, Any]) -> dict[str, Any] | None:
    """Which artifact to ship on this machine: the fastest at the headline batch of the float artifacts and
    of the compressed ones whose target passed the gate. Without `max_drop` every measured one passes, so
    the reason says accuracy was not a condition."""
    floats = [b for b in base_entries.values() if b["latency_ms"]]
    passed = [e for e in entries if e["latency_ms"] and gate["targets"].get(e["target"], {}).get("passed")]
    if not floats and not passed:
        return None
    pick = min([*floats, *passed], key=lambda e: e["latency_ms"]["median"])
    compressed = pick in passed
    if gate["max_drop"] is None:
        why = "the fastest artifact measured; no accuracy limit was set (--max-drop makes accuracy a condition)"
    elif compressed:
        why = f"the fastest artifact whose accuracy drop passed the gate (max {gate['max_drop']} points)"
    else:
        why = f"no compressed artifact both passed the gate (max {gate['max_drop']} points) and ran faster"
    return {"target": pick["target"], "path": pick["path"], "precision": pick["precision"], "runs_as": runs_as(pick),
            "compressed": compressed, "latency_ms": pick["latency_ms"]["median"], "batch": pick["latency_ms"]["batch"],
            "speedup_vs_best_float": pick["speedup_vs_best_float"], "accuracy": pick["accuracy"],
            "drop": pick.get("drop"), "why": why}


def judge(entries: list[dict[str, Any]], metric: str, max_drop: float | None, gate_on: str) -> dict[str, Any]:
    """The gate's verdict per target and overall.

    `point` compares the measured drop with `max_drop`; `lower-bound` compares the low end of the
    drop's 95 % interval, so it fails only when the drop is significantly above the limit. A
    target whose artifact cannot run here is not judged; if no target could be judged, a set
    limit fails the gate: a CI check must not pass on numbers nobody measured.
    """
    per: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["drop"] is None:
            per[e["target"]] = {"passed": None, "status": e["status"] if e["accuracy"] is None
                                else f"not_measured: {e['target']} float baseline did not run"}
            continue
        value = e["drop"] if gate_on == "point" else e["drop_ci95"][0]
        passed = max_drop is None or value <= max_drop + 1e-9
        per[e["target"]] = {"passed": passed, "drop": e["drop"], "drop_ci95": e["drop_ci95"], "judged": value}
    judged = [p for p in per.values() if p["passed"] is not None]
    drop = max((p["drop"] for p in judged), default=None)
    passed = all(p["passed"] for p in judged) if judged else max_drop is None
    return {"metric": metric, "max_drop": max_drop, "gate_on": gate_on, "passed": passed, "drop": drop,
            "targets": per}


def _strict(v: Any, path: str, notes: list[dict[str, str]]) -> Any:
    """Strict JSON (JavaScript's JSON.parse rejects NaN and Infinity): a non-finite number becomes
    null, and `notes` gets its path, value and why it could be so."""
    if isinstance(v, float) and not math.isfinite(v):
        key, value = path.rsplit(".", 1)[-1], str(v)
        reason = next((r for (k, val), r in NON_FINITE_REASONS.items() if k in key and val == value),
                      NON_FINITE_DEFAULT[value])
        notes.append({"path": path, "value": value, "reason": reason})
        return None
    if isinstance(v, dict):
        return {k: _strict(x, f"{path}.{k}" if path else k, notes) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_strict(x, f"{path}.{i}", notes) for i, x in enumerate(v)]
    return v


def _jsonable(v: Any) -> Any:
    """JSON types: tuples become lists, other objects their str(); floats stay (see `_strict`)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def resolved_recipe(rec: Recipe, passes: list[PassRecord], data: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every default (and every 'auto') written out, plus provenance."""
    d = rec.to_yaml_dict()
    d["passes"] = [{"pass": p.name, **p.params} for p in passes]
    d["schema_version"] = SCHEMA_VERSION
    d["resolved"] = {"tools": tool_versions(), "calibration": data["calibration"]}
    return d


def write_report(folder: Path, rec: Recipe, passes: list[PassRecord], loaded: LoadedModel,
                 shape: tuple[int, ...], ev: dict[str, Any], baselines: dict[str, Artifact],
                 artifacts: dict[str, Artifact], timings: dict[str, float], data: dict[str, Any],
                 files: list[str], search: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write report.json, report.md, report.html, pareto.png and recipe.yaml into `folder`;
    `files` are the artifacts already there (the report lists every file of the run)."""
    report = build_report(rec, passes, loaded, shape, ev, baselines, artifacts, timings, data, files, search)
    (folder / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    plot_pareto(report, folder / "pareto.png")
    (folder / "report.md").write_text(render_markdown(report))
    (folder / "report.html").write_text(render_html(report, (folder / "pareto.png").read_bytes()))
    (folder / "recipe.yaml").write_text(yaml.safe_dump(resolved_recipe(rec, passes, data), sort_keys=False))
    return report
