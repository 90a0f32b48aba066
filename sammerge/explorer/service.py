"""The explorer's engine (no Streamlit): merges of one zoo scored on one fixed image subset, cached.

Data flow of one slider move: the page turns its controls into a :class:`~sammerge.merging.MergeSpec` (validated
once, :mod:`sammerge.webapp.explorer_state`) → :meth:`Explorer.first_look` scores that merge (the number shown
first) → :meth:`Explorer.compare` scores it beside its all-plain / all-SAM twins and the references → a
:class:`~sammerge.explorer.comparison.Comparison` that figures, tables, readings and exports only read.

Scoring goes through one :class:`~sammerge.explorer.scorers.Scorer`: exact (the whole subset), a linearized zoo's
instant preview (exact, no forward pass), or — when an exact evaluation would take longer than
``latency_target_s`` at the encoder's measured throughput — an estimate from the first k images per task, refined
to the exact numbers by the background queue (:mod:`sammerge.explorer.background`), which also prefetches the
next λ steps. Merges and merged directions: :mod:`sammerge.explorer.merges`; λ sweeps:
:mod:`sammerge.explorer.sweep_cache`; the paper table: :class:`sammerge.explorer.paper.PaperTableCache`.
"""
from __future__ import annotations

import atexit
import weakref
from typing import Sequence

import pandas as pd
import torch

from sammerge.evaluation.evaluator import TaskResult
from sammerge.evaluation.linear_preview import LinearPreview
from sammerge.explorer.instant_preview import InstantPreview
from sammerge.evaluation.protocol import Summary
from sammerge.evaluation.search import SweepResult
from sammerge.evaluation.subset import EvalSubset
from sammerge.explorer import fairlock, scorers
from sammerge.explorer.background import BackgroundQueue
from sammerge.explorer.comparison import Comparison, FirstLook
from sammerge.explorer.estimates import SubsetEstimates
from sammerge.explorer.merges import MergeCache, SpecFamily
from sammerge.explorer.paper import PaperTableCache
from sammerge.explorer.sweep_cache import SweepCache, sweep_key
from sammerge.merging import MergeSpec, list_methods
from sammerge.progress import Progress

__all__ = ["Explorer", "Comparison", "FirstLook", "method_choices", "EXPLORER_SPLIT", "EXPLORER_N_PER_TASK",
           "EXPLORER_ESTIMATE_N", "EXPLORER_LATENCY_TARGET_S"]

EXPLORER_SPLIT, EXPLORER_N_PER_TASK = EvalSubset().split, EvalSubset().n_per_task
EXPLORER_ESTIMATE_N = 32           # images per task of a first estimate (the first k of the fixed subset)
EXPLORER_LATENCY_TARGET_S = 0.3    # exact evaluation predicted slower than this → estimate first


def method_choices() -> list[str]:
    """The explorer's methods: every static one (a task-routed method, e.g. EMR, is one model per task: it appears in
    the paper table, labelled so)."""
    return [m.name for m in list_methods() if m.is_static]


