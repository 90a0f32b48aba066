"""The evaluation protocol: one normalized accuracy, one summary, merge-spec evaluation, the paper table.

Normalized accuracy of task t = acc_merged(t) / acc_individual(t), both measured by the *same evaluator* (same
split, same images), where the individual model is the fine-tuned checkpoint the merge uses for t. It is NaN
(shown as "—") when the individual model scores 0 on those images: undefined, never silently 0.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from sammerge.evaluation.evaluator import Evaluator, TaskResult
from sammerge.evaluation.search import SHARED_PROTOCOL, sweep_shared_lambda
from sammerge.merging.statistics import zoo_table_methods
from sammerge.merging import MergeSpec, get_method, resolve_and_merge, task_id, variant_statistics
from sammerge.errors import ConfigError
from sammerge.progress import Progress

__all__ = ["normalized_accuracy", "Summary", "summarize", "individual_results", "evaluate_spec", "evaluate_routed", "results_table",
           "paper_table", "adamerging_table", "ADAMERGING_PROTOCOL"]


def normalized_accuracy(merged: float, individual: float) -> float:
    """acc_merged / acc_individual on the same images; NaN when the individual accuracy is 0."""
    return merged / individual if individual > 0 else math.nan


@dataclass(frozen=True)
class Summary:
    """Means over the merged tasks: absolute accuracy, normalized accuracy, loss."""
    mean: float
    normalized: float
    mean_loss: float
    per_task_normalized: dict[str, float]

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "normalized": self.normalized, "mean_loss": self.mean_loss}


def summarize(result: Mapping[str, TaskResult], individual: Mapping[str, TaskResult | float],
              tasks: Sequence[str] | None = None) -> Summary:
    """Summary of ``result`` over ``tasks`` (default: all), normalized by ``individual`` (same images)."""
    tasks = list(tasks if tasks is not None else result)
    ind = {t: (v.accuracy if isinstance(v, TaskResult) else float(v)) for t, v in individual.items()}
    norm = {t: normalized_accuracy(result[t].accuracy, ind[t]) for t in tasks}
    return Summary(mean=statistics.mean(result[t].accuracy for t in tasks),
                   normalized=statistics.mean(norm.values()),
                   mean_loss=statistics.mean(result[t].loss for t in tasks), per_task_normalized=norm)


def individual_results(evaluator: Evaluator, zoo, variants: Mapping[str, str]) -> dict[str, TaskResult]:
    """task → result of the task's own fine-tuned checkpoint (``variants[task]``) on ``evaluator``'s images."""
    tasks = [t for t in evaluator.tasks if t in variants]
    results = evaluator.evaluate_many([zoo.finetuned(t, variants[t]) for t in tasks])
    return {t: res[t] for t, res in zip(tasks, results)}


def evaluate_routed(zoo, models: Mapping[str, Mapping[str, torch.Tensor]], split: str = "test",
                    n_per_task: int | None = None, evaluators: dict | None = None, seed: int = 0,
                    precision: str = "fp32") -> dict[str, TaskResult]:
    """A task-routed merge (one model per task, e.g. EMR): each task's result from its own model, on that task's
    images only. ``evaluators``: a task → Evaluator cache to reuse across calls."""
    evaluators = {} if evaluators is None else evaluators
    out = {}
    for task, params in models.items():
        if task not in evaluators:
            evaluators[task] = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=seed, tasks=[task],
                                                  precision=precision)
        out[task] = evaluators[task].evaluate(params)[task]
    return out


def evaluate_spec(zoo, spec: MergeSpec, split: str = "val", n_per_task: int | None = 256, seed: int = 0,
                  tasks: Sequence[str] | None = None, precision: str = "fp32"):
    """Merge as ``spec`` says (files checked) and evaluate on the zoo's tasks.

    Returns (results, individual, resolved spec, merged state dict): ``individual`` holds the fine-tuned model of
    each merged task on the same images, so normalized accuracy compares like with like.
    """
    merged, resolved = resolve_and_merge(spec, originals=zoo.original_files() if hasattr(zoo, "original_files") else None,
                                         zoo=zoo)
    if not spec.spec.is_static:  # task-routed: task t is evaluated with its own model
        unknown = [t.task for t in spec.tasks if t.task not in zoo.tasks]
        if unknown:
            raise ConfigError(f"task-routed merge '{spec.method}': task '{unknown[0]}' is not in zoo '{zoo.path}'")
        results = evaluate_routed(zoo, {t.task: m for t, m in zip(spec.tasks, merged)}, split, n_per_task,
                                  seed=seed, precision=precision)
        variants = {t.task: t.variant for t in spec.tasks if t.variant in zoo.variants}
        evaluator = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=seed, tasks=list(variants),
                                       precision=precision)
        return results, individual_results(evaluator, zoo, variants), resolved, merged
    mismatch = set(zoo.pretrained()) ^ set(merged)
    if mismatch:
        raise ConfigError(f"config's checkpoints do not match zoo '{zoo.path}' (e.g. key '{sorted(mismatch)[0]}')")
    tasks = list(tasks) if tasks is not None else [t.task for t in spec.tasks if t.task in zoo.tasks] or zoo.tasks
    evaluator = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=seed,
                                   tasks=sorted(set(tasks), key=zoo.tasks.index), precision=precision)
    variants = {t.task: t.variant for t in spec.tasks if t.task in zoo.tasks and t.variant in zoo.variants}
    return evaluator.evaluate(merged), individual_results(evaluator, zoo, variants), resolved, merged


def results_table(results: Mapping[str, TaskResult], individual: Mapping[str, TaskResult] | None = None,
                  spec: MergeSpec | None = None, split: str = "val"):
    """pandas table: task, variant used, accuracy, loss, n, and normalized accuracy (same images)."""
    import pandas as pd

    variants = spec.variants if spec else {}
    rows = []
    for task, r in results.items():
        row = {"task": task, "variant": variants.get(task, "—"), "split": split, "accuracy": r.accuracy,
               "loss": r.loss, "n": r.n}
        if individual is not None and task in individual:
            row["normalized"] = normalized_accuracy(r.accuracy, individual[task].accuracy)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["mean_accuracy"] = statistics.mean(r.accuracy for r in results.values())
    return frame


ADAMERGING_PROTOCOL = ("AdaMerging: λ learned by entropy minimization on unlabeled validation images (the learner's "
                       "settings); test accuracy of the learned merge")


def paper_table(zoo, methods: Sequence[str] | None = None, variants: Sequence[str] | None = None,
                n_val: int | None = None, n_test: int | None = None, progress: Progress | None = None,
                method_params: Mapping[str, Mapping] | None = None, adamerging: Sequence[str] = (),
                adamerging_settings: Mapping | None = None):
    """The paper's table: rows (variant, method) at the best shared λ on *validation* (the method's λ grid);
    test accuracy per task, mean absolute and mean normalized accuracy (normalized by the individual models on
    the same test images). Also rows for the pretrained and the individual models, and with ``adamerging``
    (granularities, e.g. ``("task", "layer")``) AdaMerging rows (:func:`adamerging_table`); their learned specs
    are in ``frame.attrs["learned"]``. ``methods``: default every static method
    (:func:`~sammerge.merging.table_methods`; with the data methods where the zoo stores training images)."""
    import pandas as pd

    methods = list(methods if methods is not None else zoo_table_methods(zoo))
    variants = list(variants or zoo.variants)
    val = Evaluator.from_zoo(zoo, split="val", n_per_task=n_val)
    test = Evaluator.from_zoo(zoo, split="test", n_per_task=n_test)
    theta0 = zoo.pretrained()
    test_by_task: dict[str, Evaluator] = {}  # for task-routed methods
    rows = []
    pre = test.evaluate(theta0)
    total = len(variants) * (len(methods) + 1)
    done = 0
    for variant in variants:
        individual = {t: r.accuracy for t, r in individual_results(test, zoo, {t: variant for t in zoo.tasks}).items()}
        rows.append(_row(variant, "pretrained (zero-shot heads)", None, {t: pre[t].accuracy for t in zoo.tasks},
                         individual))
        rows.append(_row(variant, "individual fine-tuned", None, individual, individual))
        done += 1
        if progress:
            progress(done, total, f"paper table: {variant}")
        tvs = [zoo.task_vector(t, variant) for t in zoo.tasks]
        for name in methods:
            params = dict((method_params or {}).get(name, {}))
            if not get_method(name).is_static:  # one model per task, each evaluated on its own task
                models = get_method(name)(theta0, tvs, task_ids=[task_id(t, variant) for t in zoo.tasks], **params)
                routed = evaluate_routed(zoo, dict(zip(zoo.tasks, models)), "test", n_test, test_by_task)
                rows.append(_row(variant, get_method(name).label, None, {t: r.accuracy for t, r in routed.items()},
                                 individual, method=name))
                done += 1
                if progress:
                    progress(done, total, f"paper table: {variant} {name}")
                continue
            # DARE masks are seeded by "task/variant", as in MergeSpec.task_ids
            sweep = sweep_shared_lambda(val, name, theta0, tvs, params, test_evaluator=test,
                                        task_ids=[task_id(t, variant) for t in zoo.tasks],
                                        statistics=variant_statistics(zoo, name, zoo.tasks, variant, params))
            rows.append(_row(variant, get_method(name).label, sweep.best_lambda,
                             {t: r.accuracy for t, r in sweep.test.items()}, individual, method=name,
                             val_mean=sweep.best_val_mean))
            done += 1
            if progress:
                progress(done, total, f"paper table: {variant} {name}")
    frame = pd.DataFrame(rows)
    learned = {}
    if adamerging:
        ada = adamerging_table(zoo, adamerging, variants, test, adamerging_settings, progress)
        learned = ada.attrs["learned"]
        frame = pd.concat([frame, ada], ignore_index=True)
        frame = frame.sort_values("variant", kind="stable", key=lambda c: c.map(variants.index)).reset_index(drop=True)
    frame.attrs["protocol"] = SHARED_PROTOCOL + (f"; {ADAMERGING_PROTOCOL}" if adamerging else "")
    frame.attrs["n_val"] = val.images.shape[0] // max(1, len(zoo.tasks))
    frame.attrs["n_test"] = test.images.shape[0] // max(1, len(zoo.tasks))
    frame.attrs["learned"] = learned
    return frame


def adamerging_table(zoo, granularities: Sequence[str] = ("task", "layer"), variants: Sequence[str] | None = None,
                     test: Evaluator | int | None = None, settings: Mapping | None = None,
                     progress: Progress | None = None):
    """Paper-table rows of AdaMerging (one per variant × granularity; ``settings`` of the learner, e.g. ``base``),
    test accuracy of each learned merge (``test``: an evaluator, or images per task of the test split, None = all).
    ``frame.attrs["learned"]``: row label → the learned spec as a dict (JSON-ready)."""
    import pandas as pd

    from sammerge.evaluation.learners import get_learner
    from sammerge.merging import merge_zoo

    learner = get_learner("adamerging")
    settings = dict(settings or {})
    for g in granularities:
        learner.validate_params({**settings, "granularity": g})
    variants = list(variants or zoo.variants)
    if not isinstance(test, Evaluator):
        test = Evaluator.from_zoo(zoo, split="test", n_per_task=test)
    rows, learned = [], {}
    total, done = len(variants) * len(granularities), 0
    for variant in variants:
        individual = {t: r.accuracy for t, r in individual_results(test, zoo, {t: variant for t in zoo.tasks}).items()}
        for g in granularities:
            stage = f"AdaMerging {g}-wise, {variant}"
            inner = (lambda d, t, s="", _stage=stage: progress(done * 1000 + int(1000 * d / max(t, 1)), total * 1000,
                                                                f"{_stage}: {s}")) if progress else None
            res = learner(zoo, variant, progress=inner, **{**settings, "granularity": g})
            result = test.evaluate(merge_zoo(zoo, res.spec))
            base = res.settings["base"]
            label = f"{'TIES-' if base == 'ties' else ''}AdaMerging ({g}-wise)"
            rows.append(_row(variant, label, None, {t: r.accuracy for t, r in result.items()}, individual,
                             method=f"adamerging:{g}:{base}"))
            rows[-1]["learn s"] = res.seconds
            learned[f"{variant} · {label}"] = res.spec.to_dict()
            done += 1
            if progress:
                progress(done * 1000, total * 1000, stage)
    frame = pd.DataFrame(rows)
    frame.attrs["learned"] = learned
    frame.attrs["protocol"] = ADAMERGING_PROTOCOL
    return frame


def _row(variant: str, label: str, lam: float | None, per_task: Mapping[str, float],
         individual: Mapping[str, float], method: str | None = None, val_mean: float | None = None) -> dict:
    row = {"variant": variant, "method": label, "method_id": method, "best λ": lam}
    row.update({t: acc for t, acc in per_task.items()})
    row["mean"] = statistics.mean(per_task.values())
    row["normalized"] = statistics.mean(normalized_accuracy(per_task[t], individual[t]) for t in per_task)
    row["val mean"] = val_mean
    return row
