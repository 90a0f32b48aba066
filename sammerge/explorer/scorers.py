"""How the explorer scores merges: one :class:`Scorer` interface, three implementations, and the two views a page
asks for (:func:`first_look`, :func:`compare`) written once over it.

* :class:`ExactScorer` — every merge evaluated on the whole fixed subset (batched; results cached by spec key);
* :class:`LinearPreviewScorer` — a linearized zoo's merges from f(θ0) + Σ c J τ (exact there, no forward pass);
* :class:`EstimateScorer` — the first k images per task of the same subset, with Wilson intervals (a slow encoder).

A scorer gives results of merges, the references (θ0 on every task, each fine-tuned model on its own task) on the
same images, whether it is exact, the images per task behind its numbers and a sentence saying how it measured.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol, Sequence

from sammerge.evaluation.estimate import result_intervals
from sammerge.evaluation.evaluator import Evaluator, TaskResult
from sammerge.evaluation.linear_preview import LinearPreview, linear_coefficients
from sammerge.evaluation.protocol import summarize
from sammerge.explorer.comparison import Comparison, FirstLook
from sammerge.explorer.estimates import SubsetEstimates
from sammerge.explorer.fairlock import FairRLock
from sammerge.explorer.merges import MergeCache
from sammerge.merging import LAMBDA, MergeSpec

__all__ = ["Scorer", "ExactScorer", "LinearPreviewScorer", "EstimateScorer", "ExactResults", "first_look", "compare"]


class Scorer(Protocol):
    exact: bool

    def score_many(self, specs: Sequence[MergeSpec]) -> list[dict[str, TaskResult]]: ...
    def pretrained(self) -> dict[str, TaskResult]: ...
    def individual(self, task: str, variant: str) -> TaskResult: ...
    def n_per_task(self) -> int: ...
    def describe(self) -> str: ...


def first_look(scorer: Scorer, spec: MergeSpec):
    """One merge's summary with 95 % Wilson intervals, as ``scorer`` measures it."""
    res = scorer.score_many([spec])[0]
    individual = {t.task: scorer.individual(t.task, t.variant) for t in spec.tasks}
    return FirstLook(spec, summarize(res, individual, spec.task_names),
                     result_intervals({t: res[t] for t in spec.task_names}), scorer.n_per_task(), scorer.exact)


def compare(scorer: Scorer, specs: dict[str, MergeSpec], tasks: Sequence[str], variants: Sequence[str],
            split: str) -> Comparison:
    """The merges ``specs`` ("current" and its twins) beside the references, all as ``scorer`` measures them."""
    results = scorer.score_many(list(specs.values()))
    individual = {v: {t: scorer.individual(t, v) for t in tasks} for v in variants}
    return Comparison(tuple(tasks), tuple(variants), specs, dict(zip(specs, results)), scorer.pretrained(),
                      individual, split, scorer.describe(), exact=scorer.exact, n_per_task=scorer.n_per_task())


class ExactResults:
    """What the exact scorers share: the result cache (by spec key), the references, and the lock that serves the
    server's sessions first come, first served (one evaluation at a time)."""

    def __init__(self, zoo, evaluator: Evaluator, description: str, cache_size: int) -> None:
        self.zoo, self.evaluator, self.description, self.cache_size = zoo, evaluator, description, cache_size
        self.lock = FairRLock()
        self.results: OrderedDict[str, dict[str, TaskResult]] = OrderedDict()
        self.refs: tuple[dict, dict] | None = None
        self._pieces: dict = {}  # the references measured so far ("pretrained", (task, variant))
        self._task_evaluators: dict[str, Evaluator] = {}

    def cached(self, keys: Sequence[str]) -> list[dict[str, TaskResult]] | None:
        found = [self.results.get(k) for k in keys]  # a dict read is atomic: no queueing for cached results
        return None if None in found else found

    def fill(self, specs: Sequence[MergeSpec], compute) -> list[dict[str, TaskResult]]:
        """Results of ``specs``: cached ones read, the others from ``compute(list of specs)`` under the lock.

        On a CPU the uncached specs go one lock hold each (there the evaluator loops over merges anyway), so a
        waiting move of another session (:mod:`sammerge.explorer.fairlock`) cuts in between the twins of this one;
        on a GPU they go in one batched pass."""
        keys = [s.key() for s in specs]
        found = self.cached(keys)
        if found is not None:
            return found
        first = dict(zip(keys, specs))
        out: dict[str, dict[str, TaskResult]] = {}
        groups = [[k] for k in first] if self.evaluator.device.type == "cpu" else [list(first)]
        for group in groups:
            with self.lock:
                todo = [k for k in group if k not in self.results]
                if todo:
                    for k, res in zip(todo, compute([first[k] for k in todo])):
                        self.results[k] = res
                out.update({k: self.results[k] for k in group})
                while len(self.results) > 4 * self.cache_size:
                    self.results.popitem(last=False)
        return [out[k] for k in keys]

    def references(self) -> tuple[dict[str, TaskResult], dict[str, dict[str, TaskResult]]]:
        """(θ0 on every task, every fine-tuned model on its own task — T× fewer forwards), computed once."""
        refs = self.refs
        if refs is not None:
            return refs
        # one lock hold per model (1 + tasks × variants of them), like the merges in ``fill``: a move of another
        # session waits for one evaluation, not for all of them
        pre = self._measured("pretrained", lambda: self.evaluator.evaluate(self.zoo.pretrained()))
        def own_task(t, v):
            return self.task_evaluator(t).evaluate(self.zoo.finetuned(t, v))[t]
        ft = {v: {t: self._measured((t, v), lambda t=t, v=v: own_task(t, v)) for t in self.zoo.tasks}
              for v in self.zoo.variants}
        with self.lock:
            if self.refs is None:
                self.refs = (pre, ft)
            return self.refs

    def _measured(self, key, measure):
        """``measure()`` once per key, in one lock hold (a reference model of :meth:`references`)."""
        with self.lock:
            if key not in self._pieces:
                self._pieces[key] = measure()
            return self._pieces[key]

    def task_evaluator(self, task: str) -> Evaluator:
        """The evaluator restricted to ``task`` (same images, same encoder module, same device)."""
        if task not in self._task_evaluators:
            ev, sl = self.evaluator, self.evaluator.slices[task]
            self._task_evaluators[task] = Evaluator(ev.encoder, {task: ev.heads[task]},
                                                    {task: (ev.images[sl], ev.labels[sl])}, device=ev.device,
                                                    chunk_size=ev.chunk_size, linearize_at=ev.linearize_at)
        return self._task_evaluators[task]


