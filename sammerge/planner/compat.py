"""Compatibility, measured: a group of tasks merged (the best of a set of methods, each at its best validation λ)
and each task's loss in points against its own fine-tuned model, on the test split.

For a group G and variant v: for every method m, λ_m = the best shared λ on the explorer's validation images of
G's tasks (``sweep_shared_lambda``, the method's λ grid); the method with the best validation mean wins; its test
accuracy per task, and loss_t = 100 · (individual_t − merged_t) points. A single task is its own model (loss 0).
Results are cached with the zoo (``ZOO/analysis/cache/planner_groups-*.json``), keyed by the checkpoints, variant,
methods, groups and the evaluation settings.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Sequence

from sammerge.cache import cached
from sammerge.evaluation.protocol import individual_results
from sammerge.evaluation.search import sweep_shared_lambda
from sammerge.evaluation.subset import EXPLORER_SUBSET, EvalSubset
from sammerge.jobs.runner import JobCancelled
from sammerge.merging import get_method, task_id, variant_statistics
from sammerge.progress import Progress

__all__ = ["GroupResult", "measure_groups", "pairs", "all_subsets", "DEFAULT_METHODS"]

DEFAULT_METHODS = ("task_arithmetic", "tsv_m")
TEST = EvalSubset("test", None, 0)  # every test image


@dataclass(frozen=True)
class GroupResult:
    tasks: tuple[str, ...]
    method: str | None            # None for a single task (its own fine-tuned model)
    lam: float | None
    val_mean: float | None
    merged: dict[str, float]      # test accuracy per task
    individual: dict[str, float]  # each task's own fine-tuned model, same test images
    loss_points: dict[str, float]

    @property
    def worst_loss(self) -> float:
        return max(self.loss_points.values())


def pairs(tasks: Sequence[str]) -> list[tuple[str, ...]]:
    return [tuple(p) for p in itertools.combinations(tasks, 2)]


def all_subsets(tasks: Sequence[str], max_size: int | None = None) -> list[tuple[str, ...]]:
    """Every subset of ≥ 2 tasks (up to ``max_size``), in zoo order."""
    hi = len(tasks) if max_size is None else max_size
    return [tuple(c) for k in range(2, hi + 1) for c in itertools.combinations(tasks, k)]


def _measure(zoo, variant: str, group: tuple[str, ...], methods: Sequence[str], val_subset: EvalSubset,
             individual: dict[str, float]) -> GroupResult:
    val = val_subset.evaluator(zoo, tasks=list(group))
    test = TEST.evaluator(zoo, tasks=list(group))
    theta0, tvs = zoo.pretrained(), [zoo.task_vector(t, variant) for t in group]
    best = None
    for name in methods:
        if not get_method(name).accepts_tasks(len(group)):
            continue
        sweep = sweep_shared_lambda(val, name, theta0, tvs, test_evaluator=test,
                                    task_ids=[task_id(t, variant) for t in group],
                                    statistics=variant_statistics(zoo, name, list(group), variant))
        if best is None or sweep.best_val_mean > best[1].best_val_mean + 1e-12:
            best = (name, sweep)
    name, sweep = best
    merged = {t: sweep.test[t].accuracy for t in group}
    return GroupResult(group, name, sweep.best_lambda, sweep.best_val_mean, merged,
                       {t: individual[t] for t in group},
                       {t: 100 * (individual[t] - merged[t]) for t in group})


def measure_groups(zoo, variant: str, groups: Sequence[Sequence[str]], methods: Sequence[str] = DEFAULT_METHODS,
                   val_subset: EvalSubset = EXPLORER_SUBSET, progress: Progress | None = None,
                   use_cache: bool = True, should_stop=None) -> dict[tuple[str, ...], GroupResult]:
    """Every group (plus each single task) measured as the module doc says; cached with the zoo (written only when
    every group is done). ``should_stop()`` is asked before each group: True raises ``JobCancelled``."""
    groups = [tuple(sorted(g, key=zoo.tasks.index)) for g in groups]
    inputs = {"variant": variant, "methods": list(methods), "groups": [list(g) for g in groups],
              "val": val_subset.as_dict(), "test": TEST.as_dict()}

    def compute() -> dict:
        ind = individual_results(TEST.evaluator(zoo), zoo, {t: variant for t in zoo.tasks})
        individual = {t: r.accuracy for t, r in ind.items()}
        out = {}
        for i, g in enumerate(groups):
            if should_stop is not None and should_stop():
                raise JobCancelled(f"planner: cancelled after {i} of {len(groups)} groups ({variant})")
            if progress:
                progress(i, len(groups), f"planner: {variant} {'+'.join(g)}")
            out["+".join(g)] = asdict(_measure(zoo, variant, g, methods, val_subset, individual))
        out["_individual"] = individual
        return out

    data = cached(zoo, "planner_groups", inputs, compute, use_cache=use_cache, threads=None)
    individual = data["_individual"]
    results = {(t,): GroupResult((t,), None, None, None, {t: individual[t]}, {t: individual[t]}, {t: 0.0})
               for t in zoo.tasks}
    for key, r in data.items():
        if key != "_individual":
            results[tuple(r["tasks"])] = GroupResult(tuple(r["tasks"]), r["method"], r["lam"], r["val_mean"],
                                                     r["merged"], r["individual"], r["loss_points"])
    return results
