"""The explorer's λ sweeps: one per method, parameters (but λ) and variant set, for a merge and its twins — kept in
memory and, on the images ``sammerge sweep`` uses, on disk with the zoo (``ZOO/analysis/sweeps``), so another
server, the CLI and a shipped zoo share them."""
from __future__ import annotations

from sammerge.errors import SammergeError
from sammerge.evaluation.evaluator import Evaluator
from sammerge.evaluation.search import SweepResult, sweep_shared_lambda
from sammerge.evaluation.subset import EXPLORER_SUBSET, EvalSubset
from sammerge.explorer.merges import MergeCache, SpecFamily
from sammerge.jobs.sweeps import load_cached_sweep, save_sweep
from sammerge.merging import LAMBDA, MergeSpec, spec_statistics
from sammerge.progress import Progress

__all__ = ["SweepCache", "sweep_key"]


def sweep_key(spec: MergeSpec) -> str:
    return spec.key(with_lambda=False)


class SweepCache:
    def __init__(self, zoo, evaluator: Evaluator, subset: EvalSubset, merges: MergeCache, family: SpecFamily,
                 lock) -> None:
        self.zoo, self.evaluator, self.merges, self.family, self.lock = zoo, evaluator, merges, family, lock
        self.on_disk = subset == EXPLORER_SUBSET  # sweeps on other images are kept in memory only
        self._sweeps: dict[str, SweepResult] = {}

    def _load(self, spec: MergeSpec) -> None:
        key = sweep_key(spec)
        if key not in self._sweeps and self.on_disk:
            found = load_cached_sweep(self.zoo, spec)
            if found is not None:
                self._sweeps[key] = found

    def cached(self, spec: MergeSpec) -> dict[str, SweepResult] | None:
        """The sweeps of the merge and its twins if computed before (here or on disk), else None."""
        pairs = self.family.twins(spec)
        for s in pairs.values():
            self._load(s)
        keys = {name: sweep_key(s) for name, s in pairs.items()}
        return {name: self._sweeps[k] for name, k in keys.items()} if all(k in self._sweeps for k in keys.values()) \
            else None

    def sweeps(self, spec: MergeSpec, progress: Progress | None = None) -> dict[str, SweepResult]:
        """Shared-λ sweeps over the method's λ grid, for the merge and its twins (computed where missing)."""
        pairs = self.family.twins(spec)
        out = {}
        with self.lock:
            for i, (name, s) in enumerate(pairs.items()):
                self._load(s)
                key = sweep_key(s)
                if key not in self._sweeps:
                    kwargs = {k: v for k, v in s.method_kwargs.items() if k != LAMBDA}
                    self._sweeps[key] = sweep_shared_lambda(
                        self.evaluator, s.method, self.zoo.pretrained(),
                        [self.merges.task_vector(t.task, t.variant) for t in s.tasks], kwargs, task_ids=s.task_ids,
                        statistics=spec_statistics(self.zoo, s))
                    if self.on_disk:  # kept for the next start and `sammerge sweep`
                        try:
                            save_sweep(self.zoo, s, self._sweeps[key])
                        except (OSError, SammergeError):
                            pass  # a read-only zoo: the sweep stays in memory
                out[name] = self._sweeps[key]
                if progress:
                    progress(i + 1, len(pairs), "λ sweep")
        return out
