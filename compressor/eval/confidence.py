"""How sure an accuracy number is, from the size of the evaluation set.

A 1000-image test set measures top-1 to about ±1.4 points (95 %), which is wider than most
accuracy gates. The drop of a compressed model is measured on the same images as its float
baseline, so its interval comes from the paired per-image differences (the quantity McNemar's
test looks at), which is much narrower than two independent intervals: only images where the
two models disagree add variance.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959964  # two-sided 95 % normal quantile


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % interval of a proportion, in percent. Wilson's rather than the normal approximation
    because it stays inside [0, 100] and is not zero-width at 100 % agreement."""
    if n == 0:
        return (0.0, 100.0)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (round(100 * max(0.0, centre - half), 4), round(100 * min(1.0, centre + half), 4))


def paired_drop(baseline_hits: np.ndarray, hits: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """(drop, low, high) in points: baseline accuracy minus accuracy on the same images, with a
    95 % interval from the per-image differences d = baseline_hit − hit ∈ {−1, 0, 1}.

    The variance gets one pseudo-disagreement each way (a plus-two correction, as in Agresti–Caffo
    for paired proportions) so that a run with no disagreements on n images still reports an
    interval of about ±z·√2/n (0.28 points at n = 1000) rather than claiming certainty.
    """
    base = np.asarray(baseline_hits, dtype=bool)
    comp = np.asarray(hits, dtype=bool)
    if base.shape != comp.shape or base.ndim != 1:
        raise ValueError(f"paired_drop needs two equal-length 1-D hit vectors, got {base.shape} and {comp.shape}")
    n = base.size
    if n == 0:
        return (0.0, -100.0, 100.0)
    lost = int((base & ~comp).sum())
    gained = int((~base & comp).sum())
    drop = (lost - gained) / n
    m = n + 2
    mean = (lost + 1 - (gained + 1)) / m
    var = ((lost + 1) + (gained + 1)) / m - mean * mean
    half = z * math.sqrt(max(var, 0.0) / m)
    return (round(100 * drop, 4), round(100 * (drop - half), 4), round(100 * (drop + half), 4))
