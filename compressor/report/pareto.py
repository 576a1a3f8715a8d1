"""Accuracy vs latency plot with the Pareto front marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both latency (lower) and accuracy (higher)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for j, (l2, a2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    """Accuracy vs latency of every measured artifact, coloured by target: each target's float and
    compressed artifacts are joined by a line (what compression bought on that runtime), and the
    Pareto front across all targets is ringed. Artifacts that could not run here are named below
    the plot instead of being drawn at made-up coordinates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(report["baselines"][a["target"]], a) for a in report["artifacts"]]
    measured = [e for pair in pairs for e in pair if e["latency_ms"] is not None and e["accuracy"] is not None]
    skipped = [f"{e['path']} ({e['status'].removeprefix('not_measured: ')})"
               for pair in pairs for e in pair if e not in measured]
    points = [(e["latency_ms"]["median"], e["accuracy"]) for e in measured]
    front = set(pareto_front(points))
    fig, ax = plt.subplots(figsize=(6.8, 4.6), dpi=120)
    colors = plt.get_cmap("tab10")
    for k, (base, art) in enumerate(pairs):
        color = colors(k % 10)
        drawn = [e for e in (base, art) if e in measured]
        if len(drawn) == 2:
            ax.plot([e["latency_ms"]["median"] for e in drawn], [e["accuracy"] for e in drawn], "-", color=color,
                    lw=1, alpha=0.6, zorder=2)
        for e in drawn:
            ax.scatter([e["latency_ms"]["median"]], [e["accuracy"]], color=color, zorder=3, s=45,
                       marker="o" if e["precision"] == "fp32" else "s",
                       label=f"{art['target']} {e['precision']} ({e['path']})")
    _plot_candidates(ax, report.get("search"))
    ring = [points[i] for i in sorted(front)]
    if ring:
        ax.scatter([p[0] for p in ring], [p[1] for p in ring], s=220, facecolors="none", edgecolors="black",
                   linewidths=1.2, zorder=4, label="Pareto front")
        fp = sorted(ring)
        ax.plot([p[0] for p in fp], [p[1] for p in fp], "--", color="black", lw=0.8, zorder=1)
    if measured:  # runtimes differ by orders of magnitude (TVM's untuned float vs ORT): log time axis
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.3)
    batch = next((e["latency_ms"]["batch"] for e in measured), None)
    ax.set_xlabel(f"latency, batch {batch}, median (ms, log scale)")
    ax.set_ylabel("top-1 (%)" if report["metric"] == "top1" else "agreement with float (%)")
    ax.set_title(f"{report['model']['name']}: {report['recipe']['name']}")
    ax.grid(alpha=0.3)
    if measured or report.get("search"):
        ax.legend(loc="best", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no artifact could run on this machine", ha="center", transform=ax.transAxes)
    if skipped:
        fig.text(0.01, 0.01, "not measured here: " + "; ".join(skipped), fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.05 if skipped else 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def _plot_candidates(ax: Any, search: dict[str, Any] | None) -> None:
    """`compress search`'s candidates as small grey points (timed in the search's own interleaved loop),
    those beyond the accuracy limit hollow, each named."""
    if not search:
        return
    shown = [c for c in search["candidates"] if c.get("latency_ms") is not None and c.get("accuracy") is not None]
    for meets in (True, False):
        group = [c for c in shown if c["meets"] == meets]
        if group:
            ax.scatter([c["latency_ms"] for c in group], [c["accuracy"] for c in group], s=18, zorder=2,
                       color="grey", facecolors="grey" if meets else "none",
                       label=f"search candidates ({'within' if meets else 'beyond'} the limit)")
    for c in shown:
        ax.annotate(f"{c['candidate']} ({c['target']})", (c["latency_ms"], c["accuracy"]), fontsize=5,
                    xytext=(3, 2), textcoords="offset points", color="dimgrey")