class Explorer:
    """Merges and evaluations for one zoo, cached; thread-safe (sessions' evaluations first come, first served)."""

    prefetch_enabled = True
    prefetch_twins = True  # False: only the neighbours' own merges (what the page shows first), not their twins

    def __init__(self, zoo, n_per_task: int = EXPLORER_N_PER_TASK, split: str = EXPLORER_SPLIT, seed: int = 0,
                 cache_size: int = 64, estimate_n_per_task: int = EXPLORER_ESTIMATE_N,
                 latency_target_s: float = EXPLORER_LATENCY_TARGET_S, compile: bool = False,
                 workers: int = 1) -> None:
        self.zoo, self.subset, self.latency_target_s = zoo, EvalSubset(split, n_per_task, seed), latency_target_s
        self.split, self.n_per_task, self.seed = split, n_per_task, seed
        # ``compile``, ``workers``: the forward through torch.compile once compiled in the background, on ``workers``
        # CPU threads (the app's choice: sammerge.webapp.ui)
        self.evaluator = self.subset.evaluator(zoo, compile=compile, workers=workers)
        # linearized zoos: exact results from f(θ0) + Σ c J τ once the precomputed f(θ0), J τ_t are loaded from the
        # zoo's cache or prepared by a background job (exact evaluation until then)
        self.instant = (InstantPreview(zoo, self.evaluator, self.subset)
                        if self.evaluator.linearize_at is not None else None)
        self.merges, self.family = MergeCache(zoo, cache_size), SpecFamily(zoo)
        self.exact_results = scorers.ExactResults(zoo, self.evaluator, self.describe_evaluation(), cache_size)
        self.estimates = SubsetEstimates(zoo, self.evaluator, estimate_n_per_task, self.merges.merge, 4 * cache_size)
        self.background = BackgroundQueue(self._run_background, name="sammerge-prefetch")
        self.sweep_cache = SweepCache(zoo, self.evaluator, self.subset, self.merges, self.family, self.exact_results.lock)
        self.paper = PaperTableCache(zoo, self.exact_results.lock)
        _LIVE_EXPLORERS.add(self)

    tasks, variants = property(lambda self: self.zoo.tasks), property(lambda self: self.zoo.variants)

    @property
    def preview(self) -> LinearPreview | None:
        """A linearized zoo's instant preview once ready (``self.instant``), else None: merges evaluated exactly."""
        return self.instant.get() if self.instant is not None else None

    def describe_evaluation(self) -> str:
        n = self.evaluator.images.shape[0] // max(1, len(self.evaluator.tasks))
        lin = f"; linearized zoo f(θ0) + J(θ − θ0): {self.instant.describe()}" if self.instant is not None else ""
        return f"{self.split} split, {n} images per task (fixed subset, seed {self.seed}){lin}"

    def engine_note(self) -> str:
        """How merges are evaluated right now (the compiled forward, eager while it compiles, or why eager)."""
        return "eager forward" if self.evaluator.compiled is None else self.evaluator.compiled.describe()

    def default_spec(self) -> MergeSpec:
        return MergeSpec.default_for_zoo(self.zoo)

    # -- merges (explorer.merges) ------------------------------------------------------------------------------
    def task_vector(self, task: str, variant: str) -> dict[str, torch.Tensor]:
        return self.merges.task_vector(task, variant)

    def merge(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        return self.merges.merge(spec)

    def has_direction(self, spec: MergeSpec) -> bool:
        return self.merges.has_direction(spec)

    def direction(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        return self.merges.direction(spec)

    # -- scoring (explorer.scorers) ----------------------------------------------------------------------------
    def scorer(self, spec: MergeSpec | None = None, allow_estimate: bool = False) -> scorers.Scorer:
        """The estimate when allowed, the comparison of ``spec`` is not ready and exact would be slow; else exact
        (a linearized zoo's preview once ready)."""
        if allow_estimate and spec is not None and not self.is_exact_ready(spec) and self.estimating():
            return scorers.EstimateScorer(self.estimates, self.split, self.seed)
        preview = self.preview
        if preview is not None:
            return scorers.LinearPreviewScorer(self.exact_results, self.merges, preview)
        return scorers.ExactScorer(self.exact_results, self.merges, self.estimates)

    def evaluate(self, spec: MergeSpec) -> dict[str, TaskResult]:
        return self.evaluate_many([spec])[0]

    def evaluate_many(self, specs: Sequence[MergeSpec]) -> list[dict[str, TaskResult]]:
        """Exact per-task results of several merges; the uncached ones in one batched pass."""
        return self.scorer().score_many(specs)

    def references(self) -> tuple[dict[str, TaskResult], dict[str, dict[str, TaskResult]]]:
        """(θ0 on every task, every individual fine-tuned model on its task), on the explorer's images."""
        return self.exact_results.references()

    def has_references(self) -> bool:
        """Whether θ0 and every fine-tuned model have been measured on the explorer's images (once per explorer)."""
        return self.exact_results.refs is not None

    def twins(self, spec: MergeSpec) -> dict[str, MergeSpec]:
        """``"current"`` plus the same merge with every task on each variant (built once per spec)."""
        return self.family.twins(spec)

    def first_look(self, spec: MergeSpec, allow_estimate: bool = True) -> FirstLook:
        """The merge's summary with 95 % Wilson intervals: exact when fast enough or already refined, else an
        estimate on the first k images per task with the exact evaluation queued in the background."""
        scorer = self.scorer(spec, allow_estimate)
        look = scorers.first_look(scorer, spec)
        if not scorer.exact:
            self.refine(spec)
        return look

    def compare(self, spec: MergeSpec, allow_estimate: bool = False) -> Comparison:
        """The merge, its twins and the references on the same images (an estimate, refining, as in first_look).
        Evaluated at ``fairlock.DETAIL``: behind every session's waiting move, before background work."""
        scorer = self.scorer(spec, allow_estimate)
        with fairlock.detail():
            cmp = scorers.compare(scorer, self.twins(spec), self.tasks, self.variants, self.split)
        if not scorer.exact:
            self.refine(spec)
        return cmp

    def summary(self, spec: MergeSpec) -> Summary:
        """One merge's exact summary (no twins)."""
        return self.first_look(spec, allow_estimate=False).summary

    def is_cached(self, spec: MergeSpec) -> bool:
        """Whether the results of ``spec`` are in memory (showing it costs no evaluation)."""
        return spec.key() in self.exact_results.results

    def is_exact_ready(self, spec: MergeSpec) -> bool:
        """Whether the exact comparison of ``spec`` (its twins and the references) needs no evaluation."""
        return self.exact_results.refs is not None and all(self.is_cached(s) for s in self.twins(spec).values())

    # -- estimates (explorer.estimates) --------------------------------------------------------------------------
    def images_per_task(self) -> int:
        return SubsetEstimates.images_per_task(self.evaluator)

    def estimate_size(self) -> int:
        return self.estimates.k

    images_per_s = property(lambda self: self.estimates.images_per_s, doc="measured forward images per second")

    def estimating(self) -> bool:
        """Whether merges are shown as estimates first: not on a linearized zoo (its preview is exact and instant),
        not when k covers every image, and only when one exact evaluation at the measured throughput would take
        longer than ``latency_target_s``."""
        if self.preview is not None or self.estimates.covers_everything():
            return False
        return self.estimates.predicted_exact_s() > self.latency_target_s

    def is_estimated(self, spec: MergeSpec) -> bool:
        return self.estimates.is_estimated(spec)

    # -- the background queue ------------------------------------------------------------------------------------
    def refine(self, spec: MergeSpec) -> None:
        """Queue the exact comparison of ``spec`` (its direction, references, the merge, its twins) ahead of any
        prefetch; a newer call replaces what an older one has not started."""
        items = [] if self.merges.has_direction(spec) else [("direction", spec)]
        items += [] if self.exact_results.refs is not None else [("references", None)]
        self.background.refine(items + [("exact", s) for s in self.twins(spec).values() if not self.is_cached(s)])

    def neighbours(self, spec: MergeSpec, steps: int = 1) -> list[MergeSpec]:
        return self.family.neighbours(spec, steps)

    def prefetch(self, specs: Sequence[MergeSpec], estimate: bool = False) -> None:
        """Evaluate ``specs`` (and, ``prefetch_twins``, their twins) in the background, one merge at a time, every
        neighbour's own merge first; ``estimate``: only their estimates, after any pending refinement."""
        if not self.prefetch_enabled:
            return
        done, kind = (self.is_estimated, "estimate") if estimate else (self.is_cached, "exact")
        groups = [list(self.twins(s).values()) for s in specs]
        order = [g[0] for g in groups] + ([t for g in groups for t in g[1:]] if self.prefetch_twins else [])
        self.background.prefetch([(kind, t) for t in order if not done(t)])

    def _run_background(self, kind: str, spec) -> None:
        with fairlock.background():  # behind every session's own move (explorer.fairlock)
            self._run_background_item(kind, spec)

    def _run_background_item(self, kind: str, spec) -> None:
        if kind == "references":
            self.references()
        elif kind == "direction":
            self.direction(spec)
        elif kind == "estimate":
            self.estimates.evaluate_many([spec])
        else:
            self.evaluate(spec)

    def wait_prefetched(self, timeout: float | None = None) -> bool:
        """Block until the background queue has nothing left to do (tests, benchmarks)."""
        return self.background.wait_idle(timeout)

    def refining(self, spec: MergeSpec) -> bool:
        """Whether the exact comparison of ``spec`` is not ready yet but queued or running in the background."""
        return not self.is_exact_ready(spec) and not self.background.idle()

    def close(self, timeout: float | None = 60.0) -> None:
        """Drop queued background work and wait for the item in progress (at most ``timeout`` s)."""
        self.background.close(timeout)

    # -- λ sweeps (explorer.sweep_cache) and the paper table (explorer.paper) ----------------------------------
    sweep_key = staticmethod(sweep_key)

    def cached_sweeps(self, spec: MergeSpec) -> dict[str, SweepResult] | None:
        return self.sweep_cache.cached(spec)

    def sweeps(self, spec: MergeSpec, progress: Progress | None = None) -> dict[str, SweepResult]:
        return self.sweep_cache.sweeps(spec, progress)

    def export_spec(self, spec: MergeSpec, allow_estimate: bool = False) -> MergeSpec:
        """``spec`` with its measured results and how they were measured (an estimate says so)."""
        cmp = self.compare(spec, allow_estimate=allow_estimate)
        return spec.with_provenance(results=cmp.results_record(),
                                    notes=f"exported from the sammerge explorer; results measured on the {cmp.evaluation}")

    def table_methods(self) -> list[str]:
        return self.paper.methods()

    def paper_table_cached(self) -> pd.DataFrame | None:
        return self.paper.get_cached()

    def paper_table(self, progress: Progress | None = None) -> pd.DataFrame:
        return self.paper.get(progress)


# A daemon thread still inside torch while Python finalizes aborts the process ("terminate called without an
# active exception"), so at exit every explorer drops its queued work and lets the running evaluation finish.
_LIVE_EXPLORERS: "weakref.WeakSet[Explorer]" = weakref.WeakSet()


@atexit.register
def _close_explorers() -> None:
    for explorer in list(_LIVE_EXPLORERS):
        explorer.close()
