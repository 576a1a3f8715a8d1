"""report.json (versioned schema), report.md, pareto.png and the resolved recipe.yaml.

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
from compressor.passes import PassRecord
from compressor.recipe import SCHEMA_VERSION, Recipe
from compressor.report.pareto import plot_pareto

if TYPE_CHECKING:
    from exporters import Artifact

REPORT_SCHEMA_VERSION = 1
TOOLS = ("compressor", "torch", "onnx", "onnxscript", "onnxruntime", "numpy")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def primary_batch(batch_sizes: list[int]) -> int:
    """The batch the headline latency is quoted at: 8 if measured, else the largest."""
    return 8 if 8 in batch_sizes else max(batch_sizes)


def _latency(lat: dict[int, dict[str, float]], batch: int) -> dict[str, Any]:
    return {"batch": batch, "median": lat[batch]["median"], "p90": lat[batch]["p90"],
            "per_batch": {str(b): v for b, v in lat.items()}}


def build_report(rec: Recipe, passes: list[PassRecord], loaded: LoadedModel, shape: tuple[int, ...],
                 ev: dict[str, Any], baseline: Artifact, artifacts: dict[str, Artifact],
                 timings: dict[str, float], data: dict[str, Any]) -> dict[str, Any]:
    batch = primary_batch(ev["bench"]["batch_sizes"])
    base_lat = ev["latency"]["baseline"]
    entries = []
    for name, art in artifacts.items():
        lat = ev["latency"][name]
        acc = ev["artifacts"][name]
        speedup = base_lat[batch]["median"] / lat[batch]["median"]
        entries.append({
            "target": art.target, "path": art.path.name, "precision": art.precision,
            "accuracy": round(acc["accuracy"], 4), "sim_accuracy": round(acc["sim_accuracy"], 4),
            "sim_gap": round(acc["accuracy"] - acc["sim_accuracy"], 4),
            "agreement_vs_baseline": round(acc["agreement_vs_baseline"], 4),
            "sqnr_db_vs_float": acc["sqnr_db_vs_float"],
            "max_abs_diff_vs_sim": acc["max_abs_diff_vs_sim"],
            "latency_ms": _latency(lat, batch), "size_bytes": art.size_bytes,
            "size_ratio_vs_baseline": round(art.size_bytes / baseline.size_bytes, 4),
            "speedup_vs_baseline": round(speedup, 4),
            "status": "ok" if speedup >= 1.0 else "slower_than_baseline",
        })
    headline = entries[0]
    drop = ev["baseline"] - headline["accuracy"]
    max_drop = ev["max_drop"]
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "tools": tool_versions(),
        "model": {"source": loaded.source, "kind": loaded.kind, "name": loaded.name,
                  "input_shape": list(shape)},
        "recipe": {"name": rec.name, "file": "recipe.yaml"},
        "data": data,
        "metric": ev["metric"],
        "baseline": {"target": baseline.target, "path": baseline.path.name, "precision": baseline.precision,
                     "accuracy": round(ev["baseline"], 4), "float_torch_accuracy": round(ev["float_torch"], 4),
                     "latency_ms": _latency(base_lat, batch), "size_bytes": baseline.size_bytes},
        "artifacts": entries,
        "accuracy_drop": round(drop, 4),
        "gate": {"metric": ev["metric"], "max_drop": max_drop,
                 "passed": True if max_drop is None else bool(drop <= max_drop + 1e-9)},
        "benchmark": ev["bench"],
        "passes": [{"name": p.name, "params": p.params, "seconds": p.seconds, "summary": _brief(p.summary)}
                   for p in passes],
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """Per-layer tables stay in the report; infinite floats become strings for strict JSON."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return clean(summary)


def resolved_recipe(rec: Recipe, passes: list[PassRecord], data: dict[str, Any]) -> dict[str, Any]:
    """The recipe with every default (and every 'auto') written out, plus provenance."""
    d = rec.to_yaml_dict()
    d["passes"] = [{"pass": p.name, **p.params} for p in passes]
    d["schema_version"] = SCHEMA_VERSION
    d["resolved"] = {"tools": tool_versions(), "calibration": data["calibration"]}
    return d


