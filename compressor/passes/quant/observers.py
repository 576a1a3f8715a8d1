"""Streaming activation observers: statistics from one calibration pass, memory bounded per tensor.

`MinMaxObserver` keeps the running range. `HistogramObserver` keeps a fixed number of bins over a
symmetric range that doubles when a batch exceeds it (pairs of bins merge exactly), so percentile
and MSE ranges come from one pass without storing activations.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MinMaxObserver(nn.Module):
    """Running min and max of every value seen."""

    def __init__(self) -> None:
        super().__init__()
        self.lo = math.inf
        self.hi = -math.inf
        self.batches = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self.batches += 1
        return x

    def range(self) -> tuple[float, float]:
        if self.batches == 0:
            raise RuntimeError("observer saw no data: the calibration set never reached this tensor")
        return self.lo, self.hi


class HistogramObserver(MinMaxObserver):
    """Histogram over [-R, R]; R doubles (merging bin pairs) whenever a batch exceeds it."""

    def __init__(self, bins: int = 2048) -> None:
        super().__init__()
        if bins % 4:
            raise ValueError("bins must be a multiple of 4 so range doubling merges bins exactly")
        self.bins = bins
        self.radius = 0.0
        self.hist = torch.zeros(bins, dtype=torch.float64)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        super().forward(x)
        peak = max(abs(self.lo), abs(self.hi), 1e-12)
        if self.radius == 0.0:
            self.radius = peak
        while peak > self.radius:
            merged = self.hist.view(-1, 2).sum(1)
            self.hist.zero_()
            self.hist[self.bins // 4: 3 * self.bins // 4] = merged
            self.radius *= 2
        self.hist += torch.histc(x.detach().float(), self.bins, -self.radius, self.radius).double()
        return x

    def centers(self) -> torch.Tensor:
        width = 2 * self.radius / self.bins
        return -self.radius + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)

    def percentile_range(self, percentile: float) -> tuple[float, float]:
        """Clip both tails at `percentile` (e.g. 99.99 keeps the central 99.98% of values)."""
        cdf = torch.cumsum(self.hist, 0) / self.hist.sum()
        tail = 1.0 - percentile / 100.0
        width = 2 * self.radius / self.bins
        lo_bin = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=torch.float64)))
        hi_bin = int(torch.searchsorted(cdf, torch.tensor(1.0 - tail, dtype=torch.float64)))
        lo = max(self.lo, -self.radius + lo_bin * width)
        hi = min(self.hi, -self.radius + (hi_bin + 1) * width)
        return lo, hi

    def quant_errors(self, lo: torch.Tensor, hi: torch.Tensor, levels: int, symmetric: bool) -> torch.Tensor:
        """Expected squared error of quantizing the histogram on each candidate grid (lo[i], hi[i])."""
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        if symmetric:
            bound = torch.maximum(-lo, hi)
            step = bound / max(levels // 2 - 1, 1)
            lo = -bound
        else:
            step = (hi - lo) / (levels - 1)
        step = step.clamp_min(1e-12)[:, None]
        c = self.centers()[None, :]
        q = torch.clamp(torch.round((c - lo[:, None]) / step), 0, levels - 1) * step + lo[:, None]
        width = 2 * self.radius / self.bins
        return (self.hist[None, :] * ((c - q) ** 2 + width**2 / 12)).sum(1) / self.hist.sum()

    def mse_range(self, levels: int, symmetric: bool, rounds: int = 2) -> tuple[float, float]:
        """The clip range with the least expected error, shrinking each end in turn.

        Coordinate descent over fractions of the observed min and max (0.3..1.0): the two ends
        interact only through the step size, so two alternating 1-D searches find the same
        minimum as the full grid at a fraction of its cost.
        """
        fractions = torch.linspace(0.3, 1.0, 36, dtype=torch.float64)
        lo, hi = torch.tensor([self.lo], dtype=torch.float64), torch.tensor([self.hi], dtype=torch.float64)
        for _ in range(rounds):
            his = self.hi * fractions
            hi = his[int(torch.argmin(self.quant_errors(lo.expand_as(his), his, levels, symmetric)))].reshape(1)
            los = self.lo * fractions
            lo = los[int(torch.argmin(self.quant_errors(los, hi.expand_as(los), levels, symmetric)))].reshape(1)
        return float(lo), float(hi)


def _with_zero(lo: float, hi: float) -> tuple[float, float]:
    """Ranges always contain 0 so zero (padding, ReLU output) is exact."""
    return min(lo, 0.0), max(hi, 0.0)


def affine_qparams(lo: float, hi: float, dtype: torch.dtype,
                   within: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for a [lo, hi] range: asymmetric for uint8, symmetric for int8.

    `within` (a clamp's range) keeps the grid's top inside the clamp after float32 rounding: a
    runtime drops the clamp only when scale·(qmax − zero point) ≤ its upper bound exactly.
    """
    lo, hi = _with_zero(lo, hi)
    info = torch.iinfo(dtype)
    if dtype == torch.int8:
        scale = max(-lo, hi) / info.max
        zero_point = 0
    else:
        scale = (hi - lo) / (info.max - info.min)
        zero_point = info.min - round(lo / scale) if scale > 0 else 0
    zero_point = min(max(zero_point, info.min), info.max)
    s = torch.tensor(max(scale, 1e-12), dtype=torch.float32)
    if within is not None and math.isfinite(within[1]):
        top = float(info.max - zero_point)
        while float(s * top) > within[1]:
            s = torch.nextafter(s, torch.zeros_like(s))
    return s, torch.tensor(zero_point, dtype=dtype)


def symmetric_weight_qparams(w: torch.Tensor, axis: int, qmax: int, mse: bool = False) -> torch.Tensor:
    """Per-channel symmetric scales; with `mse`, shrink each channel's range to its least error."""
    dims = [d for d in range(w.dim()) if d != axis]
    absmax = w.abs().amax(dim=dims).clamp_min(1e-12)
    if not mse:
        return absmax / qmax
    shape = [1] * w.dim()
    shape[axis] = -1
    best = absmax / qmax
    best_err = torch.full_like(absmax, math.inf)
    for frac in torch.linspace(0.5, 1.0, 26).tolist():
        s = (absmax * frac / qmax).reshape(shape)
        err = ((torch.clamp(torch.round(w / s), -qmax, qmax) * s - w) ** 2).mean(dim=dims)
        better = err < best_err
        best = torch.where(better, s.reshape(-1), best)
        best_err = torch.where(better, err, best_err)
    return best
