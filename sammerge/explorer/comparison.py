"""What a slider move shows: :class:`FirstLook` (one merge's summary, exact or estimated) and :class:`Comparison`
(the merge beside its all-plain / all-SAM twins and the references, on the same images). Both only hold numbers;
figures, tables, readings and exports read them."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from sammerge.evaluation.estimate import Interval, result_intervals
from sammerge.evaluation.evaluator import TaskResult
from sammerge.evaluation.protocol import Summary, normalized_accuracy, summarize
from sammerge.explorer.style import variant_label
from sammerge.merging import MergeSpec

__all__ = ["Comparison", "FirstLook"]


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
