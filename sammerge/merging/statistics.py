"""The data statistics of the methods that read unlabeled images (RegMean's input Grams, Fisher's information),
computed from a zoo and kept in memory.

A method declaring ``data="unlabeled_images"`` carries ``statistics(zoo, task, variant, params)``; the merge reads
one result per task. This module asks for them: :func:`task_statistics` (one task, LRU-cached by the zoo, the
checkpoint's sha256, the method and its global parameters except λ), :func:`spec_statistics` (every task of a
:class:`MergeSpec`, or None for a method that needs no data) and :func:`variant_statistics` (tasks × one variant).
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Mapping, Sequence

import torch

from sammerge.errors import MergeError
from sammerge.merging.registry import MergeMethod, get_method

__all__ = ["task_statistics", "spec_statistics", "variant_statistics", "statistic_params", "clear_statistics",
           "has_training_images", "zoo_table_methods"]

_CACHE: "OrderedDict[tuple, Mapping[str, torch.Tensor]]" = OrderedDict()
_LOCK = threading.Lock()
_COMPUTING: dict[tuple, threading.Lock] = {}
_MAX_ENTRIES = 48


def statistic_params(method: MergeMethod, kwargs: Mapping) -> dict:
    """The global parameters of a call (defaults filled in) but λ: what a method's statistics may read."""
    full = method.validate_params({k: v for k, v in kwargs.items() if k in {p.name for p in method.global_params}})
    return {k: v for k, v in full.items() if k != "lambda"}


def task_statistics(zoo, method: MergeMethod | str, task: str, variant: str,
                    params: Mapping | None = None) -> Mapping[str, torch.Tensor]:
    """``method.statistics(zoo, task, variant, params)``, cached (one computation per key, even across threads)."""
    method = get_method(method) if isinstance(method, str) else method
    if not method.needs_data:
        raise MergeError(f"merge method '{method.name}' reads no data")
    if task not in zoo.tasks or variant not in zoo.variants:
        raise MergeError(f"merge method '{method.name}' reads unlabeled images of each task from the zoo, but zoo "
                         f"'{zoo.path}' has no model for task '{task}', variant '{variant}'")
    params = statistic_params(method, params or {})
    sha = zoo.manifest.checkpoint(task, variant).sha256
    key = (str(zoo.path), sha, task, method.name, json.dumps(params, sort_keys=True))
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        computing = _COMPUTING.setdefault(key, threading.Lock())
    with computing:  # one computation per key; other keys are not held up
        with _LOCK:
            if key in _CACHE:
                return _CACHE[key]
        value = method.statistics(zoo, task, variant, params)
        with _LOCK:
            _CACHE[key] = value
            _COMPUTING.pop(key, None)
            while len(_CACHE) > _MAX_ENTRIES:
                _CACHE.popitem(last=False)
        return value


def spec_statistics(zoo, spec) -> list[Mapping[str, torch.Tensor]] | None:
    """One statistics mapping per task of ``spec`` (a MergeSpec), or None when its method reads no data."""
    method = spec.spec
    if not method.needs_data:
        return None
    return [task_statistics(zoo, method, t.task, t.variant, spec.method_kwargs) for t in spec.tasks]


def variant_statistics(zoo, method_name: str, tasks: Sequence[str], variant: str,
                       params: Mapping | None = None) -> list[Mapping[str, torch.Tensor]] | None:
    """Statistics of ``tasks`` fine-tuned as ``variant`` (None when the method reads no data)."""
    method = get_method(method_name)
    if not method.needs_data:
        return None
    return [task_statistics(zoo, method, t, variant, params) for t in tasks]


def has_training_images(zoo) -> bool:
    """Whether ``zoo`` stores the training images the data methods read by default (imported zoos may not)."""
    try:
        zoo.split(zoo.tasks[0], "train")
    except Exception:  # noqa: BLE001 - an imported zoo without a train split (ZooError), or no data at all
        return False
    return True


def zoo_table_methods(zoo, routed: bool = True) -> list[str]:
    """The default methods of the paper table (and, ``routed=False``, of sweeps) on ``zoo``: every static method that
    merges its task count — those that read images only where the zoo stores training images — then the
    task-routed ones (EMR)."""
    from sammerge.merging.registry import MERGE_METHODS, table_methods
    static = table_methods(len(zoo.tasks), with_data=has_training_images(zoo))
    return static + ([m.name for m in MERGE_METHODS.values() if not m.is_static and m.accepts_tasks(len(zoo.tasks))]
                     if routed else [])


def clear_statistics() -> None:
    with _LOCK:
        _CACHE.clear()
