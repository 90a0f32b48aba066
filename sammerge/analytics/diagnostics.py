"""Regime diagnostics: does a zoo live where task arithmetic can work? (cheap; cached in ``ZOO/analysis/cache``)

For each fine-tuning variant, on one fixed evaluation subset (``n_per_task`` images of ``split`` per task):

- ‖τ_t‖ / ‖θ0‖ (floating encoder parameters) and the mean pairwise cosine of the task vectors;
- the task-arithmetic curve acc(θ0 + λ Σ_t τ_t) on a λ grid, its best λ (on these images), and the accuracy at
  λ = 1/T, 0.3, 0.5;
- gap closed = (merged − pretrained) / (individual − pretrained) (means over tasks; NaN when individual = pretrained);
- per task t, the own-gain curve acc_t(θ0 + α τ_t) and the damage curve acc_t(θ0 + β Σ_{s≠t} τ_s).

A linearized zoo is evaluated linearized (``Evaluator.from_zoo``). Everything is a plain JSON-able dict.
"""
from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

import torch

from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator, mean_accuracy
from sammerge.merging.task_vector import float_keys, linear_combination
from sammerge.progress import Progress

StateDict = Mapping[str, torch.Tensor]

DEFAULT_LAMBDAS = tuple(round(0.05 * i, 2) for i in range(21))
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
MARKS = ("1/T", "0.3", "0.5")


def _flat(sd: StateDict, keys: Sequence[str]) -> torch.Tensor:
    return torch.cat([sd[k].detach().double().reshape(-1) for k in keys])


def vector_stats(theta0: StateDict, task_vectors: Mapping[str, StateDict]) -> dict:
    """‖τ_t‖/‖θ0‖ per task and mean; cosine matrix of the task vectors and its mean off-diagonal entry."""
    keys = float_keys(theta0)
    base_norm = float(_flat(theta0, keys).norm())
    tasks = list(task_vectors)
    flats = [_flat(task_vectors[t], keys) for t in tasks]
    norms = [float(f.norm()) for f in flats]
    cos = [[float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan for b, nb in zip(flats, norms)]
           for a, na in zip(flats, norms)]
    pairs = [cos[i][j] for i in range(len(tasks)) for j in range(i + 1, len(tasks))]
    rel = {t: n / base_norm if base_norm > 0 else math.nan for t, n in zip(tasks, norms)}
    return {"rel_norm": rel, "mean_rel_norm": statistics.mean(rel.values()), "theta0_norm": base_norm,
            "cosine": {"tasks": tasks, "matrix": cos},
            "mean_pairwise_cosine": statistics.mean(pairs) if pairs else math.nan}


def gap_closed(merged: float, pretrained: float, individual: float) -> float:
    """(merged − pretrained) / (individual − pretrained); NaN when fine-tuning gained nothing."""
    return (merged - pretrained) / (individual - pretrained) if individual != pretrained else math.nan


def _acc(evaluator: Evaluator, params: StateDict) -> dict[str, float]:
    return {t: r.accuracy for t, r in evaluator.evaluate(params).items()}


def merge_curve(evaluator: Evaluator, theta0: StateDict, task_vectors: Mapping[str, StateDict],
                lambdas: Sequence[float] = DEFAULT_LAMBDAS) -> dict:
    """acc(θ0 + λ Σ_t τ_t) per task and mean on the λ grid and at λ = 1/T, 0.3, 0.5; best λ (ties → smaller)."""
    tasks = list(task_vectors)
    tvs = [task_vectors[t] for t in tasks]
    marks = {"1/T": 1.0 / len(tasks), "0.3": 0.3, "0.5": 0.5}
    grid = list(lambdas)
    per_task = {t: [] for t in tasks}
    means = []
    for lam in grid:
        acc = _acc(evaluator, linear_combination(theta0, tvs, [lam] * len(tvs), validate=False))
        for t in tasks:
            per_task[t].append(acc[t])
        means.append(statistics.mean(acc[t] for t in tasks))
    best = max(range(len(grid)), key=lambda i: (round(means[i], 12), -i))
    at = {}
    for name, lam in marks.items():
        acc = _acc(evaluator, linear_combination(theta0, tvs, [lam] * len(tvs), validate=False))
        at[name] = {"lambda": lam, "mean": statistics.mean(acc[t] for t in tasks), "per_task": acc}
    return {"lambdas": grid, "mean": means, "per_task": per_task, "best_lambda": grid[best],
            "best_mean": means[best], "best_per_task": {t: per_task[t][best] for t in tasks}, "at": at}


def own_and_damage(evaluators: Mapping[str, Evaluator], theta0: StateDict, task_vectors: Mapping[str, StateDict],
                   alphas: Sequence[float] = DEFAULT_ALPHAS) -> dict:
    """Per task t (its own evaluator): own gain acc_t(θ0 + α τ_t) and damage acc_t(θ0 + α Σ_{s≠t} τ_s)."""
    tasks = list(task_vectors)
    own, damage = {}, {}
    for t in tasks:
        ev = evaluators[t]
        others = [task_vectors[s] for s in tasks if s != t]
        own[t] = [_acc(ev, linear_combination(theta0, [task_vectors[t]], [a], validate=False))[t] for a in alphas]
        damage[t] = ([_acc(ev, linear_combination(theta0, others, [a] * len(others), validate=False))[t]
                      for a in alphas] if others else [own[t][0]] * len(alphas))
    return {"alphas": list(alphas), "own": own, "damage": damage}


