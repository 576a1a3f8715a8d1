"""Low-bit quantizers for ViT PTQ (RepQ-ViT, DopQ-ViT, APHQ-ViT; methods.md §1.3, §1.4, §1.6, §3).

Each quantizer is a small frozen parameter set with a float simulation (`fake`) used for
calibration and accuracy, plus the integer codes (`codes`) that an export or an integer kernel
consumes. They work on whole tensors (the calibration set of a layer), not streams.

- `UniformQuantizer`: asymmetric uniform, per tensor (`axis=None`) or per channel. Ranges from
  min-max, RepQ-ViT's percentile search (candidates {0.999, 0.9999, 0.99999}, the one with the
  smallest MSE wins), or OMSE (the clipping range minimising ‖x − Q(x)‖² over a grid of shrink
  factors of the min-max range).
- `Log2Quantizer` / `LogSqrt2Quantizer`: post-softmax values in [0, 1] on powers of 2 or √2 below a
  scale s. Codes past the last level flush to zero (RepQ-ViT). `LogSqrt2Quantizer.log2_form`
  splits a log√2 code into a shift and a parity, the exact integer inference form of §1.6.
- `TanQuantizer`: DopQ-ViT's TanQ. The paper's formula is not public (methods.md §3), so this is
  OUR design: compand with f(x) = ½(1 + tan(θ(2x − 1))/tan θ) on [0, 1], quantize uniformly in
  the companded domain, map back with f⁻¹. f is steepest at both ends, so levels are dense near
  0 (the many small attention weights) and near 1 (the few dominant ones); θ → 0 is the uniform
  grid and θ → π/2 pushes levels toward both ends. θ is searched by the error of the attention
  output softmax·V, not of the softmax itself (`search_tan_theta`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Self

import torch

PERCENTILES = (0.999, 0.9999, 0.99999)
KTHVALUE_LIMIT = 1 << 24  # torch.quantile refuses inputs above ~16M elements; kthvalue has no limit


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile of a (rows, n) tensor with linear interpolation, for any n."""
    n = x.shape[-1]
    if n <= KTHVALUE_LIMIT:
        return torch.quantile(x, q, dim=-1)
    pos = q * (n - 1)
    lo, frac = math.floor(pos), pos - math.floor(pos)
    a = x.kthvalue(lo + 1, dim=-1).values
    b = x.kthvalue(min(lo + 2, n), dim=-1).values
    return a + frac * (b - a)


