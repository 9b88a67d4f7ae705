"""Means with 95% intervals over independent runs (seeds).

A figure measured once on one machine moves with the seed and with the CPU's kernel path;
what a reader can rely on is the mean over several seeds and the interval around it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30 (any statistics
# table); past 30 the normal quantile 1.96 is within 2% of t.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError(f"need at least one degree of freedom, got {df}")
    return _T_975[df - 1] if df <= len(_T_975) else 1.96


@dataclass(frozen=True)
class Interval:
    """``mean ± half_width``: the t-interval of the mean of ``n`` independent values."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci95": [self.low, self.high], "half_width": self.half_width, "n": self.n}


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean and 95% t-interval: ``mean ± t_{0.975, n-1} · s / sqrt(n)``.

    ``mean_interval([1.0, 2.0, 3.0])``: mean 2, s = 1, t_{0.975, 2} = 4.303, so the
    half-width is 4.303 / sqrt(3) = 2.484.

    With one value the half-width is 0 and the interval says nothing (``n`` tells).
    """
    n, mean, s = _moments(values)
    if n == 1:
        return Interval(mean, 0.0, 1)
    return Interval(mean, t_quantile_975(n - 1) * s / math.sqrt(n), n)


def rerun_interval(values: Sequence[float], rerun_size: int) -> Interval:
    """Where the mean of a new run of ``rerun_size`` seeds lands, at 95%: a prediction interval.

    ``mean ± t_{0.975, n-1} · s · sqrt(1/n + 1/m)`` for ``n`` pooled values and a rerun of
    ``m``: the rerun's mean moves by ``s / sqrt(m)`` on its own, and the pooled mean it is
    compared with by ``s / sqrt(n)``. This, not the interval of the mean, is the range a
    reader's rerun (another machine, another kernel path) is expected to fall in.

    ``rerun_interval([1.0, 2.0, 3.0], 3)``: s = 1, so 4.303 · sqrt(2/3) = 3.513.
    """
    if len(values) < 2:
        raise ValueError(f"a prediction interval needs at least two values, got {len(values)}")
    if rerun_size < 1:
        raise ValueError(f"a rerun has at least one seed, got {rerun_size}")
    n, mean, s = _moments(values)
    return Interval(mean, t_quantile_975(n - 1) * s * math.sqrt(1 / n + 1 / rerun_size), n)


def _moments(values: Sequence[float]) -> tuple[int, float, float]:
    """``(n, mean, sample standard deviation)``; the deviation is 0 for one value."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("need at least one value")
    mean = sum(values) / n
    return n, mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
