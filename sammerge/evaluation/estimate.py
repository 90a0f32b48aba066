"""Accuracy estimates from small image subsets, with Wilson score confidence intervals.

For k correct out of n and z the two-sided normal quantile of ``confidence`` (1.96 for 95 %), p̂ = k / n::

    centre = (p̂ + z²/(2n)) / (1 + z²/n)
    half   = z / (1 + z²/n) · sqrt(p̂(1 − p̂)/n + z²/(4n²))
    interval = [centre − half, centre + half]  (clipped to [0, 1])

Unlike p̂ ± z·sqrt(p̂(1 − p̂)/n) it stays inside [0, 1] and is not empty at p̂ = 0 or 1, which matters for the
8–64-image estimates a CPU can afford while a slider moves. The mean over tasks uses the pooled counts
(Σ k_t / Σ n_t), which is the mean accuracy when every task has the same n (Evaluator subsets do).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping


@dataclass(frozen=True)
class Interval:
    estimate: float  # k / n
    low: float
    high: float
    n: int
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.estimate:.1%} [{self.low:.1%}, {self.high:.1%}] (n = {self.n}, {self.confidence:.0%} CI)"


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a binomial proportion ``correct / n`` (formula in the module docstring)."""
    if n <= 0:
        raise ValueError(f"wilson_interval: n must be ≥ 1, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"wilson_interval: correct must be in [0, {n}], got {correct}")
    if not 0 < confidence < 1:
        raise ValueError(f"wilson_interval: confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, confidence)


def result_intervals(result: Mapping, confidence: float = 0.95) -> dict[str, Interval]:
    """Per-task Wilson intervals of an ``Evaluator`` result ({task: TaskResult}) and ``"mean"`` (pooled counts)."""
    out = {}
    correct_total = n_total = 0
    for task, r in result.items():
        correct = int(round(r.accuracy * r.n))
        out[task] = wilson_interval(correct, r.n, confidence)
        correct_total += correct
        n_total += r.n
    out["mean"] = wilson_interval(correct_total, n_total, confidence)
    return out
