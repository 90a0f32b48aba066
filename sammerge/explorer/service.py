"""The explorer's engine (no Streamlit): merges and evaluations of :class:`MergeSpec` over one zoo, cached.

Data flow of one slider move: the page builds a :class:`~sammerge.merging.MergeSpec` from its controls
(validated once) → :meth:`Explorer.compare` merges it and its all-plain / all-SAM twins (task vectors and
results cached by :meth:`MergeSpec.key`) and evaluates them on one fixed image subset → a :class:`Comparison`,
which figures, tables, readings and exports only read.

On a slow encoder (a ViT-B/32 on a CPU) exact evaluation of the whole image budget takes longer than
``latency_target_s``, judged from the encoder's forward throughput measured once: then :meth:`Explorer.first_look`
and ``compare(spec, allow_estimate=True)`` answer from the first k images per task of the same fixed subset
(an estimate with Wilson intervals, :mod:`sammerge.evaluation.estimate`) and queue the exact evaluation on the
background prefetch thread, which replaces the estimate once done.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch

from sammerge.errors import SammergeError
from sammerge.evaluation.estimate import Interval, result_intervals
from sammerge.evaluation.evaluator import Evaluator, TaskResult
from sammerge.explorer.fairlock import FairRLock
from sammerge.evaluation.protocol import Summary, normalized_accuracy, summarize
from sammerge.evaluation.linear_preview import LinearPreview, linear_coefficients
from sammerge.evaluation.preview_cache import InstantPreview, Subset
from sammerge.evaluation.search import SweepResult, merged_direction, scaled, sweep_shared_lambda
from sammerge.explorer.estimates import SubsetEstimates
from sammerge.explorer.style import variant_label
from sammerge.merging import LAMBDA, MergeSpec, list_methods, merge_zoo, spec_statistics
from sammerge.progress import Progress

__all__ = ["Explorer", "Comparison", "FirstLook", "method_choices", "EXPLORER_SPLIT", "EXPLORER_N_PER_TASK",
           "EXPLORER_ESTIMATE_N", "EXPLORER_LATENCY_TARGET_S"]

EXPLORER_SPLIT = "val"
EXPLORER_N_PER_TASK = 256
EXPLORER_ESTIMATE_N = 32           # images per task of a first estimate (the first k of the fixed subset)
EXPLORER_LATENCY_TARGET_S = 0.3    # exact evaluation predicted slower than this → estimate first


def method_choices() -> list[str]:
    """The explorer's methods: every static one (a task-routed method, e.g. EMR, is one model per task: it appears in
    the paper table, labelled so)."""
    return [m.name for m in list_methods() if m.is_static]


def _round(v: float) -> float:
    return float(round(float(v), 6))


@dataclass(frozen=True)
class Comparison:
    """One merge next to its twins, with the references it is judged against — all on the same images.

    ``specs``/``results``: ``"current"`` and one entry per variant (the same merge with every task on it);
    ``pretrained``: θ0 on every zoo task; ``individual[variant][task]``: each fine-tuned checkpoint on its task.
    """
    tasks: tuple[str, ...]                       # every zoo task, in order
    variants: tuple[str, ...]
    specs: dict[str, MergeSpec]
    results: dict[str, dict[str, TaskResult]]
    pretrained: dict[str, TaskResult]
    individual: dict[str, dict[str, TaskResult]]
    split: str
    evaluation: str                              # "val split, 256 images per task (fixed subset, seed 0)"
    exact: bool = True                           # False: an estimate from the first images of the subset
    n_per_task: int = 0                          # images per task behind these numbers (largest task)

    @property
    def spec(self) -> MergeSpec:
        return self.specs["current"]

    def intervals(self, name: str = "current") -> dict[str, Interval]:
        """95 % Wilson intervals of merge ``name``'s accuracy per selected task and ``"mean"`` (pooled counts)."""
        res = self.results[name]
        return result_intervals({t: res[t] for t in self.specs[name].task_names})

    def individual_for(self, name: str = "current") -> dict[str, TaskResult]:
        """The fine-tuned model each task of merge ``name`` uses (same images)."""
        return {t.task: self.individual[t.variant][t.task] for t in self.specs[name].tasks}

    def summary(self, name: str = "current") -> Summary:
        return summarize(self.results[name], self.individual_for(name), self.specs[name].task_names)

    def summaries(self) -> dict[str, dict[str, float]]:
        return {name: self.summary(name).as_dict() for name in self.specs}

    def table(self) -> pd.DataFrame:
        """The per-task table (built once per comparison; do not modify the frame)."""
        if "_table" not in self.__dict__:
            object.__setattr__(self, "_table", self._build_table())
        return self.__dict__["_table"]

    def _build_table(self) -> pd.DataFrame:
        """One row per zoo task: merged?, variant, pretrained, each individual model, the current merge, the merge
        with all tasks on each variant, normalized accuracy of the current merge (NaN for unmerged tasks)."""
        spec, cur = self.spec, self.results["current"]
        variants, weights = spec.variants, spec.weights
        rows = []
        for t in self.tasks:
            merged = t in variants
            row = {"task": t, "included": merged, "variant": variants.get(t, "—"),
                   "λ_t": float(weights[t]) if merged else None, "pretrained": self.pretrained[t].accuracy}
            for v in self.variants:
                row[f"fine-tuned ({variant_label(v)})"] = self.individual[v][t].accuracy
            row["merged"] = cur[t].accuracy
            for v in self.variants:
                row[f"merged, all {variant_label(v)}"] = self.results[v][t].accuracy
            row["normalized"] = (normalized_accuracy(cur[t].accuracy, self.individual[variants[t]][t].accuracy)
                                 if merged else float("nan"))
            row["loss"] = cur[t].loss
            rows.append(row)
        frame = pd.DataFrame(rows)
        return frame if spec.has_weights else frame.drop(columns=["λ_t"])

    def results_record(self) -> dict[str, dict[str, float]]:
        """Measured per-task results for a spec's ``results`` field."""
        s, split = self.summary(), self.split
        cur = self.results["current"]
        out = {t: {f"{split}_accuracy": _round(cur[t].accuracy), f"{split}_loss": _round(cur[t].loss),
                   f"{split}_normalized_accuracy": _round(s.per_task_normalized[t]), f"{split}_n": float(cur[t].n)}
               for t in self.spec.task_names}
        out["_mean"] = {f"{split}_accuracy": _round(s.mean), f"{split}_normalized_accuracy": _round(s.normalized)}
        if not self.exact:  # an estimate: its 95 % Wilson interval goes with every accuracy
            for name, iv in self.intervals().items():
                row = out["_mean" if name == "mean" else name]
                row[f"{split}_accuracy_ci95_low"], row[f"{split}_accuracy_ci95_high"] = _round(iv.low), _round(iv.high)
        return out