def _at(values: Sequence[float], alphas: Sequence[float], a: float) -> float:
    """Linear interpolation of a curve sampled at ``alphas``."""
    for (a0, v0), (a1, v1) in zip(zip(alphas, values), zip(alphas[1:], values[1:])):
        if a0 <= a <= a1:
            return v0 + (v1 - v0) * (a - a0) / (a1 - a0) if a1 > a0 else v0
    raise ConfigError(f"α = {a} outside the sampled range [{alphas[0]}, {alphas[-1]}]")


def variant_diagnostics(evaluator: Evaluator, task_evaluators: Mapping[str, Evaluator], theta0: StateDict,
                        task_vectors: Mapping[str, StateDict], lambdas: Sequence[float] = DEFAULT_LAMBDAS,
                        alphas: Sequence[float] = DEFAULT_ALPHAS) -> dict:
    """Every diagnostic of one set of task vectors (one variant) on ``evaluator``'s images."""
    tasks = list(task_vectors)
    pre = _acc(evaluator, theta0)
    indiv = {t: _acc(task_evaluators[t], linear_combination(theta0, [task_vectors[t]], [1.0], validate=False))[t]
             for t in tasks}
    pre_mean, ind_mean = statistics.mean(pre[t] for t in tasks), statistics.mean(indiv.values())
    curve = merge_curve(evaluator, theta0, task_vectors, lambdas)
    curves = own_and_damage(task_evaluators, theta0, task_vectors, alphas)
    gap = {name: gap_closed(point["mean"], pre_mean, ind_mean) for name, point in curve["at"].items()}
    summary = {
        "pretrained": pre_mean, "individual": ind_mean, "best_lambda": curve["best_lambda"],
        "merged_best": curve["best_mean"], "gap_closed_best": gap_closed(curve["best_mean"], pre_mean, ind_mean),
        "normalized_best": statistics.mean(curve["best_per_task"][t] / indiv[t] if indiv[t] > 0 else math.nan
                                           for t in tasks),
        **{f"merged_at_{k}": curve["at"][k]["mean"] for k in MARKS},
        **{f"gap_closed_at_{k}": gap[k] for k in MARKS},
        # own gain at α = 0.3 as a share of the full gain; damage to a task from 0.3 · Σ of the others (points)
        "own_share_at_0.3": statistics.mean(
            (_at(curves["own"][t], alphas, 0.3) - pre[t]) / (indiv[t] - pre[t]) if indiv[t] != pre[t] else math.nan
            for t in tasks) if min(alphas) <= 0.3 <= max(alphas) else math.nan,
        "damage_at_0.3": statistics.mean(_at(curves["damage"][t], alphas, 0.3) - pre[t] for t in tasks)
        if min(alphas) <= 0.3 <= max(alphas) else math.nan,
    }
    return {"summary": summary, "pretrained_per_task": pre, "individual_per_task": indiv,
            "vectors": vector_stats(theta0, task_vectors), "merge_curve": curve, "curves": curves}


def default_settings(quick: bool = False) -> dict:
    s = {"split": "val", "n_per_task": 256, "seed": 0, "lambdas": list(DEFAULT_LAMBDAS), "alphas": list(DEFAULT_ALPHAS)}
    if quick:
        s.update(n_per_task=64, lambdas=[0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0], alphas=[0.0, 0.3, 0.6, 1.0])
    return s


def diagnose_zoo(zoo, variants: Sequence[str] | None = None, settings: Mapping | None = None, device: str = "auto",
                 use_cache: bool = True, progress: Progress | None = None, cached_only: bool = False) -> dict | None:
    """Diagnostics of every (or the given) variant of a zoo, cached under ``ZOO/analysis/cache/diagnostics-*``
    (``cached_only``: None instead of computing when not cached)."""
    from sammerge.cache import cached

    s = {**default_settings(), **dict(settings or {})}
    unknown = [k for k in s if k not in default_settings()]
    if unknown:
        raise ConfigError(f"diagnostics: unknown setting(s) {', '.join(map(repr, unknown))}")
    variants = list(variants or zoo.variants)
    bad = [v for v in variants if v not in zoo.variants]
    if bad:
        raise ConfigError(f"unknown variant(s) {', '.join(map(repr, bad))} (zoo has: {', '.join(zoo.variants)})")

    def compute() -> dict:
        ev = Evaluator.from_zoo(zoo, split=s["split"], n_per_task=s["n_per_task"], seed=s["seed"], device=device)
        per_task = {t: Evaluator.from_zoo(zoo, split=s["split"], n_per_task=s["n_per_task"], seed=s["seed"],
                                          tasks=[t], device=device) for t in zoo.tasks}
        theta0 = zoo.pretrained()
        out = {}
        for i, v in enumerate(variants):
            if progress:
                progress(i, len(variants), f"diagnostics ({v})")
            tvs = {t: zoo.task_vector(t, v) for t in zoo.tasks}
            out[v] = variant_diagnostics(ev, per_task, theta0, tvs, s["lambdas"], s["alphas"])
        if progress:
            progress(len(variants), len(variants), "diagnostics")
        linearized = zoo.manifest.linearized
        return {"settings": s, "tasks": zoo.tasks, "linearized": linearized, "variants": out}

    return cached(zoo, "diagnostics", {"settings": s, "variants": variants}, compute, use_cache=use_cache,
                  cached_only=cached_only)
