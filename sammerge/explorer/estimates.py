"""The explorer's fast estimates: merges scored on the first k images per task of its fixed evaluation subset.

On a slow encoder (a ViT-B/32 on a CPU) one exact evaluation of the whole budget takes seconds to minutes. The
explorer then shows an estimate from the first k images of each task's *same* fixed subset — so the exact number
that replaces it is over a superset of the same images — with Wilson intervals (:mod:`sammerge.evaluation.estimate`).
Whether to estimate is decided from the encoder's forward throughput, measured once here (:meth:`throughput`):
predicted exact time = images in the budget / images per second.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Sequence

import torch

from sammerge.evaluation.evaluator import Evaluator, TaskResult
from sammerge.merging import MergeSpec

__all__ = ["SubsetEstimates"]


class SubsetEstimates:
    """Results of merges, θ0 and the fine-tuned models on the first ``k`` images per task of ``evaluator``'s subset.

    It has its own encoder module (``functional_call`` swaps parameters into a module in place, and the background
    refinement uses the explorer's), so an estimate never waits for an exact evaluation. Thread-safe.
    """

    def __init__(self, zoo, evaluator: Evaluator, k: int, merge: Callable[[MergeSpec], dict[str, torch.Tensor]],
                 cache_size: int = 256) -> None:
        self.zoo, self.evaluator, self.merge, self.cache_size = zoo, evaluator, merge, cache_size
        self.k = max(1, min(k, self.images_per_task(evaluator)))
        self.images_per_s: float | None = None  # forward throughput of the zoo's encoder (the fastest seen)
        self._lock = threading.RLock()
        self._encoder: torch.nn.Module | None = None
        self._evaluators: dict[str, Evaluator] = {}
        self._results: OrderedDict[str, dict[str, TaskResult]] = OrderedDict()
        self._individual: dict[tuple[str, str], TaskResult] = {}
        self._pretrained: dict[str, TaskResult] | None = None

    @staticmethod
    def images_per_task(evaluator: Evaluator) -> int:
        """Images per task of ``evaluator`` (the largest task; a small split may hold fewer)."""
        return max(sl.stop - sl.start for sl in evaluator.slices.values())

    def covers_everything(self) -> bool:
        """Whether k images per task are the whole budget (an estimate would be the exact number)."""
        return self.k >= self.images_per_task(self.evaluator)

    def describe(self, split: str, seed: int) -> str:
        return (f"ESTIMATE on the {split} split: the first {self.k} of the {self.images_per_task(self.evaluator)} "
                f"fixed images per task (seed {seed}), 95 % Wilson intervals; the exact evaluation was still running")

    # -- throughput ---------------------------------------------------------------------------------------------
    def throughput(self) -> float:
        """Images per second through the encoder, measured once: θ0 on the estimate's images after a 2-image warm-up
        (kept: it is θ0's estimate). Exact evaluations the explorer times raise it if they run faster."""
        if self.images_per_s is None:
            self.pretrained()
        return self.images_per_s

    def note_throughput(self, images: int, seconds: float) -> None:
        rate = images / max(seconds, 1e-9)
        self.images_per_s = rate if self.images_per_s is None else max(self.images_per_s, rate)

    def predicted_exact_s(self) -> float:
        """Seconds one exact evaluation of the whole budget takes at the measured throughput (forward only)."""
        return len(self.evaluator.labels) / self.throughput()

    # -- evaluators on the first k images ---------------------------------------------------------------------
    def _evaluator(self, task: str | None = None) -> Evaluator:
        """Every task's first k images (``task``: that task's alone), on the estimates' own encoder module."""
        name = task or "*"
        with self._lock:
            if name not in self._evaluators:
                ev = self.evaluator
                if self._encoder is None:
                    self._encoder = self.zoo.create_encoder(fused_attention=True)
                tasks = [task] if task else ev.tasks
                data = {t: (ev.images[ev.slices[t]][:self.k], ev.labels[ev.slices[t]][:self.k]) for t in tasks}
                self._evaluators[name] = Evaluator(self._encoder, {t: ev.heads[t] for t in tasks}, data,
                                                   device=ev.device, chunk_size=ev.chunk_size)
            return self._evaluators[name]

    def evaluate_many(self, specs: Sequence[MergeSpec]) -> list[dict[str, TaskResult]]:
        """Per-task results of merges on the first k images per task (cached by spec)."""
        with self._lock:
            keys = [s.key() for s in specs]
            for key, spec in zip(keys, specs):
                if key not in self._results:
                    self._results[key] = self._evaluator().evaluate(self.merge(spec), key=f"spec:{key}")
                    while len(self._results) > self.cache_size:
                        self._results.popitem(last=False)
                self._results.move_to_end(key)
            return [self._results[k] for k in keys]

    def is_estimated(self, spec: MergeSpec) -> bool:
        return spec.key() in self._results

    probe_budget_s = 0.2  # a fast encoder's probe is repeated within this time (the fastest run counts)

    def pretrained(self) -> dict[str, TaskResult]:
        """θ0 on every task's first k images, timed: the throughput measurement (after a 2-image warm-up; repeated
        up to 5 times while the runs so far took under ``probe_budget_s`` — a busy CPU makes single runs noisy)."""
        with self._lock:
            if self._pretrained is None:
                ev, theta0 = self._evaluator(), self.zoo.pretrained()
                task = ev.tasks[0]
                Evaluator(ev.encoder, {task: ev.heads[task]}, {task: (ev.images[:2], ev.labels[:2])},
                          device=ev.device).evaluate(theta0, key="warm-up")
                spent = 0.0
                for run in range(5):
                    start = time.perf_counter()
                    result = ev.evaluate(theta0, key=f"pretrained-{run}")
                    seconds = time.perf_counter() - start
                    self.note_throughput(len(ev.labels), seconds)
                    spent += seconds
                    if spent >= self.probe_budget_s:
                        break
                self._pretrained = result
            return self._pretrained

    def individual(self, task: str, variant: str) -> TaskResult:
        """The fine-tuned ``task``/``variant`` model on its own task's first k images."""
        with self._lock:
            if (task, variant) not in self._individual:
                self._individual[(task, variant)] = self._evaluator(task).evaluate(self.zoo.finetuned(task, variant))[task]
            return self._individual[(task, variant)]
