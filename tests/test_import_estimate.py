"""Wilson score intervals against hand computations (and the textbook example)."""
from __future__ import annotations

import math

import pytest

from sammerge.evaluation.estimate import result_intervals, wilson_interval
from sammerge.evaluation.evaluator import TaskResult


def test_wilson_by_hand():
    # k = 7 of n = 10 at 95 %: z = 1.959964; z² = 3.841459
    z2 = 1.959963984540054 ** 2
    centre = (0.7 + z2 / 20) / (1 + z2 / 10)
    half = 1.959963984540054 / (1 + z2 / 10) * math.sqrt(0.7 * 0.3 / 10 + z2 / 400)
    iv = wilson_interval(7, 10)
    assert (iv.low, iv.high) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (iv.low, iv.high) == pytest.approx((0.3968, 0.8922), abs=5e-5)  # the value to 4 digits


def test_wilson_edges_and_errors():
    zero, full = wilson_interval(0, 8), wilson_interval(8, 8)
    assert zero.low == 0.0 and zero.high == pytest.approx(3.841459 / (8 + 3.841459), abs=1e-6)  # z²/(n+z²)
    assert full.high == 1.0 and full.low == pytest.approx(1 - zero.high, abs=1e-12)
    narrow = wilson_interval(90, 100, 0.5)
    assert narrow.half_width < wilson_interval(90, 100, 0.99).half_width
    for args in ((1, 0), (5, 4), (1, 4, 1.0)):
        with pytest.raises(ValueError):
            wilson_interval(*args)


def test_result_intervals_pool_counts():
    result = {"a": TaskResult(accuracy=0.75, loss=0.1, n=8), "b": TaskResult(accuracy=0.25, loss=0.2, n=8)}
    iv = result_intervals(result)
    assert iv["a"] == wilson_interval(6, 8) and iv["b"] == wilson_interval(2, 8)
    assert iv["mean"] == wilson_interval(8, 16) and iv["mean"].estimate == 0.5
