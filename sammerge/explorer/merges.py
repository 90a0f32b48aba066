"""The explorer's merges of one zoo: task vectors, merged encoders and the merged directions of the methods whose λ
is a final scale (θ0 + λ τ_merged: one direction per parameter set, then every λ move only rescales it)."""
from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from sammerge.evaluation.search import merged_direction, scaled
from sammerge.jobs.sweeps import twins
from sammerge.merging import LAMBDA, MergeSpec, merge_zoo, spec_statistics

__all__ = ["MergeCache", "SpecFamily", "lambda_neighbours"]


class MergeCache:
    """LRU caches of merges (by ``MergeSpec.key()``) and directions (by the key without λ); thread-safe. Merges have
    their own lock, so an estimate never waits for an exact evaluation in progress."""

    def __init__(self, zoo, cache_size: int = 64) -> None:
        self.zoo, self.cache_size = zoo, cache_size
        self.lock = threading.RLock()
        self._tvs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._merged: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._directions: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()

    def task_vector(self, task: str, variant: str) -> dict[str, torch.Tensor]:
        """τ = θ_task,variant − θ0 (kept for the explorer's life)."""
        key = (task, variant)
        if key not in self._tvs:
            self._tvs[key] = self.zoo.task_vector(task, variant)
        return self._tvs[key]

    def merge(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        """The merged encoder for ``spec`` (cached; do not modify the result)."""
        key = spec.key()
        with self.lock:
            if key in self._merged:
                self._merged.move_to_end(key)
                return self._merged[key]
            if spec.spec.direction_fn is not None:
                merged = scaled(self.zoo.pretrained(), self.direction(spec), spec.params[LAMBDA])
            else:
                merged = merge_zoo(self.zoo, spec, self.task_vector)
            self._merged[key] = merged
            while len(self._merged) > self.cache_size:
                self._merged.popitem(last=False)
            return merged

    def has_direction(self, spec: MergeSpec) -> bool:
        """False when merging ``spec`` first computes its method's merged direction (true for other methods)."""
        return spec.spec.direction_fn is None or spec.key(with_lambda=False) in self._directions

    def direction(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        """τ_merged of a method whose λ is a final scale (with the statistics of a method that reads images)."""
        key = spec.key(with_lambda=False)
        with self.lock:
            if key not in self._directions:
                self._directions[key] = self.compute_direction(spec)
                while len(self._directions) > max(2, self.cache_size // 16):
                    self._directions.popitem(last=False)
            self._directions.move_to_end(key)
            return self._directions[key]

    def compute_direction(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        """τ_merged = merge(λ = 1) − θ0 of ``spec``'s method, parameters (but λ) and checkpoints (not cached)."""
        kwargs = {k: v for k, v in spec.method_kwargs.items() if k != LAMBDA}
        return merged_direction(spec.method, self.zoo.pretrained(),
                                [self.task_vector(t.task, t.variant) for t in spec.tasks], kwargs, spec.task_ids,
                                spec_statistics(self.zoo, spec))


def lambda_neighbours(spec: MergeSpec, steps: int = 1) -> list[MergeSpec]:
    """``spec`` with the global λ moved by ±1…``steps`` slider steps (within the slider's range): what the
    background queue prefetches after a move."""
    if not spec.has_lambda:
        return []
    p = next(p for p in spec.spec.global_params if p.name == LAMBDA)
    (lo, hi), step, lam = p.slider_range, p.step or 0.05, spec.params[LAMBDA]
    values = [round(lam + sign * k * step, 6) for k in range(1, steps + 1) for sign in (1, -1)]
    return [spec.with_params(**{LAMBDA: v}) for v in values
            if (lo is None or v >= lo - 1e-9) and (hi is None or v <= hi + 1e-9)]


class SpecFamily:
    """The specs a move brings along, built once per spec (by key) and reused by every later call: its twins (the
    same merge with every task on each variant) and its λ neighbours (what the background queue prefetches)."""

    def __init__(self, zoo, size: int = 256) -> None:
        self.zoo, self.size = zoo, size
        self._twins: OrderedDict[str, dict[str, MergeSpec]] = OrderedDict()
        self._neighbours: OrderedDict[str, list[MergeSpec]] = OrderedDict()
        self._lock = threading.Lock()

    def _memo(self, cache: OrderedDict, spec: MergeSpec, make):
        key = spec.key()
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        value = make()
        with self._lock:
            cache[key] = value
            while len(cache) > self.size:
                cache.popitem(last=False)
        return value

    def twins(self, spec: MergeSpec) -> dict[str, MergeSpec]:
        """``"current"`` plus the same merge with every task on each variant (``jobs.sweeps.twins``)."""
        return self._memo(self._twins, spec, lambda: twins(self.zoo, spec))

    def neighbours(self, spec: MergeSpec, steps: int = 1) -> list[MergeSpec]:
        """:func:`lambda_neighbours` of ``spec`` (one step: cached)."""
        if steps != 1:
            return lambda_neighbours(spec, steps)
        return self._memo(self._neighbours, spec, lambda: lambda_neighbours(spec))
