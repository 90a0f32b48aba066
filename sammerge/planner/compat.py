"""Compatibility, measured: a group of tasks merged (the best of a set of methods, each at its best validation λ)
and each task's loss in points against its own fine-tuned model, on the test split.

For a group G and variant v: for every method m, λ_m = the best shared λ on the explorer's validation images of
G's tasks (``sweep_shared_lambda``, the method's λ grid); the method with the best validation mean wins; its test
accuracy per task, and loss_t = 100 · (individual_t − merged_t) points. A single task is its own model (loss 0).

Measurements are jobs of the job graph (:mod:`sammerge.jobs`): one job for each variant's individual accuracies,
one per group (depending on it), run here or on Ray. Each writes one JSON file, so a result is cached by group and
found again by any later plan that needs the same group::

    ZOO/analysis/planner/individual/{key}.json   test accuracy of every task's own model (one variant)
    ZOO/analysis/planner/groups/{key}.json       one group's GroupResult
    ZOO/analysis/planner/.jobs/{id}.json         the jobs' records

``key`` is a sha256 over the zoo's checkpoint hashes, the variant, the methods, the group and both evaluations.
"""
from __future__ import annotations

import itertools
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from sammerge.cache import analysis_dir, cache_key
from sammerge.evaluation.protocol import individual_results
from sammerge.evaluation.search import sweep_shared_lambda
from sammerge.evaluation.subset import EXPLORER_SUBSET, EvalSubset
from sammerge.io import atomic_write_text
from sammerge.jobs import Job, Resources, run_graph
from sammerge.merging import get_method, task_id, variant_statistics
from sammerge.progress import Progress

__all__ = ["GroupResult", "measure_groups", "pairs", "all_subsets", "planner_dir", "DEFAULT_METHODS", "TEST"]

DEFAULT_METHODS = ("task_arithmetic", "tsv_m")
TEST = EvalSubset("test", None, 0)  # every test image
_ZOOS: dict[str, object] = {}


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

    @classmethod
    def from_dict(cls, d: dict) -> "GroupResult":
        return cls(tuple(d["tasks"]), d["method"], d["lam"], d["val_mean"], d["merged"], d["individual"],
                   d["loss_points"])


def pairs(tasks: Sequence[str]) -> list[tuple[str, ...]]:
    return [tuple(p) for p in itertools.combinations(tasks, 2)]


def all_subsets(tasks: Sequence[str], max_size: int | None = None) -> list[tuple[str, ...]]:
    """Every subset of ≥ 2 tasks (up to ``max_size``), in zoo order."""
    hi = len(tasks) if max_size is None else max_size
    return [tuple(c) for k in range(2, hi + 1) for c in itertools.combinations(tasks, k)]


def planner_dir(zoo) -> Path:
    return analysis_dir(zoo) / "planner"


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


# -- the jobs ------------------------------------------------------------------------------------------------
def _job_zoo(ctx):
    """The zoo of a planner job (ROOT = ZOO/analysis/planner), opened once per process."""
    from sammerge.zoo import open_zoo
    path = str(ctx.root.parent.parent.resolve())
    if path not in _ZOOS:
        _ZOOS.clear()
        _ZOOS[path] = open_zoo(path)
    return _ZOOS[path]


def job_individual(ctx, inp: dict) -> dict:
    """Test accuracy of every task's own model on ``variant``."""
    zoo = _job_zoo(ctx)
    res = individual_results(TEST.evaluator(zoo), zoo, {t: inp["variant"] for t in zoo.tasks})
    atomic_write_text(ctx.path(inp["output"]), json.dumps({t: r.accuracy for t, r in res.items()}))
    return {"tasks": len(res)}


def job_group(ctx, inp: dict) -> dict:
    """One group measured (:func:`_measure`), written as its GroupResult."""
    zoo = _job_zoo(ctx)
    individual = json.loads((ctx.root / inp["individual"]).read_text(encoding="utf-8"))
    res = _measure(zoo, inp["variant"], tuple(inp["group"]), inp["methods"], EvalSubset(**inp["val"]), individual)
    atomic_write_text(ctx.path(inp["output"]), json.dumps(asdict(res)))
    ctx.progress(1, 1, f"planner: {inp['variant']} {'+'.join(res.tasks)}")
    return {"worst_loss": res.worst_loss, "method": res.method}


def planner_jobs(zoo, variant: str, groups: Sequence[tuple[str, ...]], methods: Sequence[str],
                 val_subset: EvalSubset = EXPLORER_SUBSET, threads: int | None = None) -> tuple[Job, dict]:
    """The individual-accuracy job of ``variant`` and group → its job (each depends on the first)."""
    val, test = val_subset.as_dict(), TEST.as_dict()
    key = cache_key(zoo, "planner_individual", {"variant": variant, "test": test})[:24]
    ind = Job("planner_individual", f"planner: {variant} individual models", job_individual,
              {"variant": variant, "test": test, "output": f"individual/{key}.json"},
              outputs=(f"individual/{key}.json",), threads=threads, resources=Resources(num_cpus=threads or 1))
    jobs = {}
    for g in groups:
        gkey = cache_key(zoo, "planner_group", {"variant": variant, "methods": list(methods), "group": list(g),
                                                "val": val, "test": test})[:24]
        jobs[g] = Job("planner_group", f"planner: {variant} {'+'.join(g)}", job_group,
                      {"variant": variant, "methods": list(methods), "group": list(g), "val": val, "test": test,
                       "individual": ind.inputs["output"], "output": f"groups/{gkey}.json"},
                      outputs=(f"groups/{gkey}.json",), reads=(ind.inputs["output"],), deps=(ind.id,),
                      threads=threads, resources=Resources(num_cpus=threads or 1))
    return ind, jobs


def measure_groups(zoo, variant: str, groups: Sequence[Sequence[str]], methods: Sequence[str] = DEFAULT_METHODS,
                   val_subset: EvalSubset = EXPLORER_SUBSET, progress: Progress | None = None,
                   use_cache: bool = True, cancel_event: threading.Event | None = None, backend: str = "local",
                   address: str | None = None) -> dict[tuple[str, ...], GroupResult]:
    """Every group (plus each single task) measured as the module doc says, on ``backend`` ("local": this thread;
    "ray": a Ray cluster at ``address``). Groups measured before are read from the cache (``use_cache=False``:
    measured again). ``cancel_event`` set: stops before the next group (:class:`~sammerge.jobs.JobCancelled`)."""
    groups = list(dict.fromkeys(tuple(sorted(g, key=zoo.tasks.index)) for g in groups))
    root = planner_dir(zoo)
    ind, jobs = planner_jobs(zoo, variant, groups, methods, val_subset)
    if not use_cache:
        for job in (ind, *jobs.values()):
            for rel in (*job.outputs, f".jobs/{job.id}.json"):
                (root / rel).unlink(missing_ok=True)
    run_graph([ind, *jobs.values()], root, backend, progress, address, cancel_event)
    individual = json.loads((root / ind.inputs["output"]).read_text(encoding="utf-8"))
    results = {(t,): GroupResult((t,), None, None, None, {t: individual[t]}, {t: individual[t]}, {t: 0.0})
               for t in zoo.tasks}
    for g, job in jobs.items():
        results[g] = GroupResult.from_dict(json.loads((root / job.outputs[0]).read_text(encoding="utf-8")))
    return results