class _ExactBase:
    exact = True

    def __init__(self, shared: ExactResults) -> None:
        self.shared = shared

    def pretrained(self) -> dict[str, TaskResult]:
        return self.shared.references()[0]

    def individual(self, task: str, variant: str) -> TaskResult:
        return self.shared.references()[1][variant][task]

    def n_per_task(self) -> int:
        return SubsetEstimates.images_per_task(self.shared.evaluator)

    def describe(self) -> str:
        return self.shared.description


class ExactScorer(_ExactBase):
    """Each merge evaluated on the whole subset, several in one batched pass; the forward throughput is reported
    to ``estimates`` (it decides when to estimate first)."""

    def __init__(self, shared: ExactResults, merges: MergeCache, estimates: SubsetEstimates) -> None:
        super().__init__(shared)
        self.merges, self.estimates = merges, estimates

    def score_many(self, specs: Sequence[MergeSpec]) -> list[dict[str, TaskResult]]:
        return self.shared.fill(specs, self._evaluate)

    def _evaluate(self, specs: list[MergeSpec]) -> list[dict[str, TaskResult]]:
        ev = self.shared.evaluator
        merged = [self.merges.merge(s) for s in specs]
        start = time.perf_counter()
        results = ev.evaluate_many(merged) if len(merged) > 1 else [ev.evaluate(merged[0], key=f"spec:{specs[0].key()}")]
        self.estimates.note_throughput(len(merged) * len(ev.labels), time.perf_counter() - start)
        return results


class LinearPreviewScorer(_ExactBase):
    """A linearized zoo's merges scored from f(θ0) + Σ c J τ (``evaluation.linear_preview``): one cached J τ_t per
    checkpoint makes every λ and λ_t free; other methods through J τ_m of their merged direction."""

    def __init__(self, shared: ExactResults, merges: MergeCache, preview: LinearPreview) -> None:
        super().__init__(shared)
        self.merges, self.preview = merges, preview

    def score_many(self, specs: Sequence[MergeSpec]) -> list[dict[str, TaskResult]]:
        return self.shared.fill(specs, lambda todo: [self._score(s) for s in todo])

    def _score(self, spec: MergeSpec) -> dict[str, TaskResult]:
        coefs = linear_coefficients(spec)
        if coefs is not None:
            return self.preview.evaluate([(t.id, (lambda t=t: self.merges.task_vector(t.task, t.variant)), c)
                                          for t, c in zip(spec.tasks, coefs)])
        return self.preview.evaluate([(spec.key(with_lambda=False), lambda: self.merges.compute_direction(spec),
                                       spec.params[LAMBDA] if spec.has_lambda else 1.0)])


class EstimateScorer:
    """The first k images per task of the subset (:class:`~sammerge.explorer.estimates.SubsetEstimates`)."""
    exact = False

    def __init__(self, estimates: SubsetEstimates, split: str, seed: int) -> None:
        self.estimates, self.split, self.seed = estimates, split, seed

    def score_many(self, specs: Sequence[MergeSpec]) -> list[dict[str, TaskResult]]:
        return self.estimates.evaluate_many(specs)

    def pretrained(self) -> dict[str, TaskResult]:
        return self.estimates.pretrained()

    def individual(self, task: str, variant: str) -> TaskResult:
        return self.estimates.individual(task, variant)

    def n_per_task(self) -> int:
        return self.estimates.k

    def describe(self) -> str:
        return self.estimates.describe(self.split, self.seed)
