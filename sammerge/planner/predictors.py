"""Can compatibility be predicted from the weights alone? Cheap signals of every pair of task vectors against the
measured pairwise loss: Spearman's rank correlation and a permutation p-value, reported whatever they say.

Signals of a pair (i, j): the task-vector cosine cos(τ_i, τ_j); the sign-conflict rate (entries non-zero in both
with opposite signs); ‖τ_i‖ + ‖τ_j‖; λ_max(θ_i) + λ_max(θ_j), the top Hessian eigenvalue of each fine-tuned model's
loss (Lanczos, 20 iterations, on 256 validation images of its task, seed 0; not for linearized zoos); and the weight
disentanglement error ξ̄ = the mean of ξ(α_i, α_j) over α ∈ {0, 0.25, …, 1}² (128 validation images per task, seed 0;
:func:`~sammerge.analytics.interference.disentanglement_error`). The last two cost forward passes and are cached
with the zoo. Target: the pair's mean loss in points (both tasks, vs their own models).
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
from sammerge.cache import cached
from sammerge.planner.compat import GroupResult
from sammerge.progress import Progress

__all__ = ["pair_signals", "spearman", "permutation_p", "predictor_table", "lambda_max", "SIGNALS"]

SIGNALS = ("cosine", "sign conflict", "‖τ_i‖ + ‖τ_j‖", "λ_max_i + λ_max_j", "disentanglement ξ̄")
LAMBDA_MAX = {"n_images": 256, "split": "val", "seed": 0, "iters": 20, "tol": 1e-2, "method": "lanczos"}
XI = {"lo": 0.0, "hi": 1.0, "n": 5, "n_per_task": 128, "seed": 0, "split": "val"}


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


def lambda_max(zoo, task: str, variant: str) -> float:
    """Top Hessian eigenvalue of the fine-tuned model's loss (settings ``LAMBDA_MAX``), cached with the zoo."""
    from sammerge.analytics.sharpness import fixed_batch, parameter_keys, task_loss_fn, top_eigenvalues

    def compute() -> dict:
        encoder = zoo.create_encoder()
        for p in encoder.parameters():
            p.requires_grad_(False)
        b = fixed_batch(zoo, task, LAMBDA_MAX["n_images"], LAMBDA_MAX["seed"], LAMBDA_MAX["split"])
        eig = top_eigenvalues(task_loss_fn(encoder, zoo.heads[task], b.images, b.labels), zoo.finetuned(task, variant),
                              k=1, iters=LAMBDA_MAX["iters"], tol=LAMBDA_MAX["tol"], seed=LAMBDA_MAX["seed"],
                              method=LAMBDA_MAX["method"], keys=parameter_keys(encoder))
        return {"lambda_max": eig.eigenvalues[0]}

    return cached(zoo, "planner_lambda_max", {"task": task, "variant": variant, **LAMBDA_MAX}, compute)["lambda_max"]


def pair_signals(zoo, variant: str, progress: Progress | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """pair → signal → value, for every pair of the zoo's tasks (see the module doc)."""
    from sammerge.analytics.report import disentanglement_for

    tvs = {t: zoo.task_vector(t, variant) for t in zoo.tasks}
    names, cos = cosine_matrix(tvs)
    _, conflict = sign_conflict_matrix(tvs)
    norms = {t: math.sqrt(sum(float(v.double().square().sum()) for v in tv.values() if v.is_floating_point()))
             for t, tv in tvs.items()}
    lam = {} if zoo.manifest.linearized else {t: lambda_max(zoo, t, variant) for t in zoo.tasks}
    out = {}
    combos = list(itertools.combinations(range(len(names)), 2))
    for k, (a, b) in enumerate(combos):
        if progress:
            progress(k, len(combos), f"planner: signals of {names[a]}+{names[b]} ({variant})")
        xi = disentanglement_for(zoo, names[a], names[b], variant, **XI)
        out[(names[a], names[b])] = {"cosine": float(cos[a, b]), "sign conflict": float(conflict[a, b]),
                                     "‖τ_i‖ + ‖τ_j‖": norms[names[a]] + norms[names[b]],
                                     "λ_max_i + λ_max_j": lam[names[a]] + lam[names[b]] if lam else None,
                                     "disentanglement ξ̄": xi.mean}
    return out


def predictor_table(zoo, variant: str, results: Mapping[tuple, GroupResult], progress: Progress | None = None) -> dict:
    """{"pairs": [...], "signals": {name: {"rho", "p", "n"}}} for the measured pairs of ``variant`` (a signal the
    zoo cannot give, λ_max of a linearized zoo, is left out)."""
    signals = pair_signals(zoo, variant, progress)
    pairs = [p for p in signals if p in results]
    target = [sum(results[p].loss_points.values()) / 2 for p in pairs]
    table = {}
    for name in SIGNALS:
        x = [signals[p][name] for p in pairs]
        if pairs and all(v is not None for v in x):
            rho, pval = spearman(x, target), permutation_p(x, target)
            table[name] = {"rho": None if math.isnan(rho) else rho, "p": None if math.isnan(pval) else pval,
                           "n": len(pairs)}  # None: a constant side (no ranking to compare)
    return {"pairs": [{"tasks": list(p), "loss": t, **signals[p]} for p, t in zip(pairs, target)], "signals": table}
