"""Small end-to-end workflows shared by the CLI and the app: zoo → merge config → merged weights → scores."""
from __future__ import annotations

import statistics
from typing import Mapping, Sequence

import torch

from sammerge.merging.spec import MergeConfig, resolve_and_merge
from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator, TaskResult
from sammerge.merging import get_method


def config_from_zoo(zoo, method: str, params: Mapping | None = None,
                    selection: Mapping[str, str] | None = None, weights: Mapping[str, float] | None = None,
                    densities: Mapping[str, float] | None = None) -> MergeConfig:
    """A MergeConfig over a zoo's checkpoints. ``selection`` maps task → variant (default: all tasks, 'plain')."""
    selection = dict(selection) if selection is not None else {t: zoo.variants[0] for t in zoo.tasks}
    if not selection:
        raise ConfigError("empty task set: select at least one task to merge")
    tasks = []
    for task, variant in selection.items():
        if task not in zoo.tasks:
            raise ConfigError(f"unknown task '{task}' (zoo has: {', '.join(zoo.tasks)})")
        if variant not in zoo.variants:
            raise ConfigError(f"unknown variant '{variant}' for task '{task}' (zoo has: {', '.join(zoo.variants)})")
        record = zoo.manifest.checkpoint(task, variant)
        entry = {"task": task, "variant": variant, "checkpoint": str((zoo.path / record.file).resolve()),
                 "sha256": record.sha256}
        if weights and task in weights:
            entry["weight"] = float(weights[task])
        if densities and task in densities:
            entry["density"] = float(densities[task])
        tasks.append(entry)
    get_method(method)
    return MergeConfig.from_dict({
        "method": method, "params": dict(params or {}), "tasks": tasks,
        "base_model": str((zoo.path / zoo.manifest.pretrained.file).resolve()),
        "base_sha256": zoo.manifest.pretrained.sha256, "zoo": str(zoo.path.resolve())})


def evaluate_config(zoo, config: MergeConfig, split: str = "val", n_per_task: int | None = 256,
                    tasks: Sequence[str] | None = None, seed: int = 0
                    ) -> tuple[dict[str, TaskResult], MergeConfig, dict[str, torch.Tensor]]:
    """Merge as the config says and evaluate on the zoo's tasks; returns (results, resolved config, merged)."""
    merged, resolved = resolve_and_merge(config)
    missing = set(zoo.pretrained()) ^ set(merged)
    if missing:
        raise ConfigError(f"config's checkpoints do not match zoo '{zoo.path}' (e.g. key '{sorted(missing)[0]}')")
    tasks = list(tasks) if tasks is not None else [t.task for t in config.tasks if t.task in zoo.tasks] or zoo.tasks
    evaluator = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=seed, tasks=sorted(
        set(tasks), key=zoo.tasks.index))
    return evaluator.evaluate(merged), resolved, merged


def results_table(results: Mapping[str, TaskResult], zoo=None, config: MergeConfig | None = None, split: str = "val"):
    """pandas table: task, variant used, accuracy, loss, n, and normalized accuracy vs the fine-tuned model."""
    import pandas as pd

    variants = {t.task: t.variant for t in config.tasks} if config else {}
    rows = []
    for task, r in results.items():
        row = {"task": task, "variant": variants.get(task, "—"), "split": split, "accuracy": r.accuracy,
               "loss": r.loss, "n": r.n}
        if zoo is not None and task in variants:
            ft = getattr(zoo.manifest.checkpoint(task, variants[task]).accuracy, split)
            row["normalized"] = r.accuracy / ft if ft > 0 else float("nan")
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["mean_accuracy"] = statistics.mean(r.accuracy for r in results.values())
    return frame