def _headline(summary: dict[str, Any]) -> str:
    """A pass summary's scalar facts (and op counts) on one line; per-layer tables stay in the JSON."""
    parts = []
    for key, value in summary.items():
        if isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            parts.append(f"{key} " + ", ".join(f"{k} {v}" for k, v in value.items()))
        elif isinstance(value, (int, float, str, bool)):
            parts.append(f"{key} {value}")
    return "; ".join(parts) or "-"


def render_markdown(r: dict[str, Any]) -> str:
    b, metric = r["baseline"], r["metric"]
    unit = "top-1 %" if metric == "top1" else "agreement with float %"
    lat_b = b["latency_ms"]["batch"]
    lines = [
        f"# Compression report: {r['model']['name']} with `{r['recipe']['name']}`",
        "",
        f"Gate: **{'PASSED' if r['gate']['passed'] else 'FAILED'}**: accuracy drop {r['accuracy_drop']:.2f} points"
        + (f" (max allowed {r['gate']['max_drop']})" if r['gate']['max_drop'] is not None else " (no limit set)"),
        "",
        f"Metric: {unit}, on {r['data']['evaluation']['count']} images of {r['data']['evaluation']['source']}; "
        f"every number below was measured on the artifact in its runtime, the simulation (PyTorch) beside it.",
        "",
        f"| artifact | precision | accuracy | simulation | gap | latency b{lat_b} median / p90 (ms) "
        "| speedup | size (MB) | status |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {b['path']} | {b['precision']} | {b['accuracy']:.2f} | {b['float_torch_accuracy']:.2f} (torch) | - | "
        f"{b['latency_ms']['median']:.2f} / {b['latency_ms']['p90']:.2f} | 1.00x | {b['size_bytes'] / 1e6:.2f} | "
        "baseline |",
    ]
    for a in r["artifacts"]:
        lines.append(
            f"| {a['path']} | {a['precision']} | {a['accuracy']:.2f} | {a['sim_accuracy']:.2f} | "
            f"{a['sim_gap']:+.2f} | {a['latency_ms']['median']:.2f} / {a['latency_ms']['p90']:.2f} | "
            f"{a['speedup_vs_baseline']:.2f}x | {a['size_bytes'] / 1e6:.2f} | {a['status']} |")
    bench = r["benchmark"]
    lines += ["", f"Latency: {bench['threads']} threads, {bench['warmup']} warm-up runs, then at least {bench['runs']} "
              f"timed rounds per batch size and at least {bench['min_seconds']} s of timing, artifacts interleaved "
              "round by round.", "", "## Latency by batch size (median ms)", "",
              "| batch | " + " | ".join([b["path"]] + [a["path"] for a in r["artifacts"]]) + " |",
              "|---|" + "---|" * (1 + len(r["artifacts"]))]
    for batch in b["latency_ms"]["per_batch"]:
        row = [b["latency_ms"]["per_batch"][batch]["median"]]
        row += [a["latency_ms"]["per_batch"][batch]["median"] for a in r["artifacts"]]
        lines.append(f"| {batch} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    lines += ["", "## Passes", ""]
    for p in r["passes"]:
        lines.append(f"- `{p['name']}` ({p['seconds']:.1f} s): {_headline(p['summary'])}")
    cal = r["data"]["calibration"]
    lines += ["", f"Calibration: {cal['count']} images from {cal['source']} (sha256 {cal['sha256'][:16]}…).",
              "Timings (s): " + ", ".join(f"{k} {v}" for k, v in r["timings_s"].items()), "",
              "![accuracy vs latency](pareto.png)", ""]
    return "\n".join(lines)


def write_report(folder: Path, rec: Recipe, passes: list[PassRecord], loaded: LoadedModel,
                 shape: tuple[int, ...], ev: dict[str, Any], baseline: Artifact, artifacts: dict[str, Artifact],
                 timings: dict[str, float], data: dict[str, Any]) -> dict[str, Any]:
    """Write report.json, report.md, pareto.png and recipe.yaml into `folder`; return the report."""
    report = build_report(rec, passes, loaded, shape, ev, baseline, artifacts, timings, data)
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    (folder / "report.md").write_text(render_markdown(report))
    (folder / "recipe.yaml").write_text(yaml.safe_dump(resolved_recipe(rec, passes, data), sort_keys=False))
    plot_pareto(report, folder / "pareto.png")
    return report
