"""Shared-λ sweeps as jobs: one job per (method, variant set, chunk of λ), results cached by content.

A sweep is exactly the explorer's (``Explorer.sweeps``): :func:`sammerge.evaluation.search.sweep_shared_lambda`
over the method's λ grid on the explorer's evaluation images (val split, 256 images per task, seed 0), for a
merge with λ left out. Its cache key is a sha256 over the merge without λ (``MergeSpec.identity(with_lambda=False)``:
method, parameters, tasks, variants, weights, densities, per-layer coefficients), the sha256 of θ0 and of every checkpoint it uses, and the evaluation settings — so the
cached result is found again after the zoo moves, and never when a checkpoint changed. A bf16 sweep
(``precision="bf16"``: the encoder forward under bf16 autocast) has its own key: the explorer never shows it as
fp32 numbers. Layout::

    ZOO/analysis/sweeps/{key}.json             the whole sweep (a SweepResult), what the explorer reads
    ZOO/analysis/sweeps/chunks/{key}-{i}.json  one chunk of λ values (a job's output)
    ZOO/analysis/sweeps/.jobs/{id}.json        the chunk jobs' records
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

from sammerge.errors import ConfigError
from sammerge.evaluation.subset import EXPLORER_SUBSET
from sammerge.evaluation.search import SHARED_PROTOCOL, SweepResult, lambda_grid, sweep_shared_lambda
from sammerge.cache import analysis_dir
from sammerge.io import atomic_write_text
from sammerge.jobs.runner import Job, Resources
from sammerge.merging import LAMBDA, MergeSpec, spec_statistics
from sammerge.progress import Progress

FORMAT = 1
EVALUATION = EXPLORER_SUBSET.as_dict()  # the explorer's images: the sweeps it reads are computed on these
SWEEP_PRECISIONS = ("fp32", "bf16")
_EVALUATORS: dict[tuple, object] = {}


def sweeps_dir(zoo) -> Path:
    return analysis_dir(zoo) / "sweeps"


def evaluation_settings(precision: str = "fp32") -> dict:
    """The explorer's evaluation, with ``precision`` (``Evaluator``'s) named only when it is not fp32 (so fp32 keys
    are the explorer's)."""
    if precision not in SWEEP_PRECISIONS:
        raise ConfigError(f"sweep precision must be {' or '.join(SWEEP_PRECISIONS)}, not '{precision}'")
    return dict(EVALUATION) if precision == "fp32" else {**EVALUATION, "precision": precision}


def merge_identity(spec: MergeSpec) -> dict:
    """The merge without λ (``MergeSpec.identity(with_lambda=False)``): what a sweep over λ depends on besides files."""
    return spec.identity(with_lambda=False)


def sweep_key(zoo, spec: MergeSpec, evaluation: Mapping = EVALUATION) -> str:
    """sha256 over the merge without λ, the files it reads (θ0 and each checkpoint) and the evaluation."""
    m = zoo.manifest
    files = [m.pretrained.sha256, m.heads.sha256] + [m.checkpoint(t.task, t.variant).sha256 for t in spec.tasks]
    payload = json.dumps({"format": FORMAT, "merge": merge_identity(spec), "files": files,
                          "evaluation": dict(evaluation), "grid": lambda_grid(spec.method)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def twins(zoo, spec: MergeSpec) -> dict[str, MergeSpec]:
    """The merge (``"current"``) and the same merge with every task on each zoo variant, as the explorer shows."""
    return {"current": spec, **{v: spec.with_variants(v, zoo) for v in zoo.variants}}


def _result_from_json(data: dict) -> SweepResult:
    return SweepResult(protocol=data["protocol"], method=data["method"], lambdas=data["lambdas"],
                       val_mean=data["val_mean"], val_per_task=data["val_per_task"], best_lambda=data["best_lambda"],
                       best_val_mean=data["best_val_mean"], test=None, n_evaluations=data["n_evaluations"])


def load_cached_sweep(zoo, spec: MergeSpec) -> SweepResult | None:
    """The cached sweep of ``spec`` (λ ignored) if one was computed, else None."""
    return load_cached_sweep_by_key(sweeps_dir(zoo), sweep_key(zoo, spec))


# -- the job -------------------------------------------------------------------------------------------------
def _evaluator(zoo, evaluation: Mapping):
    from sammerge.evaluation.evaluator import Evaluator
    key = (str(zoo.path.resolve()), zoo.manifest.pretrained.sha256, json.dumps(dict(evaluation), sort_keys=True))
    if key not in _EVALUATORS:
        _EVALUATORS.clear()  # one zoo's images per process
        _EVALUATORS[key] = Evaluator.from_zoo(zoo, **evaluation)
    return _EVALUATORS[key]


def _spec_from_identity(zoo, merge: dict) -> MergeSpec:
    """The spec of a merge identity (:meth:`MergeSpec.identity`: tasks ``[task, variant, weight, density]`` +
    optional ``{group: s}`` + optional ``{per-task parameter: value}``)."""
    rows = merge["tasks"]
    extra: dict[str, dict[str, float]] = {}
    for r in rows:
        for name, value in (r[5] if len(r) > 5 else {}).items():
            extra.setdefault(name, {})[r[0]] = value
    return MergeSpec.for_zoo(zoo, merge["method"], merge["params"], variants={r[0]: r[1] for r in rows},
                             weights={r[0]: r[2] for r in rows}, densities={r[0]: r[3] for r in rows},
                             tasks=[r[0] for r in rows], layer_weights={r[0]: r[4] for r in rows if len(r) > 4},
                             per_task=extra)


def job_sweep_chunk(ctx, inp: dict) -> dict:
    """Validation results of merge(λ) for one chunk of λ values (``sweep_shared_lambda`` on those λ)."""
    from sammerge.zoo import open_zoo

    zoo = open_zoo(ctx.root.parent.parent)  # ROOT = ZOO/analysis/sweeps
    spec = _spec_from_identity(zoo, inp["merge"])
    kwargs = {k: v for k, v in spec.method_kwargs.items() if k != LAMBDA}
    tvs = [zoo.task_vector(t.task, t.variant) for t in spec.tasks]
    res = sweep_shared_lambda(_evaluator(zoo, inp["evaluation"]), spec.method, zoo.pretrained(), tvs, kwargs,
                              lambdas=inp["lambdas"] or None, task_ids=spec.task_ids,
                              statistics=spec_statistics(zoo, spec))
    data = {"protocol": res.protocol, "method": res.method, "lambdas": res.lambdas, "val_mean": res.val_mean,
            "val_per_task": res.val_per_task}
    atomic_write_text(ctx.path(inp["output"]), json.dumps(data, indent=1))
    ctx.progress(1, 1, f"λ sweep {spec.method} ({len(res.val_mean)} points)")
    return {"points": len(res.val_mean)}


def sweep_jobs(zoo, specs: Sequence[MergeSpec], chunk_size: int = 8, threads: int | None = 1,
               precision: str = "fp32") -> dict[str, list[Job]]:
    """key → the chunk jobs of each distinct sweep (specs that differ only in λ share one)."""
    if chunk_size < 1:
        raise ConfigError(f"--chunk must be ≥ 1, got {chunk_size}")
    evaluation = evaluation_settings(precision)
    out: dict[str, list[Job]] = {}
    for spec in specs:
        key = sweep_key(zoo, spec, evaluation)
        if key in out:
            continue
        grid = lambda_grid(spec.method)
        chunks = [grid[i:i + chunk_size] for i in range(0, len(grid), chunk_size)] or [[]]
        merge = merge_identity(spec)
        label = f"{spec.method} · {'/'.join(sorted({t.variant for t in spec.tasks}))}"
        out[key] = [Job("sweep", f"λ sweep {label} [{c[0] if c else '—'}…{c[-1] if c else ''}]", job_sweep_chunk,
                        {"merge": merge, "key": key, "lambdas": c, "evaluation": evaluation,
                         "output": f"chunks/{key}-{i}.json"},
                        outputs=(f"chunks/{key}-{i}.json",), threads=threads, resources=Resources(num_cpus=threads or 1))
                    for i, c in enumerate(chunks)]
    return out


def combine(root: Path, key: str, jobs: list[Job]) -> SweepResult:
    """Concatenate the chunks; best λ = highest mean, ties → smaller λ (as ``sweep_shared_lambda``)."""
    parts = [json.loads((root / j.inputs["output"]).read_text(encoding="utf-8")) for j in jobs]
    lambdas = [lam for p in parts for lam in p["lambdas"]]
    means = [m for p in parts for m in p["val_mean"]]
    per_task = [r for p in parts for r in p["val_per_task"]]
    best = max(range(len(means)), key=lambda i: (round(means[i], 12), -i))
    result = SweepResult(parts[0]["protocol"] if not lambdas else SHARED_PROTOCOL, parts[0]["method"], lambdas,
                         means, per_task, float(lambdas[best]) if lambdas else None, means[best], None, len(means))
    _write(root, key, result, jobs[0].inputs["merge"], jobs[0].inputs["evaluation"])
    return result


def _write(root: Path, key: str, result: SweepResult, merge: dict, evaluation: Mapping) -> None:
    data = {"format": FORMAT, "key": key, "protocol": result.protocol, "method": result.method,
            "lambdas": list(result.lambdas), "val_mean": list(result.val_mean), "val_per_task": list(result.val_per_task),
            "best_lambda": result.best_lambda, "best_val_mean": result.best_val_mean,
            "n_evaluations": result.n_evaluations, "merge": merge, "evaluation": dict(evaluation)}
    atomic_write_text(root / f"{key}.json", json.dumps(data, indent=1))


def save_sweep(zoo, spec: MergeSpec, result: SweepResult) -> None:
    """Store a sweep computed elsewhere on the explorer's images (``Explorer.sweeps``) in the cache, so that the
    next server start, or another process, finds it."""
    if result.lambdas and result.lambdas != lambda_grid(spec.method):
        raise ConfigError(f"sweep of '{spec.method}': only sweeps over the method's λ grid are cached")
    _write(sweeps_dir(zoo), sweep_key(zoo, spec), result, merge_identity(spec), EVALUATION)


def run_sweeps(zoo, specs: Sequence[MergeSpec], backend: str = "local", address: str | None = None,
               chunk_size: int = 8, progress: Progress | None = None, cancel_event=None,
               threads: int | None = 1, precision: str = "fp32") -> dict[str, SweepResult]:
    """Compute (or reuse) the sweep of every spec; key → SweepResult, each also written to the cache.
    ``precision``: "fp32" (the explorer's) or "bf16" (cached under its own keys)."""
    from sammerge.jobs import check_backend, clear_cancel, run_graph

    check_backend(backend, address)
    root = sweeps_dir(zoo)
    clear_cancel(root)  # a new run was asked for
    by_key = sweep_jobs(zoo, specs, chunk_size, threads, precision)
    todo = {k: jobs for k, jobs in by_key.items() if not (root / f"{k}.json").is_file()}
    all_jobs = [j for jobs in todo.values() for j in jobs]
    if all_jobs:
        run_graph(all_jobs, root, backend, progress, address, cancel_event)
    out = {}
    for key, jobs in by_key.items():
        cached = load_cached_sweep_by_key(root, key)
        out[key] = cached if cached is not None and key not in todo else combine(root, key, jobs)
    return out


def load_cached_sweep_by_key(root: Path, key: str) -> SweepResult | None:
    try:
        return _result_from_json(json.loads((root / f"{key}.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError):
        return None
