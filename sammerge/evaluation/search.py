"""Coefficient search on validation, reported on test.

Protocols (named in every output):
- "best shared λ (val)": one λ for all tasks, chosen on the validation split from the *method's own* λ grid
  (``MergeMethod.lambda_grid()``: 0..1 step 0.05 for task arithmetic, 0..2.5 step 0.1 for TIES' disjoint mean)
  by mean accuracy, ties → smaller λ; test accuracy reported at that λ.
- "best per-task λ (val)": coordinate ascent on per-task weights w_t (effective λ_t = λ·w_t), started from the
  best shared λ with w_t = 1, accepting only improvements — so it is never worse on validation than the shared λ.

A method whose result is θ0 + λ·τ_merged(other params) is swept by merging once at λ = 1 and scaling:
θ(λ) = θ0 + λ τ_merged. Methods without λ are a single point.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator, TaskResult, mean_accuracy
from sammerge.merging import LAMBDA, WEIGHTS, get_method
from sammerge.merging.registry import scaled_direction
from sammerge.progress import Progress

StateDict = dict[str, torch.Tensor]
SHARED_PROTOCOL = "best shared λ on validation (the method's λ grid, mean accuracy); test accuracy at that λ"
PER_TASK_PROTOCOL = ("best per-task λ on validation (coordinate ascent on per-task weights from the best shared λ); "
                     "test accuracy there")


def lambda_grid(method_name: str) -> list[float]:
    """The method's declared λ grid ([] for methods without λ)."""
    return get_method(method_name).lambda_grid()


def has_lambda(method_name: str) -> bool:
    return any(p.name == LAMBDA for p in get_method(method_name).params)


@dataclass
class SweepResult:
    protocol: str
    method: str
    lambdas: list[float]
    val_mean: list[float]
    val_per_task: list[dict[str, float]]
    best_lambda: float | None
    best_val_mean: float
    test: dict[str, TaskResult] | None = None
    n_evaluations: int = 0

    @property
    def test_mean(self) -> float | None:
        return None if self.test is None else mean_accuracy(self.test)


def merged_direction(method_name: str, pretrained: Mapping[str, torch.Tensor],
                     task_vectors: Sequence[Mapping[str, torch.Tensor]], params: Mapping | None = None,
                     task_ids: Sequence[str] | None = None, statistics=None) -> StateDict:
    """τ_merged with merge(λ) = θ0 + λ τ_merged (the method declares λ a final scale: ``MergeMethod.direction``)."""
    return get_method(method_name).direction(pretrained, list(task_vectors), task_ids=task_ids,
                                             statistics=statistics, **dict(params or {}))


def scaled(pretrained: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor], lam: float) -> StateDict:
    """θ0 + λ τ_merged (the registry's own arithmetic: equal, bit for bit, to the method called with λ)."""
    return scaled_direction(pretrained, direction, lam)


def sweep_shared_lambda(val_evaluator: Evaluator, method_name: str, pretrained: Mapping[str, torch.Tensor],
                        task_vectors: Sequence[Mapping[str, torch.Tensor]], params: Mapping | None = None,
                        lambdas: Sequence[float] | None = None, test_evaluator: Evaluator | None = None,
                        task_ids: Sequence[str] | None = None, statistics=None) -> SweepResult:
    """Evaluate merge(λ) for every λ of the grid (default: the method's) on validation; best mean, ties → smaller λ.
    ``statistics``: one mapping per task for methods that read data (``sammerge.merging.statistics``)."""
    if not get_method(method_name).is_static:
        raise ConfigError(f"merge method '{method_name}' is task-routed (one model per task): it has no shared-λ "
                          "sweep; its numbers are in the paper table (`sammerge table`)")
    if not has_lambda(method_name):
        merged = get_method(method_name)(pretrained, list(task_vectors), task_ids=task_ids, statistics=statistics,
                                         **{k: v for k, v in dict(params or {}).items() if k != LAMBDA})
        result = val_evaluator.evaluate(merged)
        mean = mean_accuracy(result)
        return SweepResult(SHARED_PROTOCOL + " (method has no λ: one point)", method_name, [], [mean],
                           [{t: r.accuracy for t, r in result.items()}], None, mean,
                           test_evaluator.evaluate(merged) if test_evaluator else None, 1)
    lambdas = list(lambda_grid(method_name) if lambdas is None else lambdas)
    if not lambdas:
        raise ConfigError("λ sweep: empty grid")
    method = get_method(method_name)
    if method.lambda_is_scale:
        direction = merged_direction(method_name, pretrained, task_vectors, params, task_ids, statistics)
        candidates = [scaled(pretrained, direction, lam) for lam in lambdas]
    else:  # λ inside the method: one merge per λ
        rest = {k: v for k, v in dict(params or {}).items() if k != LAMBDA}
        candidates = [method(pretrained, list(task_vectors), task_ids=task_ids, statistics=statistics, **rest,
                             **{LAMBDA: lam})
                      for lam in lambdas]
    results = val_evaluator.evaluate_many(candidates)
    means = [mean_accuracy(r) for r in results]
    best = max(range(len(lambdas)), key=lambda i: (round(means[i], 12), -i))
    test = test_evaluator.evaluate(candidates[best]) if test_evaluator else None
    return SweepResult(SHARED_PROTOCOL, method_name, lambdas, means,
                       [{t: r.accuracy for t, r in res.items()} for res in results], float(lambdas[best]),
                       means[best], test, len(lambdas))


