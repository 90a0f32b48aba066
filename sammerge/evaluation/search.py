"""Coefficient search on validation, reported on test.

Protocols (named in every output):
- "best shared λ (val)": one λ for all tasks, chosen on the validation split from the *method's own* λ grid
  (``MergeMethod.lambda_grid()``: 0..1 step 0.05 for task arithmetic, 0..2.5 step 0.1 for TIES' disjoint mean)
  by mean accuracy, ties → smaller λ; test accuracy reported at that λ.

A method whose result is θ0 + λ·τ_merged(other params) is swept by merging once at λ = 1 and scaling:
θ(λ) = θ0 + λ τ_merged. Methods without λ are a single point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator, TaskResult, mean_accuracy
from sammerge.merging import LAMBDA, get_method
from sammerge.merging.registry import scaled_direction

StateDict = dict[str, torch.Tensor]
SHARED_PROTOCOL = "best shared λ on validation (the method's λ grid, mean accuracy); test accuracy at that λ"


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