@dataclass(frozen=True)
class FirstLook:
    """The number a slider move shows first: one merge's summary, exact or estimated from ``n_per_task`` images
    per task with 95 % Wilson intervals (``intervals``: per selected task and ``"mean"``, pooled counts)."""
    spec: MergeSpec
    summary: Summary
    intervals: dict[str, Interval]
    n_per_task: int
    exact: bool

    def text(self) -> str:
        """"≈ 41.0% [33.1%, 50.2%] (32 images/task, 95% CI)" for an estimate; "41.0%" when exact."""
        iv = self.intervals["mean"]
        if self.exact:
            return f"{self.summary.mean:.1%}"
        return (f"≈ {iv.estimate:.1%} [{iv.low:.1%}, {iv.high:.1%}] ({self.n_per_task} images/task, "
                f"{iv.confidence:.0%} CI)")


class Explorer:
    """Merges and evaluations for one zoo, cached; thread-safe (one computation at a time)."""

    def __init__(self, zoo, n_per_task: int = EXPLORER_N_PER_TASK, split: str = EXPLORER_SPLIT, seed: int = 0,
                 cache_size: int = 64, estimate_n_per_task: int = EXPLORER_ESTIMATE_N,
                 latency_target_s: float = EXPLORER_LATENCY_TARGET_S, compile: bool = False,
                 workers: int = 1) -> None:
        self.zoo = zoo
        self.split = split
        self.n_per_task = n_per_task
        self.seed = seed
        # ``compile``, ``workers``: the evaluator's forward through torch.compile once compiled in the background, on
        # ``workers`` CPU threads (the app's choice: sammerge.webapp.ui)
        self.evaluator = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=seed, compile=compile,
                                            workers=workers)
        # linearized zoos: exact results from f(θ0) + Σ c J τ, no forward pass per update, once the precomputed
        # f(θ0), J τ_t are loaded from the zoo's cache or prepared by a background job (exact evaluation until then)
        self.instant = (InstantPreview(zoo, self.evaluator, Subset(split, n_per_task, seed))
                        if self.evaluator.linearize_at is not None else None)
        self.cache_size = cache_size
        self._lock = FairRLock()  # sessions' evaluations, first come first served
        self._tvs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._merged: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._directions: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()  # by spec.key(with_lambda=False)
        self._results: OrderedDict[str, dict[str, TaskResult]] = OrderedDict()
        self._sweeps: dict[str, SweepResult] = {}
        self._refs: tuple[dict, dict] | None = None
        self._paper: dict[str, pd.DataFrame] = {}
        self._prefetch_cv = threading.Condition()
        self._closing = False  # set at interpreter exit: the background thread ends instead of waiting for work
        _LIVE_EXPLORERS.add(self)
        self._prefetch_queue: list[MergeSpec] = []
        self._prefetch_thread: threading.Thread | None = None
        self._prefetch_idle = threading.Event()
        self._prefetch_idle.set()
        # estimate first, refine in the background (see the module docstring)
        self.estimate_n_per_task = estimate_n_per_task
        self.latency_target_s = latency_target_s
        self._merge_lock = threading.RLock()     # merges (the page's estimate must not wait for an exact evaluation)
        self.estimates = SubsetEstimates(zoo, self.evaluator, estimate_n_per_task, self.merge, 4 * cache_size)
        self._task_evaluators: dict[str, Evaluator] = {}
        self._refine_queue: list[tuple[str, MergeSpec | None]] = []

    @property
    def preview(self) -> LinearPreview | None:
        """A linearized zoo's instant preview once ready (``self.instant``), else None: merges evaluated exactly."""
        return self.instant.get() if self.instant is not None else None

    @property
    def tasks(self) -> list[str]:
        return self.zoo.tasks

    @property
    def variants(self) -> list[str]:
        return self.zoo.variants

    def describe_evaluation(self) -> str:
        n = self.evaluator.images.shape[0] // max(1, len(self.evaluator.tasks))
        lin = f"; linearized zoo f(θ0) + J(θ − θ0): {self.instant.describe()}" if self.instant is not None else ""
        return f"{self.split} split, {n} images per task (fixed subset, seed {self.seed}){lin}"

    def engine_note(self) -> str:
        """How merges are evaluated right now: the compiled forward, eager while it compiles, or why eager."""
        compiled = self.evaluator.compiled
        if compiled is None:
            return "eager forward"
        if compiled.status == "ready":
            return "forward compiled by torch.compile"
        if compiled.status in ("not started", "compiling"):
            return "eager forward while torch.compile prepares a faster one"
        return f"eager forward (torch.compile {compiled.status})"

    def default_spec(self) -> MergeSpec:
        return MergeSpec.default_for_zoo(self.zoo)

    def task_vector(self, task: str, variant: str) -> dict[str, torch.Tensor]:
        key = (task, variant)
        if key not in self._tvs:
            self._tvs[key] = self.zoo.task_vector(task, variant)
        return self._tvs[key]

    # -- merges and results, cached by MergeSpec.key() -------------------------------------------------
    def merge(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        """The merged encoder for ``spec`` (cached; do not modify the result)."""
        key = spec.key()
        with self._merge_lock:
            if key in self._merged:
                self._merged.move_to_end(key)
                return self._merged[key]
            if spec.spec.direction_fn is not None:  # θ0 + λ τ_merged: one direction per parameter set, λ moves free
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
        """τ_merged of a method whose λ is a final scale (cached by the spec's identity without λ; do not modify)."""
        key = spec.key(with_lambda=False)
        with self._merge_lock:
            if key not in self._directions:
                kwargs = {k: v for k, v in spec.method_kwargs.items() if k != LAMBDA}
                self._directions[key] = merged_direction(
                    spec.method, self.zoo.pretrained(), [self.task_vector(t.task, t.variant) for t in spec.tasks],
                    kwargs, spec.task_ids, spec_statistics(self.zoo, spec))
                while len(self._directions) > max(2, self.cache_size // 16):
                    self._directions.popitem(last=False)
            self._directions.move_to_end(key)
            return self._directions[key]

    def evaluate(self, spec: MergeSpec) -> dict[str, TaskResult]:
        return self.evaluate_many([spec])[0]

    def evaluate_many(self, specs: Sequence[MergeSpec]) -> list[dict[str, TaskResult]]:
        """Per-task results of several merges; the uncached ones in one batched pass."""
        keys = [s.key() for s in specs]
        cached = [self._results.get(k) for k in keys]  # a dict read is atomic: no queueing for cached results
        if None not in cached:
            return cached
        with self._lock:
            todo = list(dict.fromkeys(k for k in keys if k not in self._results))
            if todo:
                first = {k: s for k, s in zip(keys, specs)}
                if self.preview is not None:
                    results = [self._linear_result(first[k]) for k in todo]
                else:
                    merged = [self.merge(first[k]) for k in todo]
                    start = time.perf_counter()
                    results = (self.evaluator.evaluate_many(merged) if len(merged) > 1
                               else [self.evaluator.evaluate(merged[0], key=f"spec:{todo[0]}")])
                    self.estimates.note_throughput(len(merged) * len(self.evaluator.labels),
                                                   time.perf_counter() - start)
                for k, res in zip(todo, results):
                    self._results[k] = res
                while len(self._results) > 4 * self.cache_size:
                    self._results.popitem(last=False)
            return [self._results[k] for k in keys]

    def _linear_result(self, spec: MergeSpec) -> dict[str, TaskResult]:
        """A linearized zoo's merge scored from f(θ0) + Σ c J τ (see ``evaluation.linear_preview``)."""
        coefs = linear_coefficients(spec)
        if coefs is not None:  # one cached J τ_t per checkpoint: every λ and λ_t is free
            return self.preview.evaluate([(t.id, (lambda t=t: self.task_vector(t.task, t.variant)), c)
                                          for t, c in zip(spec.tasks, coefs)])

        def direction():  # τ_m = merge(λ = 1) − θ0, one per method, parameters (but λ) and checkpoints
            kwargs = {k: v for k, v in spec.method_kwargs.items() if k != LAMBDA}
            return merged_direction(spec.method, self.zoo.pretrained(),
                                    [self.task_vector(t.task, t.variant) for t in spec.tasks], kwargs, spec.task_ids,
                                    spec_statistics(self.zoo, spec))
        return self.preview.evaluate([(self.sweep_key(spec), direction, spec.params[LAMBDA] if spec.has_lambda else 1.0)])

    def references(self) -> tuple[dict[str, TaskResult], dict[str, dict[str, TaskResult]]]:
        """(θ0 on every task, every individual fine-tuned model on its task), on the explorer's images."""
        refs = self._refs
        if refs is not None:  # computed once: no need to queue behind a background evaluation for it
            return refs
        with self._lock:
            if self._refs is None:
                pre = self.evaluator.evaluate(self.zoo.pretrained())
                # each fine-tuned model only on its own task's images (the only entry read): T× fewer forwards
                ft = {v: {t: self._task_evaluator(t).evaluate(self.zoo.finetuned(t, v))[t] for t in self.tasks}
                      for v in self.variants}
                self._refs = (pre, ft)
            return self._refs

    def _task_evaluator(self, task: str) -> Evaluator:
        """The explorer's evaluator restricted to ``task`` (same images, same encoder module, same device)."""
        if task not in self._task_evaluators:
            ev = self.evaluator
            sl = ev.slices[task]
            self._task_evaluators[task] = Evaluator(ev.encoder, {task: ev.heads[task]},
                                                    {task: (ev.images[sl], ev.labels[sl])}, device=ev.device,
                                                    chunk_size=ev.chunk_size, linearize_at=ev.linearize_at)
        return self._task_evaluators[task]

    def twins(self, spec: MergeSpec) -> dict[str, MergeSpec]:
        """``"current"`` plus the same merge with every task on each variant (``jobs.sweeps.twins``)."""
        from sammerge.jobs.sweeps import twins
        return twins(self.zoo, spec)

    def compare(self, spec: MergeSpec, allow_estimate: bool = False) -> Comparison:
        """The merge, its twins and the references on the same images. ``allow_estimate``: when exact evaluation
        would be slow (:meth:`estimating`) and is not done yet, an estimate on the first k images per task (its
        ``exact`` is False) while the exact evaluation is queued in the background (:meth:`refine`)."""
        specs = self.twins(spec)
        if allow_estimate and not self.is_exact_ready(spec) and self.estimating():
            est = self.estimates
            results = est.evaluate_many(list(specs.values()))
            ft = {v: {t: est.individual(t, v) for t in self.tasks} for v in self.variants}
            self.refine(spec)
            return Comparison(tuple(self.tasks), tuple(self.variants), specs, dict(zip(specs, results)),
                              est.pretrained(), ft, self.split, est.describe(self.split, self.seed), exact=False,
                              n_per_task=est.k)
        results = self.evaluate_many(list(specs.values()))
        pre, ft = self.references()
        return Comparison(tuple(self.tasks), tuple(self.variants), specs, dict(zip(specs, results)), pre, ft,
                          self.split, self.describe_evaluation(), n_per_task=self.images_per_task())

    def summary(self, spec: MergeSpec) -> Summary:
        """Summary of one merge (no twins): what the page shows first."""
        _, ft = self.references()
        return summarize(self.evaluate(spec), {t.task: ft[t.variant][t.task] for t in spec.tasks}, spec.task_names)

    def first_look(self, spec: MergeSpec, allow_estimate: bool = True) -> FirstLook:
        """The merge's summary with 95 % Wilson intervals: exact when fast enough or already refined, else an
        estimate on the first k images per task with the exact evaluation queued in the background."""
        if allow_estimate and not self.is_exact_ready(spec) and self.estimating():
            res = self.estimates.evaluate_many([spec])[0]
            individual = {t.task: self.estimates.individual(t.task, t.variant) for t in spec.tasks}
            self.refine(spec)
            n, exact = self.estimates.k, False
        else:
            res = self.evaluate(spec)
            _, ft = self.references()
            individual = {t.task: ft[t.variant][t.task] for t in spec.tasks}
            n, exact = self.images_per_task(), True
        return FirstLook(spec, summarize(res, individual, spec.task_names),
                         result_intervals({t: res[t] for t in spec.task_names}), n, exact)

    def is_cached(self, spec: MergeSpec) -> bool:
        """Whether the results of ``spec`` are in memory (showing it costs no evaluation)."""
        return spec.key() in self._results

    def is_exact_ready(self, spec: MergeSpec) -> bool:
        """Whether the exact comparison of ``spec`` (its twins and the references) needs no evaluation."""
        return self._refs is not None and all(self.is_cached(s) for s in self.twins(spec).values())

    # -- estimates (``explorer.estimates``): the first k images per task of the same fixed subset --------
    def images_per_task(self) -> int:
        """Images per task of the exact evaluation (the largest task; a small split may hold fewer)."""
        return SubsetEstimates.images_per_task(self.evaluator)

    def estimate_size(self) -> int:
        """k: images per task of an estimate (at most the exact budget)."""
        return self.estimates.k

    @property
    def images_per_s(self) -> float | None:
        """The encoder's measured forward throughput (None before the first measurement)."""
        return self.estimates.images_per_s

    def estimating(self) -> bool:
        """Whether merges are shown as estimates first: not on a linearized zoo (its preview is exact and
        instant), not when k covers every image, and only when one exact evaluation at the measured throughput
        would take longer than ``latency_target_s`` (the first call measures it: θ0 on the estimate's images)."""
        if self.preview is not None or self.estimates.covers_everything():
            return False
        return self.estimates.predicted_exact_s() > self.latency_target_s

    def is_estimated(self, spec: MergeSpec) -> bool:
        return self.estimates.is_estimated(spec)

    def refine(self, spec: MergeSpec) -> None:
        """Queue the exact evaluation of ``spec``'s comparison (references, the merge, its twins) on the background
        thread, ahead of any prefetch; a newer call replaces what an older one has not started."""
        with self._prefetch_cv:
            items = [] if self._refs is not None else [("references", None)]
            items += [("exact", s) for s in self.twins(spec).values() if not self.is_cached(s)]
            self._refine_queue = items
            self._wake()

    # -- background prefetch of the merges a user is likely to ask for next -----------------------------
    def neighbours(self, spec: MergeSpec, steps: int = 1) -> list[MergeSpec]:
        """``spec`` with the global λ moved by ±1…``steps`` slider steps (within the slider's range)."""
        if not spec.has_lambda:
            return []
        p = next(p for p in spec.spec.global_params if p.name == LAMBDA)
        lo, hi = p.slider_range
        step = p.step or 0.05
        lam = spec.params[LAMBDA]
        out = []
        for k in range(1, steps + 1):
            for value in (lam + k * step, lam - k * step):
                value = round(value, 6)
                if (lo is None or value >= lo - 1e-9) and (hi is None or value <= hi + 1e-9):
                    out.append(spec.with_params(**{LAMBDA: value}))
        return out

    def prefetch(self, specs: Sequence[MergeSpec], estimate: bool = False) -> None:
        """Evaluate ``specs`` and (``prefetch_twins``) their all-plain / all-SAM twins in a background thread, one
        merge at a time (a request from the page waits for at most one); a newer call replaces what an older one has
        not started.
        ``estimate``: only their estimates (on the first k images per task), after any pending refinement."""
        if not self.prefetch_enabled:
            return
        with self._prefetch_cv:
            done = self.is_estimated if estimate else self.is_cached
            kind = "estimate" if estimate else "exact"
            # every neighbour's own merge first (what the page shows first after a move), then their twins
            order = [list(self.twins(s).values()) for s in specs]
            order = [group[0] for group in order] + (
                [t for group in order for t in group[1:]] if self.prefetch_twins else [])
            self._prefetch_queue = [(kind, t) for t in order if not done(t)]
            self._wake()

    def _wake(self) -> None:
        """Start (or wake) the background thread when there is work (call with ``_prefetch_cv`` held)."""
        if not self._prefetch_queue and not self._refine_queue:
            return
        self._prefetch_idle.clear()
        if self._prefetch_thread is None:
            self._prefetch_thread = threading.Thread(target=self._prefetch_loop, daemon=True, name="sammerge-prefetch")
            self._prefetch_thread.start()
        self._prefetch_cv.notify()

    def wait_prefetched(self, timeout: float | None = None) -> bool:
        """Block until the background thread (refinements, prefetch) has nothing left to do (tests, benchmarks)."""
        return self._prefetch_idle.wait(timeout)

    def refining(self, spec: MergeSpec) -> bool:
        """Whether the exact comparison of ``spec`` is not ready yet but queued or running in the background."""
        return not self.is_exact_ready(spec) and not self._prefetch_idle.is_set()

    prefetch_idle_exit_s = 30.0  # the worker thread ends after this long without work
    prefetch_enabled = True
    prefetch_twins = True  # False: only the neighbours' own merges (what the page shows first), not their twins

    def _prefetch_loop(self) -> None:
        while True:
            with self._prefetch_cv:
                if self._closing:
                    self._prefetch_thread = None
                    self._prefetch_idle.set()
                    return
                if not self._prefetch_queue and not self._refine_queue:
                    self._prefetch_idle.set()
                    self._prefetch_cv.wait(self.prefetch_idle_exit_s)
                    if not self._prefetch_queue and not self._refine_queue:  # idle: end the thread (it keeps the
                        self._prefetch_thread = None                          # explorer alive otherwise)
                        return
                kind, spec = (self._refine_queue or self._prefetch_queue).pop(0)
            try:
                if kind == "references":
                    self.references()
                elif kind == "estimate":
                    self.estimates.evaluate_many([spec])
                else:
                    self.evaluate(spec)
            except Exception:  # noqa: BLE001 — a prefetch never fails the page; on demand it reports the error
                pass

    def close(self, timeout: float | None = 60.0) -> None:
        """Drop queued background work and wait for the evaluation in progress (at most ``timeout`` s)."""
        with self._prefetch_cv:
            self._closing = True
            self._prefetch_queue, self._refine_queue = [], []
            thread = self._prefetch_thread
            self._prefetch_cv.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- λ sweeps: once per method, parameters (but λ) and variant set ---------------------------------
    @staticmethod
    def sweep_key(spec: MergeSpec) -> str:
        return spec.key(with_lambda=False)

    def _shares_sweep_cache(self) -> bool:
        """Whether this explorer evaluates on the images ``sammerge sweep`` caches sweeps for."""
        from sammerge.jobs.sweeps import EVALUATION
        return {"split": self.split, "n_per_task": self.n_per_task, "seed": self.seed} == EVALUATION

    def cached_sweeps(self, spec: MergeSpec) -> dict[str, SweepResult] | None:
        """The λ sweeps of the merge and its twins if already computed — here, or on disk by ``sammerge sweep``,
        another server or a shipped zoo (``ZOO/analysis/sweeps``) — else None."""
        twins = self.twins(spec)
        keys = {name: self.sweep_key(s) for name, s in twins.items()}
        if not all(k in self._sweeps for k in keys.values()) and self._shares_sweep_cache():
            from sammerge.jobs.sweeps import load_cached_sweep
            for name, s in twins.items():
                if keys[name] not in self._sweeps:
                    found = load_cached_sweep(self.zoo, s)
                    if found is not None:
                        self._sweeps[keys[name]] = found
        if all(k in self._sweeps for k in keys.values()):
            return {name: self._sweeps[k] for name, k in keys.items()}
        return None

    def sweeps(self, spec: MergeSpec, progress: Progress | None = None) -> dict[str, SweepResult]:
        """Shared-λ sweeps on the explorer's images over the method's λ grid, for the merge and its twins."""
        twins = self.twins(spec)
        out = {}
        with self._lock:
            for i, (name, s) in enumerate(twins.items()):
                key = self.sweep_key(s)
                if key not in self._sweeps and self._shares_sweep_cache():
                    from sammerge.jobs.sweeps import load_cached_sweep
                    found = load_cached_sweep(self.zoo, s)
                    if found is not None:
                        self._sweeps[key] = found
                if key not in self._sweeps:
                    kwargs = {k: v for k, v in s.method_kwargs.items() if k != LAMBDA}
                    self._sweeps[key] = sweep_shared_lambda(
                        self.evaluator, s.method, self.zoo.pretrained(),
                        [self.task_vector(t.task, t.variant) for t in s.tasks], kwargs, task_ids=s.task_ids,
                        statistics=spec_statistics(self.zoo, s))
                    if self._shares_sweep_cache():  # kept on disk for the next start and `sammerge sweep`
                        from sammerge.jobs.sweeps import save_sweep
                        try:
                            save_sweep(self.zoo, s, self._sweeps[key])
                        except (OSError, SammergeError):
                            pass  # a read-only zoo: the sweep stays in memory
                out[name] = self._sweeps[key]
                if progress:
                    progress(i + 1, len(twins), "λ sweep")
        return out

    # -- exports ----------------------------------------------------------------------------------------
    def export_spec(self, spec: MergeSpec, allow_estimate: bool = False) -> MergeSpec:
        """``spec`` with its measured results and a note on how they were measured (the config download);
        ``allow_estimate``: the estimate (with its intervals, and saying so) while the exact numbers are not ready."""
        cmp = self.compare(spec, allow_estimate=allow_estimate)
        return spec.evolve(results=cmp.results_record(),
                           notes=f"exported from the sammerge explorer; results measured on the {cmp.evaluation}")

    # -- paper table ------------------------------------------------------------------------------------
    def table_methods(self) -> list[str]:
        """The paper table's methods: $SAMMERGE_TABLE_METHODS (comma-separated names) where set, else every static
        method (``merging.table_methods``; those that read images when the zoo stores training images). On a slow zoo
        the whole set can take long."""
        from sammerge.merging.statistics import zoo_table_methods
        everything = zoo_table_methods(self.zoo)
        chosen = [m.strip() for m in os.environ.get("SAMMERGE_TABLE_METHODS", "").split(",") if m.strip()]
        unknown = [m for m in chosen if m not in everything]
        if unknown:
            print(f"sammerge: SAMMERGE_TABLE_METHODS names {', '.join(unknown)}, not among this zoo's table methods "
                  f"({', '.join(everything)}); ignored", file=sys.stderr)
        return [m for m in chosen if m in everything] or everything

    def _paper_inputs(self) -> dict:
        from sammerge.merging import get_method
        return {"methods": {m: list(get_method(m).lambda_range or ()) for m in self.table_methods()},
                "variants": self.zoo.variants}

    def paper_table_cached(self) -> pd.DataFrame | None:
        """The paper table if computed before — in this process or on disk (``ZOO/analysis/cache``) — else None."""
        from sammerge.analytics.report import cached

        with self._lock:
            if "table" not in self._paper:
                found = cached(self.zoo, "paper_table", self._paper_inputs(), dict, cached_only=True)
                if found is not None:
                    self._paper["table"] = _frame_from_json(found)
            return self._paper.get("table")

    def paper_table(self, progress: Progress | None = None) -> pd.DataFrame:
        """The paper table (``evaluation.protocol.paper_table``), computed once and kept on disk with the zoo."""
        from sammerge.analytics.report import cached
        from sammerge.evaluation.protocol import paper_table

        with self._lock:
            if self.paper_table_cached() is None:
                found = cached(self.zoo, "paper_table", self._paper_inputs(),
                               lambda: _frame_to_json(paper_table(self.zoo, methods=self.table_methods(), progress=progress)), threads=None)
                self._paper["table"] = _frame_from_json(found)
            return self._paper["table"]


# A daemon thread still inside torch while Python finalizes aborts the process ("terminate called without an
# active exception"), so at exit every explorer drops its queued work and lets the running evaluation finish.
_LIVE_EXPLORERS: "weakref.WeakSet[Explorer]" = weakref.WeakSet()


@atexit.register
def _close_explorers() -> None:
    for explorer in list(_LIVE_EXPLORERS):
        explorer.close()


def _frame_to_json(frame: pd.DataFrame) -> dict:
    return {"columns": list(frame.columns), "rows": frame.astype(object).where(frame.notna(), None).values.tolist(),
            "attrs": dict(frame.attrs)}


def _frame_from_json(data: dict) -> pd.DataFrame:
    frame = pd.DataFrame(data["rows"], columns=data["columns"]).fillna(value=float("nan")).infer_objects()
    frame.attrs.update(data.get("attrs", {}))
    return frame
