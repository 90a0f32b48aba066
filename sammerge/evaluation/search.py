"""Coefficient search on validation, reported on test.

Protocols (named in every output):
- "best shared λ (val)": one λ for all tasks, chosen on the validation split from LAMBDA_GRID
  (0..1 step 0.05) by mean accuracy; test accuracy reported at that λ.
- "best per-task λ (val)": coordinate ascent on one λ_t per task, started at the best shared λ.
Normalized accuracy of task t = acc_merged(t) / acc_finetuned(t) (the individual fine-tuned model).

Every method in the registry whose result is θ0 + λ·τ_merged(other params) is swept by merging once
at λ = 1 and scaling: θ(λ) = θ0 + λ (θ(1) − θ0). Methods without λ are a single point.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator, TaskResult
from sammerge.merging import get_method

StateDict = dict[str, torch.Tensor]
LAMBDA_GRID: list[float] = [round(0.05 * i, 2) for i in range(21)]
SHARED_PROTOCOL = "best shared λ on validation (grid 0..1 step 0.05, mean accuracy); test accuracy at that λ"
PER_TASK_PROTOCOL = "best per-task λ on validation (coordinate ascent from the best shared λ); test accuracy there"
ProgressFn = Callable[[int, int], None]


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
        return None if self.test is None else statistics.mean(r.accuracy for r in self.test.values())


def has_lambda(method_name: str) -> bool:
    return any(p.name == "lambda" for p in get_method(method_name).params)


def merged_direction(method_name: str, pretrained: Mapping[str, torch.Tensor],
                     task_vectors: Sequence[Mapping[str, torch.Tensor]], params: Mapping | None = None,
                     task_ids: Sequence[str] | None = None) -> StateDict:
    """τ_merged = merge(θ0, τ; λ=1, params) − θ0, so that merge(λ) = θ0 + λ τ_merged."""
    method = get_method(method_name)
    params = {k: v for k, v in dict(params or {}).items() if k != "lambda"}
    if has_lambda(method_name):
        params["lambda"] = 1.0
    merged = method(pretrained, list(task_vectors), task_ids=task_ids, **params)
    return {k: merged[k] - pretrained[k] for k in pretrained}


def scaled(pretrained: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor], lam: float) -> StateDict:
    return {k: pretrained[k] + lam * direction[k] if pretrained[k].is_floating_point() else pretrained[k]
            for k in pretrained}


def sweep_shared_lambda(val_evaluator: Evaluator, method_name: str, pretrained: Mapping[str, torch.Tensor],
                        task_vectors: Sequence[Mapping[str, torch.Tensor]], params: Mapping | None = None,
                        lambdas: Sequence[float] = LAMBDA_GRID, test_evaluator: Evaluator | None = None,
                        task_ids: Sequence[str] | None = None) -> SweepResult:
    """Evaluate merge(λ) for every λ on validation (batched); pick the best mean accuracy (ties → smaller λ)."""
    if not lambdas:
        raise ConfigError("λ sweep: empty grid")
    if not has_lambda(method_name):
        merged = get_method(method_name)(pretrained, list(task_vectors), task_ids=task_ids,
                                         **{k: v for k, v in dict(params or {}).items() if k != "lambda"})
        result = val_evaluator.evaluate(merged)
        mean = val_evaluator.mean_accuracy(result)
        return SweepResult(SHARED_PROTOCOL + " (method has no λ: one point)", method_name, [], [mean],
                           [{t: r.accuracy for t, r in result.items()}], None, mean,
                           test_evaluator.evaluate(merged) if test_evaluator else None, 1)
    direction = merged_direction(method_name, pretrained, task_vectors, params, task_ids)
    candidates = [scaled(pretrained, direction, lam) for lam in lambdas]
    results = val_evaluator.evaluate_many(candidates)
    means = [val_evaluator.mean_accuracy(r) for r in results]
    best = max(range(len(lambdas)), key=lambda i: (round(means[i], 12), -i))
    test = test_evaluator.evaluate(candidates[best]) if test_evaluator else None
    return SweepResult(SHARED_PROTOCOL, method_name, list(lambdas), means,
                       [{t: r.accuracy for t, r in res.items()} for res in results], float(lambdas[best]),
                       means[best], test, len(lambdas))


def coarse_to_fine_lambda(val_evaluator_factory: Callable[[int], Evaluator], method_name: str,
                          pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                          params: Mapping | None = None, coarse_step: float = 0.1, fine_step: float = 0.05,
                          sizes: tuple[int, int] = (32, 128), task_ids: Sequence[str] | None = None) -> tuple[float, int]:
    """Cheap λ search: a coarse grid (step 0.1) on small subsets, then the fine grid points next to the
    best (±0.05) on larger, nested subsets.

    ``val_evaluator_factory(n)`` gives an evaluator on n images per task (nested subsets). Returns
    (λ, number of image-forwards used).
    """
    direction = merged_direction(method_name, pretrained, task_vectors, params, task_ids)
    n_coarse = int(round(1 / coarse_step))
    coarse = [round(coarse_step * i, 4) for i in range(n_coarse + 1)]
    small = val_evaluator_factory(sizes[0])
    means = [small.mean_accuracy(r) for r in small.evaluate_many([scaled(pretrained, direction, l) for l in coarse])]
    best = coarse[max(range(len(coarse)), key=lambda i: (means[i], -i))]
    work = len(coarse) * small.images.shape[0]
    fine = sorted({round(min(1.0, max(0.0, best + fine_step * k)), 4) for k in range(-1, 2)})
    medium = val_evaluator_factory(sizes[1])
    means = [medium.mean_accuracy(r) for r in medium.evaluate_many([scaled(pretrained, direction, l) for l in fine])]
    work += len(fine) * medium.images.shape[0]
    return fine[max(range(len(fine)), key=lambda i: (means[i], -i))], work


@dataclass
class PerTaskResult:
    protocol: str
    method: str
    lambdas: dict[str, float]
    val_mean: float
    start_lambda: float
    test: dict[str, TaskResult] | None = None
    n_evaluations: int = 0
    history: list[float] = field(default_factory=list)


def search_per_task_lambdas(val_evaluator: Evaluator, method_name: str, pretrained: Mapping[str, torch.Tensor],
                            task_vectors: Mapping[str, Mapping[str, torch.Tensor]], params: Mapping | None = None,
                            deltas: Sequence[float] = (-0.1, -0.05, 0.05, 0.1), rounds: int = 2,
                            bounds: tuple[float, float] = (0.0, 1.5), test_evaluator: Evaluator | None = None,
                            progress: ProgressFn | None = None) -> PerTaskResult:
    """Coordinate ascent over per-task λ_t (the method's per-task ``weights``, with λ = 1)."""
    method = get_method(method_name)
    if not any(p.name == "weights" for p in method.params):
        raise ConfigError(f"merge method '{method_name}' has no per-task weights to search")
    tasks = list(task_vectors)
    tvs = [task_vectors[t] for t in tasks]
    shared = sweep_shared_lambda(val_evaluator, method_name, pretrained, tvs, params, task_ids=tasks)
    lam = {t: shared.best_lambda for t in tasks}
    base = {k: v for k, v in dict(params or {}).items() if k not in ("lambda", "weights")}
    if has_lambda(method_name):
        base["lambda"] = 1.0

    def merge_with(weights: dict[str, float]) -> StateDict:
        return method(pretrained, tvs, task_ids=tasks, validate=False, weights=[weights[t] for t in tasks], **base)

    current = val_evaluator.mean_accuracy(val_evaluator.evaluate(merge_with(lam)))
    history, n_eval = [current], shared.n_evaluations + 1
    total = rounds * len(tasks)
    for r in range(rounds):
        improved = False
        for i, task in enumerate(tasks):
            trials = []
            for d in deltas:
                value = round(min(bounds[1], max(bounds[0], lam[task] + d)), 4)
                if value != lam[task]:
                    trials.append({**lam, task: value})
            results = val_evaluator.evaluate_many([merge_with(w) for w in trials])
            n_eval += len(trials)
            scores = [val_evaluator.mean_accuracy(res) for res in results]
            if scores and max(scores) > current + 1e-12:
                j = max(range(len(scores)), key=lambda k: scores[k])
                lam, current, improved = trials[j], scores[j], True
            history.append(current)
            if progress:
                progress(r * len(tasks) + i + 1, total)
        if not improved:
            break
    test = test_evaluator.evaluate(merge_with(lam)) if test_evaluator else None
    return PerTaskResult(PER_TASK_PROTOCOL, method_name, lam, current, shared.best_lambda, test, n_eval, history)


DEFAULT_TABLE_METHODS = ("weight_average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs")


def paper_table(zoo, methods: Sequence[str] = DEFAULT_TABLE_METHODS, variants: Sequence[str] | None = None,
                n_val: int | None = None, n_test: int | None = None, progress: ProgressFn | None = None,
                method_params: Mapping[str, Mapping] | None = None):
    """The paper's table: rows (variant, method) at the best shared λ on val; test accuracy per task,
    mean absolute and mean normalized accuracy. Also rows for the pretrained and individual models."""
    import pandas as pd

    variants = list(variants or zoo.variants)
    val = Evaluator.from_zoo(zoo, split="val", n_per_task=n_val)
    test = Evaluator.from_zoo(zoo, split="test", n_per_task=n_test)
    theta0 = zoo.pretrained()
    rows = []
    pre = test.evaluate(theta0)
    total = len(variants) * (len(methods) + 1)
    done = 0
    for variant in variants:
        individual = {t: test.evaluate(zoo.finetuned(t, variant))[t].accuracy for t in zoo.tasks}
        rows.append(_row(variant, "pretrained (zero-shot heads)", None, {t: pre[t].accuracy for t in zoo.tasks},
                         individual))
        rows.append(_row(variant, "individual fine-tuned", None, individual, individual))
        done += 1
        if progress:
            progress(done, total)
        tvs = [zoo.task_vector(t, variant) for t in zoo.tasks]
        for name in methods:
            params = dict((method_params or {}).get(name, {}))
            # DARE masks are seeded by "task/variant", as in MergeConfig.task_ids and the explorer
            sweep = sweep_shared_lambda(val, name, theta0, tvs, params, test_evaluator=test,
                                        task_ids=[f"{t}/{variant}" for t in zoo.tasks])
            rows.append(_row(variant, get_method(name).label, sweep.best_lambda,
                             {t: r.accuracy for t, r in sweep.test.items()}, individual, method=name,
                             val_mean=sweep.best_val_mean))
            done += 1
            if progress:
                progress(done, total)
    frame = pd.DataFrame(rows)
    frame.attrs["protocol"] = SHARED_PROTOCOL
    frame.attrs["n_val"] = val.images.shape[0] // max(1, len(zoo.tasks))
    frame.attrs["n_test"] = test.images.shape[0] // max(1, len(zoo.tasks))
    return frame


def _row(variant: str, label: str, lam: float | None, per_task: Mapping[str, float],
         individual: Mapping[str, float], method: str | None = None, val_mean: float | None = None) -> dict:
    row = {"variant": variant, "method": label, "method_id": method, "best λ": lam}
    row.update({t: acc for t, acc in per_task.items()})
    row["mean"] = statistics.mean(per_task.values())
    row["normalized"] = statistics.mean(per_task[t] / individual[t] if individual[t] > 0 else 0.0 for t in per_task)
    row["val mean"] = val_mean
    return row