def _rows(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(channels, values) view: one row per channel along `axis`, or a single row."""
    return x.reshape(1, -1) if axis is None else x.movedim(axis, 0).reshape(x.shape[axis], -1)


def uniform_codes(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale) + zero_point, 0, qmax)


def fake_uniform(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int) -> torch.Tensor:
    """Uniform quantize-dequantize as a plain function of tensors, so a graph node can call it."""
    return (uniform_codes(x, scale, zero_point, qmax) - zero_point) * scale


def log_codes(a: torch.Tensor, scale: torch.Tensor | float, bits: int,
              base_log2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(code, alive) of a ≈ scale·2^(−code·base_log2); alive is False where the value flushes to zero."""
    t = torch.round(-torch.log2(a / scale) / base_log2)
    return t.clamp(0, 2**bits - 1), t < 2**bits


def fake_log(a: torch.Tensor, scale: torch.Tensor | float, bits: int, base_log2: float) -> torch.Tensor:
    """Log2 (base_log2 1) or log√2 (½) quantize-dequantize, graph-callable like `fake_uniform`."""
    q, alive = log_codes(a, scale, bits, base_log2)
    return torch.where(alive, scale * torch.exp2(-q * base_log2), torch.zeros_like(a))


def log_sqrt2_as_log2(a: torch.Tensor, scale: torch.Tensor | float, bits: int) -> torch.Tensor:
    """The log√2 quantizer in its inference form (§1.6): a power-of-2 shift k = ⌈q/2⌉ and one √2
    factor on odd codes. Same codes as `fake_log(…, ½)`; values agree to the last bit or one ulp."""
    q, alive = log_codes(a, scale, bits, 0.5)
    k = torch.ceil(q / 2)
    odd = q - 2 * torch.floor(q / 2)  # q mod 2 in plain arithmetic, which every exporter lowers
    return torch.where(alive, scale * torch.exp2(-k) * (1 + (math.sqrt(2) - 1) * odd), torch.zeros_like(a))


def fake_tan(a: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Nearest of the sorted `levels` (TanQ's), by counting the midpoints below each value: no
    bucketize, so it exports to ONNX as a compare, a sum and a gather."""
    mids = (levels[1:] + levels[:-1]) / 2
    return levels[(a.clamp(0, 1).unsqueeze(-1) > mids).sum(-1)]


@dataclass(frozen=True)
class UniformQuantizer:
    bits: int
    scale: torch.Tensor  # one per channel along `axis`, or a scalar
    zero_point: torch.Tensor  # integer-valued float, same shape as scale
    axis: int | None = None

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1

    def _shape(self, x: torch.Tensor) -> list[int]:
        shape = [1] * x.dim()
        if self.axis is not None:
            shape[self.axis] = -1
        return shape

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        return uniform_codes(x, self.scale.reshape(self._shape(x)), self.zero_point.reshape(self._shape(x)), self.qmax)

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        return fake_uniform(x, self.scale.reshape(self._shape(x)), self.zero_point.reshape(self._shape(x)), self.qmax)

    @classmethod
    def from_range(cls, lo: torch.Tensor, hi: torch.Tensor, bits: int, axis: int | None) -> UniformQuantizer:
        scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-8)
        if axis is None:  # one row: a scalar quantizer
            scale, lo = scale.reshape(()), lo.reshape(())
        return cls(bits, scale, torch.round(-lo / scale), axis)

    @classmethod
    def minmax(cls, x: torch.Tensor, bits: int, axis: int | None = None) -> UniformQuantizer:
        rows = _rows(x, axis)
        return cls.from_range(rows.min(-1).values, rows.max(-1).values, bits, axis)

    @classmethod
    def percentile(cls, x: torch.Tensor, bits: int, axis: int | None = None,
                   candidates: Sequence[float] = PERCENTILES) -> UniformQuantizer:
        """RepQ-ViT §1.3: per channel, the percentile pair whose quantization MSE is smallest."""
        rows = _rows(x, axis).float()
        ranges = [(quantile(rows, 1 - p), quantile(rows, p)) for p in candidates]
        return cls._best(rows, ranges, bits, axis)

    @classmethod
    def omse(cls, x: torch.Tensor, bits: int, axis: int | None = None, steps: int = 50) -> UniformQuantizer:
        """OMSE: the min-max range shrunk by the factor in (0, 1] that minimises the per-channel MSE."""
        rows = _rows(x, axis).float()
        lo, hi = rows.min(-1).values, rows.max(-1).values
        ranges = [(lo * (1 - k / steps * 0.8), hi * (1 - k / steps * 0.8)) for k in range(steps)]
        return cls._best(rows, ranges, bits, axis)

    @classmethod
    def _best(cls, rows: torch.Tensor, ranges: list[tuple[torch.Tensor, torch.Tensor]], bits: int,
              axis: int | None) -> UniformQuantizer:
        best_err, best_lo, best_hi = None, None, None
        for lo, hi in ranges:
            q = cls.from_range(lo, hi, bits, 0)
            err = (q.fake(rows) - rows).pow(2).mean(-1)
            if best_err is None:
                best_err, best_lo, best_hi = err, lo.clone(), hi.clone()
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return cls.from_range(best_lo, best_hi, bits, axis)


@dataclass(frozen=True)
class Log2Quantizer:
    """A ≈ s·2^(−q), q = clamp(round(−log2(A/s)), 0, 2^b − 1); codes past the last level give 0."""

    bits: int
    scale: float
    base_log2: float = 1.0  # log2 of the level ratio: 1 for powers of 2, ½ for powers of √2

    def codes(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return log_codes(a, self.scale, self.bits, self.base_log2)

    def fake(self, a: torch.Tensor) -> torch.Tensor:
        return fake_log(a, self.scale, self.bits, self.base_log2)

    @classmethod
    def calibrate(cls, a: torch.Tensor, bits: int, candidates: Sequence[float] = PERCENTILES) -> Self:
        """RepQ-ViT §1.4: the scale among the candidate quantiles with the smallest MSE."""
        flat = a.reshape(1, -1).float()
        fits = [cls(bits, float(quantile(flat, p))) for p in candidates]
        return min(fits, key=lambda q: float((q.fake(a) - a).pow(2).mean()))


@dataclass(frozen=True)
class LogSqrt2Quantizer(Log2Quantizer):
    """Levels s·2^(−q/2) (RepQ-ViT's post-softmax quantizer, §1.4)."""

    base_log2: float = 0.5

    def log2_form(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(k, odd, alive) with the value s·2^(−k)·(√2 if odd else 1): a shift plus one constant (§1.6)."""
        q, alive = self.codes(a)
        return torch.ceil(q / 2), q.remainder(2) == 1, alive


@dataclass(frozen=True)
class TanQuantizer:
    """Our TanQ (see the module docstring): uniform levels in the tan-companded domain of [0, 1]."""

    bits: int
    theta: float  # in (0, π/2); near 0 = uniform

    def compand(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1 + torch.tan(self.theta * (2 * x - 1)) / math.tan(self.theta))

    def expand(self, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1 + torch.atan((2 * y - 1) * math.tan(self.theta)) / self.theta)

    def levels(self) -> torch.Tensor:
        n = 2**self.bits - 1
        return self.expand(torch.arange(n + 1, dtype=torch.float64) / n)

    def fake(self, a: torch.Tensor) -> torch.Tensor:
        """The nearest level (nearest in value, not in the companded domain)."""
        return fake_tan(a, self.levels().to(a.dtype))


def attention_output_error(fake: Callable[[torch.Tensor], torch.Tensor], attn: torch.Tensor,
                           v: torch.Tensor) -> float:
    """MSE of softmax·V when the softmax output is replaced by its quantized version."""
    return float((fake(attn) @ v - attn @ v).pow(2).mean())


def search_tan_theta(attn: torch.Tensor, v: torch.Tensor, bits: int,
                     thetas: Sequence[float] = tuple(k * 0.05 for k in range(1, 31))) -> TanQuantizer:
    """θ ∈ (0, 1.5] minimising the attention-output error on calibration attention maps and values."""
    return min((TanQuantizer(bits, t) for t in thetas), key=lambda q: attention_output_error(q.fake, attn, v))
