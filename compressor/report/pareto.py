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
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, ((lat, acc), label) in enumerate(zip(points, labels, strict=True)):
        ax.scatter([lat], [acc], s=60, marker="*" if i in front else "o", zorder=3)
        ax.annotate(label, (lat, acc), textcoords="offset points", xytext=(6, 4), fontsize=8)
    fp = sorted(points[i] for i in front)
    ax.plot([p[0] for p in fp], [p[1] for p in fp], "--", color="gray", lw=1, label="Pareto front", zorder=2)
    batch = report["baseline"]["latency_ms"]["batch"]
    ax.set_xlabel(f"latency, batch {batch}, median (ms)")
    ax.set_ylabel("top-1 (%)" if report["metric"] == "top1" else "agreement with float (%)")
    ax.set_title(f"{report['model']['name']}: {report['recipe']['name']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
