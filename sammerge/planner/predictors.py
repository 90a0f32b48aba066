"""Can compatibility be predicted from the weights alone? Cheap signals of every pair of task vectors against the
measured pairwise loss: Spearman's rank correlation and a permutation p-value, reported whatever they say.

Signals of a pair (i, j): the task-vector cosine cos(τ_i, τ_j), the sign-conflict rate (entries non-zero in both
with opposite signs), and ‖τ_i‖ + ‖τ_j‖. Target: the pair's mean loss in points (both tasks, vs their own models).
The p-value: the share of the ``permutations`` shuffles of the targets whose |ρ| is at least the observed |ρ|
(every permutation when there are at most 8 pairs, else a seeded sample), with the observed one counted.
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Mapping, Sequence

import numpy as np

from sammerge.analytics.interference import cosine_matrix, sign_conflict_matrix
from sammerge.planner.compat import GroupResult

__all__ = ["pair_signals", "spearman", "permutation_p", "predictor_table"]


def _ranks(x: Sequence[float]) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson correlation of the average ranks (NaN when either side is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx ** 2).sum() * (ry ** 2).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def permutation_p(x: Sequence[float], y: Sequence[float], permutations: int = 10_000, seed: int = 0) -> float:
    rho = spearman(x, y)
    if math.isnan(rho):
        return float("nan")
    ys = list(y)
    if len(ys) <= 8:
        shuffles = [list(p) for p in itertools.permutations(ys)]
    else:
        rng = random.Random(seed)
        shuffles = [rng.sample(ys, len(ys)) for _ in range(permutations)]
    hits = sum(abs(spearman(x, s)) >= abs(rho) - 1e-12 for s in shuffles)
    return (hits + (0 if len(ys) <= 8 else 1)) / (len(shuffles) + (0 if len(ys) <= 8 else 1))


def pair_signals(zoo, variant: str) -> dict[tuple[str, str], dict[str, float]]:
    tvs = {t: zoo.task_vector(t, variant) for t in zoo.tasks}
    names, cos = cosine_matrix(tvs)
    _, conflict = sign_conflict_matrix(tvs)
    norms = {t: math.sqrt(sum(float(v.double().square().sum()) for v in tv.values() if v.is_floating_point()))
             for t, tv in tvs.items()}
    out = {}
    for a, b in itertools.combinations(range(len(names)), 2):
        out[(names[a], names[b])] = {"cosine": float(cos[a, b]), "sign conflict": float(conflict[a, b]),
                                     "‖τ_i‖ + ‖τ_j‖": norms[names[a]] + norms[names[b]]}
    return out


def predictor_table(zoo, variant: str, results: Mapping[tuple, GroupResult]) -> dict:
    """{"pairs": [...], "signals": {name: {"rho", "p", "n"}}} for the measured pairs of ``variant``."""
    signals = pair_signals(zoo, variant)
    pairs = [p for p in signals if p in results]
    target = [sum(results[p].loss_points.values()) / 2 for p in pairs]
    table = {}
    for name in next(iter(signals.values())):
        x = [signals[p][name] for p in pairs]
        table[name] = {"rho": spearman(x, target), "p": permutation_p(x, target), "n": len(pairs)}
    return {"pairs": [{"tasks": list(p), "loss": t, **signals[p]} for p, t in zip(pairs, target)], "signals": table}