def coarse_to_fine_lambda(val_evaluator_factory: Callable[[int], Evaluator], method_name: str,
                          pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                          params: Mapping | None = None, coarse_step: float = 0.1, fine_step: float = 0.05,
                          sizes: tuple[int, int] = (32, 128), task_ids: Sequence[str] | None = None,
                          statistics=None) -> tuple[float, int]:
    """Cheap λ search over the method's λ range: a coarse grid on small subsets, then the fine points next to
    the best (± fine_step) on larger, nested subsets.

    ``val_evaluator_factory(n)`` gives an evaluator on n images per task (nested subsets). Returns
    (λ, number of image-forwards used).
    """
    lo, hi, _ = get_method(method_name).lambda_range or (0.0, 1.0, fine_step)
    direction = merged_direction(method_name, pretrained, task_vectors, params, task_ids, statistics)
    n_coarse = int(round((hi - lo) / coarse_step))
    coarse = [round(lo + coarse_step * i, 4) for i in range(n_coarse + 1)]
    small = val_evaluator_factory(sizes[0])
    means = [mean_accuracy(r) for r in small.evaluate_many([scaled(pretrained, direction, lam) for lam in coarse])]
    best = coarse[max(range(len(coarse)), key=lambda i: (means[i], -i))]
    work = len(coarse) * small.images.shape[0]
    fine = sorted({round(min(hi, max(lo, best + fine_step * k)), 4) for k in range(-1, 2)})
    medium = val_evaluator_factory(sizes[1])
    means = [mean_accuracy(r) for r in medium.evaluate_many([scaled(pretrained, direction, lam) for lam in fine])]
    work += len(fine) * medium.images.shape[0]
    return fine[max(range(len(fine)), key=lambda i: (means[i], -i))], work


@dataclass
class PerTaskResult:
    protocol: str
    method: str
    weights: dict[str, float]          # per-task weight w_t at the optimum
    shared_lambda: float | None        # the global λ the search ran at (best shared λ; None without λ)
    val_mean: float
    start_val_mean: float              # validation mean at the start point (the best shared λ)
    test: dict[str, TaskResult] | None = None
    n_evaluations: int = 0
    history: list[float] = field(default_factory=list)

    @property
    def lambdas(self) -> dict[str, float]:
        """Effective per-task coefficient λ·w_t (w_t where the method has no λ)."""
        lam = 1.0 if self.shared_lambda is None else self.shared_lambda
        return {t: round(lam * w, 6) for t, w in self.weights.items()}


def search_per_task_lambdas(val_evaluator: Evaluator, method_name: str, pretrained: Mapping[str, torch.Tensor],
                            task_vectors: Mapping[str, Mapping[str, torch.Tensor]], params: Mapping | None = None,
                            deltas: Sequence[float] = (-0.5, -0.25, 0.25, 0.5), rounds: int = 2,
                            bounds: tuple[float, float] = (0.0, 3.0), test_evaluator: Evaluator | None = None,
                            progress: Progress | None = None) -> PerTaskResult:
    """Coordinate ascent over per-task weights w_t at the best shared λ (start: w_t = 1, i.e. exactly the shared merge).

    Each round tries w_t + δ for every task (δ in ``deltas``, clipped to ``bounds``) and keeps the best strict
    improvement of validation mean accuracy; stops after ``rounds`` or when nothing improves.
    """
    method = get_method(method_name)
    if not any(p.name == WEIGHTS for p in method.params):
        raise ConfigError(f"merge method '{method_name}' has no per-task weights to search")
    tasks = list(task_vectors)
    tvs = [task_vectors[t] for t in tasks]
    base = {k: v for k, v in dict(params or {}).items() if k not in (LAMBDA, WEIGHTS)}
    shared = sweep_shared_lambda(val_evaluator, method_name, pretrained, tvs, base, task_ids=tasks)
    if shared.best_lambda is not None:
        base[LAMBDA] = shared.best_lambda

    def merge_with(weights: dict[str, float]) -> StateDict:
        return method(pretrained, tvs, task_ids=tasks, validate=False, weights=[weights[t] for t in tasks], **base)

    w = {t: 1.0 for t in tasks}
    current = mean_accuracy(val_evaluator.evaluate(merge_with(w)))
    start = current
    history, n_eval = [current], shared.n_evaluations + 1
    total = rounds * len(tasks)
    for r in range(rounds):
        improved = False
        for i, task in enumerate(tasks):
            trials = []
            for d in deltas:
                value = round(min(bounds[1], max(bounds[0], w[task] + d)), 4)
                if value != w[task]:
                    trials.append({**w, task: value})
            results = val_evaluator.evaluate_many([merge_with(trial) for trial in trials]) if trials else []
            n_eval += len(trials)
            scores = [mean_accuracy(res) for res in results]
            if scores and max(scores) > current + 1e-12:
                j = max(range(len(scores)), key=lambda k: scores[k])
                w, current, improved = trials[j], scores[j], True
            history.append(current)
            if progress:
                progress(r * len(tasks) + i + 1, total, "per-task λ search")
        if not improved:
            break
    test = test_evaluator.evaluate(merge_with(w)) if test_evaluator else None
    return PerTaskResult(PER_TASK_PROTOCOL, method_name, w, shared.best_lambda, current, start, test, n_eval, history)
