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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [report["baseline"], *report["artifacts"]]
    labels = [f"{e['path']} ({e['precision']})" for e in entries]
    points = [(e["latency_ms"]["median"], e["accuracy"]) for e in entries]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for i, ((lat, acc), label) in enumerate(zip(points, labels, strict=True)):
        on_front = i in front
        ax.scatter([lat], [acc], s=90 if on_front else 50, marker="*" if on_front else "o", zorder=3,
                   color="tab:blue" if on_front else "tab:gray", label="Pareto front" if i == front[0] else None)
        ax.annotate(label, (lat, acc), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    fp = sorted(points[i] for i in front)
    if len(fp) > 1:
        ax.plot([p[0] for p in fp], [p[1] for p in fp], "--", color="tab:blue", lw=1, zorder=2)
    ax.margins(x=0.25, y=0.3)
    batch = report["baseline"]["latency_ms"]["batch"]
    ax.set_xlabel(f"latency, batch {batch}, median (ms)")
    ax.set_ylabel("top-1 (%)" if report["metric"] == "top1" else "agreement with float (%)")
    ax.set_title(f"{report['model']['name']}: {report['recipe']['name']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
