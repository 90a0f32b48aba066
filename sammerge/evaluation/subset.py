"""The one owner of "which images a merge is scored on": :class:`EvalSubset` (split, images per task, seed).

The explorer, the sweeps it shares with ``sammerge sweep`` (``ZOO/analysis/sweeps``) and the linearized zoos'
instant preview all score on ``EvalSubset()`` — the validation split, 256 images per task, seed 0 — unless told
otherwise; a cache made on other images is never read for these.
"""
from __future__ import annotations

from dataclasses import dataclass

from sammerge.evaluation.evaluator import Evaluator

__all__ = ["EvalSubset", "EXPLORER_SUBSET"]


@dataclass(frozen=True)
class EvalSubset:
    """The fixed evaluation images: ``n_per_task`` images per task of ``split`` (all when None), drawn with ``seed``."""
    split: str = "val"
    n_per_task: int | None = 256
    seed: int = 0

    def as_dict(self) -> dict:
        return {"split": self.split, "n_per_task": self.n_per_task, "seed": self.seed}

    def evaluator(self, zoo, **options) -> Evaluator:
        """An :class:`~sammerge.evaluation.evaluator.Evaluator` on these images (``options``: device, precision, …)."""
        return Evaluator.from_zoo(zoo, split=self.split, n_per_task=self.n_per_task, seed=self.seed, **options)

    def describe(self) -> str:
        n = "all" if self.n_per_task is None else str(self.n_per_task)
        return f"{self.split} split, {n} images per task (fixed subset, seed {self.seed})"


EXPLORER_SUBSET = EvalSubset()
