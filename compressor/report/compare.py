"""`compress compare out_a/ out_b/`: what changed between two runs.

Rows are matched by (target, float-or-compressed), so a recipe change, a new toolkit version or
another machine shows up as accuracy, latency and size deltas per artifact, with the interval of
each accuracy so a user can tell a real change from evaluation noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compressor.errors import CompressorError
from compressor.report.render import Table

MIN_SCHEMA = 2


def load_report(folder: Path) -> dict[str, Any]:
    """report.json of a run folder (or the file itself), checked to be one this version reads."""
    path = folder / "report.json" if folder.is_dir() else folder
    if not path.exists():
        raise CompressorError(f"{folder}: no report.json here; pass the output folder of a compress run (-o).")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CompressorError(f"{path}: not a readable report.json ({e}).") from None
    version = report.get("schema_version") if isinstance(report, dict) else None
    if not isinstance(version, int) or version < MIN_SCHEMA:
        raise CompressorError(f"{path}: report schema {version!r}; compare reads schema {MIN_SCHEMA} or newer. "
                              "Re-run compress with this version to regenerate it.")
    return report


def _rows(r: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    rows = {}
    for a in r["artifacts"]:
        rows[(a["target"], "float")] = r["baselines"][a["target"]]
        rows[(a["target"], "compressed")] = a
    return rows


def _acc(e: dict[str, Any] | None) -> str:
    if e is None:
        return "absent"
    if e["accuracy"] is None:
        return "not measured"
    ci = e.get("accuracy_ci95")
    return f"{e['accuracy']:.2f}" + (f" ±{(ci[1] - ci[0]) / 2:.2f}" if ci else "")


def _ms(e: dict[str, Any] | None) -> float | None:
    return None if e is None or e["latency_ms"] is None else e["latency_ms"]["median"]


def _delta(a: float | None, b: float | None, ratio: bool) -> str:
    if a is None or b is None:
        return "-"
    return f"{b / a:.2f}x" if ratio else f"{b - a:+.2f}"


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> Table:
    """One row per artifact in either run: A, B and the change, for accuracy, latency and size."""
    ra, rb = _rows(a), _rows(b)
    header = ["target", "artifact", "accuracy A", "accuracy B", "Δ points", "ms A", "ms B", "B/A time",
              "MB A", "MB B", "status B"]
    rows = []
    for key in sorted(set(ra) | set(rb)):
        ea, eb = ra.get(key), rb.get(key)
        acc_a = None if ea is None else ea["accuracy"]
        acc_b = None if eb is None else eb["accuracy"]
        rows.append([key[0], key[1], _acc(ea), _acc(eb), _delta(acc_a, acc_b, False),
                     "-" if _ms(ea) is None else f"{_ms(ea):.2f}", "-" if _ms(eb) is None else f"{_ms(eb):.2f}",
                     _delta(_ms(ea), _ms(eb), True),
                     "-" if ea is None else f"{ea['size_bytes'] / 1e6:.2f}",
                     "-" if eb is None else f"{eb['size_bytes'] / 1e6:.2f}", "absent" if eb is None else eb["status"]])
    title = (f"A: {a['model']['name']} · {a['recipe']['name']} (gate {'passed' if a['gate']['passed'] else 'FAILED'})"
             f"  vs  B: {b['model']['name']} · {b['recipe']['name']} "
             f"(gate {'passed' if b['gate']['passed'] else 'FAILED'})")
    return title, header, rows


def metric_mismatch(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why the accuracies are not comparable, if they are not (other metric or other data)."""
    if a["metric"] != b["metric"]:
        return f"A reports {a['metric']} and B {b['metric']}: their accuracies are not comparable."
    ea, eb = a["data"]["evaluation"], b["data"]["evaluation"]
    if (ea["source"], ea["count"]) != (eb["source"], eb["count"]):
        return (f"A was evaluated on {ea['count']} images of {ea['source']}, B on {eb['count']} of {eb['source']}: "
                "accuracy deltas mix model and data changes.")
    return None
