"""report.md and report.html from one report dict.

Both formats are built from the same table model (`tables`), so the Markdown a CI job posts and
the HTML a person opens can never disagree. The HTML is one self-contained file (the Pareto plot
is inlined as a data URI), so it can be attached to a build or mailed without its folder.
"""

from __future__ import annotations

import base64
import html
from typing import Any

Table = tuple[str, list[str], list[list[str]]]  # (title, header, rows)
# A drop above this many points, significant at 95 %, gets the hint to run --sensitivity (so does
# a target that failed the gate). int8 PTQ of the bundled models costs under 0.5 points and the
# interval on 1000 test images is about ±0.3-0.5, so a drop beyond 2 points is neither noise nor
# what quantizing every layer evenly costs (2 points is also the budget recipes are held to on
# real CNNs): a few layers are then usually responsible, and the per-layer table names them.
SENSITIVITY_HINT_POINTS = 2.0


def primary_batch(batch_sizes: list[int]) -> int:
    """The batch the headline latency is quoted at: 8 if measured, else the largest."""
    return 8 if 8 in batch_sizes else max(batch_sizes)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A pipe table, one line per row (report.md and the benches' printouts)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _num(v: float | str | None, fmt: str = ".2f") -> str:
    """A number cell; strings pass through (strict JSON keeps an infinite SQNR as "inf")."""
    return "-" if v is None else v if isinstance(v, str) else format(v, fmt)


def _ci(v: float | None, ci: list[float] | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    fmt = "+.2f" if signed else ".2f"
    return f"{format(v, fmt)} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else format(v, fmt)


def _lat(e: dict[str, Any]) -> str:
    lat = e["latency_ms"]
    return "-" if lat is None else f"{lat['median']:.2f} / {lat['p90']:.2f}"


def _precision(e: dict[str, Any]) -> str:
    """The artifact's precision, and the one its runtime computes float ops in where that differs."""
    chosen = e["checks"].get("inference_precision") if isinstance(e.get("checks"), dict) else None
    if not chosen or chosen == "f32":
        return e["precision"]
    return f"{e['precision']} (runs {chosen})" if e["precision"] == "fp32" else f"{e['precision']} (float ops {chosen})"


def _speedup(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _status(e: dict[str, Any], baseline: bool) -> str:
    return ("baseline" if e["status"] == "ok" else e["status"]) if baseline else e["status"]


def artifact_table(r: dict[str, Any]) -> Table:
    """Per target: its float artifact, then the compressed one, every number from the runtime."""
    b = primary_batch(r["benchmark"]["batch_sizes"])
    header = ["artifact", "target", "precision", "accuracy [95% CI]", "simulation", "sim gap",
              "drop [95% CI]", f"b{b} median / p90 ms", "speedup", "vs best float", "MB", "status"]
    rows = []
    for a in r["artifacts"]:
        base = r["baselines"][a["target"]]
        rows.append([base["path"] or "-", base["target"], _precision(base),
                     _ci(base["accuracy"], base["accuracy_ci95"]),
                     f"{r['float_torch_accuracy']:.2f} (torch)", "-", "-", _lat(base), "1.00x",
                     _speedup(base.get("speedup_vs_best_float")), f"{base['size_bytes'] / 1e6:.2f}",
                     _status(base, True)])
        rows.append([a["path"] or "-", a["target"], _precision(a), _ci(a["accuracy"], a["accuracy_ci95"]),
                     _num(a["sim_accuracy"]), _num(a["sim_gap"], "+.2f"), _ci(a["drop"], a["drop_ci95"], True),
                     _lat(a), _speedup(a["speedup_vs_baseline"]), _speedup(a.get("speedup_vs_best_float")),
                     f"{a['size_bytes'] / 1e6:.2f}", _status(a, False)])
    return "Artifacts", header, rows


def latency_table(r: dict[str, Any]) -> Table | None:
    entries = [e for a in r["artifacts"] for e in (r["baselines"][a["target"]], a) if e["latency_ms"] and e["path"]]
    if not entries:
        return None
    rows = [[batch] + [f"{e['latency_ms']['per_batch'][batch]['median']:.2f}" for e in entries]
            for batch in entries[0]["latency_ms"]["per_batch"]]
    return "Latency by batch size (median ms)", ["batch"] + [e["path"] for e in entries], rows


def gate_table(r: dict[str, Any]) -> Table:
    g = r["gate"]
    rows = []
    for target, v in g["targets"].items():
        if v["passed"] is None:
            rows.append([target, "-", "-", "not judged: " + v["status"]])
        else:
            word = "no limit" if g["max_drop"] is None else "passed" if v["passed"] else "FAILED"
            rows.append([target, _ci(v["drop"], v["drop_ci95"], True), f"{v['judged']:+.2f}", word])
    judged = "drop" if g["gate_on"] == "point" else "lower end of the drop's 95% interval"
    return f"Gate per target (judged on the {judged})", ["target", "drop [95% CI]", "judged", "verdict"], rows


def sensitivity_table(r: dict[str, Any]) -> Table | None:
    """Graph order, so trends along the depth show; `rank` 1 is the layer that costs most alone."""
    sens = r.get("sensitivity")
    if not sens:
        return None
    header = ["rank", "layer", "kind", "bits", "output SQNR dB", "accuracy, only this layer quantized", "change",
              "logit SQNR dB, only this layer"]
    rows = [[str(s["rank"]), s["layer"], s["kind"], s["bits"], _num(s["sqnr_db"], ".1f"),
             _num(s["accuracy_only_this"]), _num(s["delta"], "+.2f"), _num(s["logit_sqnr_db"], ".1f")]
            for s in sens["rows"]]
    title = (f"Per-layer sensitivity ({sens['images']} images: float {sens['float_accuracy']:.2f}, fully quantized "
             f"{sens['quantized_accuracy']:.2f}; output SQNR accumulates along the network, the change and logit "
             "SQNR are each layer's own)")
    return title, header, rows


def search_table(r: dict[str, Any]) -> Table | None:
    """`compress search`'s candidates, best by the objective first among those within the limit."""
    s = r.get("search")
    if not s:
        return None
    key = "size_bytes" if s["objective"] == "size" else "latency_ms"
    rows_in = sorted(s["candidates"], key=lambda c: (not c.get("meets", False), c.get(key) is None, c.get(key) or 0))
    header = ["candidate", "target", "accuracy", "drop [95% CI]", "within limit", f"ms b{s['batch']}",
              "vs float", "MB", "built in s", "chosen"]
    rows = []
    for c in rows_in:
        if c["status"] != "ok":
            rows.append([c["candidate"], "-", "-", "-", c["status"], "-", "-", "-", _num(c["build_s"], ".1f"), ""])
            continue
        rows.append([c["candidate"], c["target"], _num(c["accuracy"]), _ci(c["drop"], c["drop_ci95"], True),
                     "yes" if c["meets"] else "no", _num(c["latency_ms"], ".3f"), _speedup(c["speedup_vs_float"]),
                     _num(c["size_bytes"] / 1e6, ".2f"), _num(c["build_s"], ".1f"), "◀" if c["chosen"] else ""])
    title = (f"Search: {len(s['candidates'])} candidates, objective {s['objective']}, max drop {s['max_drop']} "
             f"({s['gate_on']}); built {s['engine']}; {s['timing']}")
    return title, header, rows


def tables(r: dict[str, Any]) -> list[Table]:
    found = [artifact_table(r), gate_table(r), latency_table(r), search_table(r), sensitivity_table(r)]
    return [t for t in found if t is not None]


def verdict(r: dict[str, Any]) -> str:
    """One line: PASSED or FAILED against the limit; without a limit nothing was judged, and it
    says so rather than passing."""
    g = r["gate"]
    if g["max_drop"] is None:
        worst = "no artifact could be measured" if g["drop"] is None else f"worst accuracy drop {g['drop']:.2f} points"
        return f"no limit set (--max-drop): {worst}"
    word = "PASSED" if g["passed"] else "FAILED"
    if g["drop"] is None:
        return f"{word}: no artifact could be measured on this machine"
    return f"{word}: worst accuracy drop {g['drop']:.2f} points (max allowed {g['max_drop']}, on the {g['gate_on']})"


def verdict_kind(r: dict[str, Any]) -> str:
    """'passed', 'failed' or 'none' (no limit): the colour of the verdict."""
    return "none" if r["gate"]["max_drop"] is None else "passed" if r["gate"]["passed"] else "failed"


def hints(r: dict[str, Any]) -> list[str]:
    """What to do next: failed targets, and for a large drop or a failed gate the per-layer table
    that finds the layers responsible."""
    out = [f"{a['target']}: {a['status']}" for a in r["artifacts"] if a["status"].startswith("failed")]
    over = {t for t, v in r["gate"]["targets"].items() if v["passed"] is False}
    big = [a for a in r["artifacts"] if a["drop"] is not None and (
        a["target"] in over or (a["drop"] > SENSITIVITY_HINT_POINTS and a["drop_ci95"][0] > 0))]
    if big and not r.get("sensitivity"):
        worst = max(big, key=lambda a: a["drop"])
        why = ("over the gate's limit" if worst["target"] in over
               else f"more than {SENSITIVITY_HINT_POINTS:g}, beyond noise")
        out.append(f"{worst['target']} drops {worst['drop']:.2f} points ({why}): run again with --sensitivity to "
                   "see which layers cost the most (a pass's skip: keeps them in float).")
    return out


def ship_line(r: dict[str, Any]) -> str | None:
    """One sentence: the artifact to ship on this machine, and against what it was chosen."""
    rec, best = r.get("recommendation"), r.get("best_float")
    if not rec or not best:
        return None
    runs = f", runs {rec['runs_as']}" if rec["runs_as"] else ""
    best_runs = f", runs {best['runs_as']}" if best["runs_as"] else ""
    versus = ("it is the fastest float artifact" if rec["path"] == best["path"] and rec["target"] == best["target"]
              else f"{rec['speedup_vs_best_float']:.2f}x the fastest float artifact, {best['path']} "
                   f"({best['target']}{best_runs}, {best['latency_ms']:.2f} ms)")
    return (f"Ship on this machine: {rec['path']} ({rec['target']}, {rec['precision']}{runs}), "
            f"{rec['latency_ms']:.2f} ms at batch {rec['batch']}; {versus}. Why: {rec['why']}.")


def _intro(r: dict[str, Any]) -> str:
    unit = "top-1 %" if r["metric"] == "top1" else "agreement with float %"
    ev = r["data"]["evaluation"]
    bench = r["benchmark"]
    return (f"Metric: {unit} on {ev['count']} images of {ev['source']}. Every accuracy and latency was measured on "
            "the artifact in its own runtime; the PyTorch simulation is shown beside it. Speedups compare with the "
            "float artifact of the same target, and (vs best float) with the fastest float artifact of the run. "
            f"Latency: {bench['threads']} threads, {bench['warmup']} warm-up "
            f"runs, at least {bench['runs']} timed rounds and {bench['min_seconds']} s per batch size, all artifacts "
            "interleaved round by round.")


def _headline(summary: dict[str, Any]) -> str:
    """A pass summary's scalar facts (and op counts) on one line; per-layer tables stay in the JSON."""
    parts = []
    for key, value in summary.items():
        if isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values()):
            parts.append(f"{key} " + ", ".join(f"{k} {v}" for k, v in value.items()))
        elif isinstance(value, (int, float, str, bool)):
            parts.append(f"{key} {value}")
    return "; ".join(parts) or "-"


def _footer(r: dict[str, Any]) -> list[str]:
    cal = r["data"]["calibration"]
    return [f"Calibration: {cal['count']} images from {cal['source']} (sha256 {cal['sha256'][:16]}…).",
            "Timings (s): " + ", ".join(f"{k} {v}" for k, v in r["timings_s"].items())]


def render_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Compression report: {r['model']['name']} with `{r['recipe']['name']}`", "",
             f"Gate: **{verdict(r)}**", "", *(f"- {h}" for h in hints(r)), ""]
    if (ship := ship_line(r)) is not None:
        lines += [ship, ""]
    lines += [_intro(r), ""]
    for title, header, rows in tables(r):
        lines += [f"## {title}", "", *markdown_table(header, rows), ""]
    lines += ["## Passes", ""]
    lines += [f"- `{p['name']}` ({p['seconds']:.1f} s): {_headline(p['summary'])}" for p in r["passes"]]
    lines += ["", *_footer(r), "", "![accuracy vs latency](pareto.png)", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left}th{background:#f3f3f3}.passed{color:#176f2c}.failed{color:#b00020}img{max-width:100%}
td.bad{color:#b00020}.none{color:#555}"""


def _bad(cell: str) -> bool:
    return cell in ("FAILED", "slower_than_baseline") or cell.startswith("failed")


def render_html(r: dict[str, Any], pareto_png: bytes | None = None) -> str:
    """One self-contained page: tables, verdict, passes and the inlined Pareto plot."""
    e = html.escape
    verdict_class = verdict_kind(r)
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>{e(r['model']['name'])}: {e(r['recipe']['name'])}</title><style>{_CSS}</style></head><body>",
             f"<h1>Compression report: {e(r['model']['name'])} with <code>{e(r['recipe']['name'])}</code></h1>",
             f"<p class='{verdict_class}'><b>Gate: {e(verdict(r))}</b></p>",
             *(f"<p>{e(h)}</p>" for h in hints(r))]
    if (ship := ship_line(r)) is not None:
        parts.append(f"<p><b>{e(ship)}</b></p>")
    parts.append(f"<p>{e(_intro(r))}</p>")
    for title, header, rows in tables(r):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cells = "".join(f"<td{' class=bad' if _bad(c) else ''}>{e(c)}</td>" for c in row)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    if pareto_png:
        data = base64.b64encode(pareto_png).decode("ascii")
        parts.append(f"<h2>Accuracy vs latency</h2><img alt='accuracy vs latency' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Passes</h2><ul>")
    parts += [f"<li><code>{e(p['name'])}</code> ({p['seconds']:.1f} s): {e(_headline(p['summary']))}</li>"
              for p in r["passes"]]
    parts.append("</ul>" + "".join(f"<p>{e(line)}</p>" for line in _footer(r)) + "</body></html>")
    return "\n".join(parts)
