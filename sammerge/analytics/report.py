"""Precomputed analytics for a zoo (``ZOO/analysis/analysis.json``) and cached on-demand computations.

``analyze_zoo`` computes the standard set for every variant; the result is keyed by
``zoo.checkpoint_hashes()`` so that any changed checkpoint invalidates it. On-demand functions
(landscape planes, 1-D curves, disentanglement for another pair, sharpness of a merged model) are
cached under ``ZOO/analysis/cache/{kind}-{hash}.json``, keyed by a hash of every input.

Progress callbacks have the package's one signature, ``progress(done, total, stage)``
(:mod:`sammerge.progress`).
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from sammerge import __version__
from sammerge.cache import (ANALYSIS_FORMAT, analysis_dir, cache_key, cached, jsonable,  # noqa: F401
                            torch_threads, write_json)
from sammerge.progress import Progress
from sammerge.errors import ConfigError



def analysis_path(zoo) -> Path:
    return analysis_dir(zoo) / "analysis.json"


# -- settings -------------------------------------------------------------------------------------------
def default_settings(quick: bool = False) -> dict[str, Any]:
    """Every knob of ``analyze_zoo`` (recorded in the output). ``quick``: smaller, for tests and previews."""
    s = {
        "split": "val", "n_images": 256, "batch_seed": 0,
        "eig_method": "lanczos", "eig_iters": 20, "eig_tol": 1e-2, "eig_seed": 0,
        "trace_samples": 30, "trace_seed": 0,
        "m": 64, "rho": 0.05, "rho_adaptive": 0.5, "m_steps": 1, "m_seed": 0,
        "avg_sigma": 0.01, "avg_samples": 4, "avg_seed": 0,
        "pairs": None,  # None: the first two tasks
        "disent_range": [0.0, 1.5], "disent_n": 11, "disent_n_per_task": 256, "disent_seed": 0,
        "curvature_wrt": "all floating encoder parameters (conv weights + GroupNorm affine); heads frozen",
    }
    if quick:
        s.update(n_images=64, eig_iters=8, trace_samples=4, m=32, avg_samples=2, disent_n=4,
                 disent_n_per_task=64)
    return s


# -- the standard set -------------------------------------------------------------------------------------
def load_analysis(zoo) -> dict | None:
    """The stored analysis if it exists, parses and matches the zoo's current checkpoint hashes; else None."""
    path = analysis_path(zoo)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != ANALYSIS_FORMAT:
        return None
    if data.get("zoo_hashes") != zoo.checkpoint_hashes():
        return None
    return data


def _pairs(zoo, pairs) -> list[tuple[str, str]]:
    if pairs is None:
        if len(zoo.tasks) < 2:
            return []
        return [(zoo.tasks[0], zoo.tasks[1])]
    out = []
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ConfigError(f"analysis: a task pair needs two different tasks, got {pair!r}")
        for t in pair:
            if t not in zoo.tasks:
                raise ConfigError(f"analysis: unknown task '{t}' (zoo has: {', '.join(zoo.tasks)})")
        out.append((pair[0], pair[1]))
    return out


def checkpoint_sharpness(encoder, head, images, labels, params, settings: Mapping[str, Any]) -> dict:
    """Top Hessian eigenvalue, Hutchinson trace, m-sharpness (plain + adaptive) and average sharpness
    of ``params`` on one fixed batch, with the knobs of ``settings`` (see :func:`default_settings`)."""
    from sammerge.analytics.perturbation import average_sharpness, m_sharpness
    from sammerge.analytics.sharpness import (batch_loss_fns, hessian_trace, num_params, parameter_keys, task_loss_fn,
                                              top_eigenvalues)

    s = {**default_settings(), **settings}
    f = task_loss_fn(encoder, head, images, labels)
    keys = parameter_keys(encoder)
    t0 = time.perf_counter()
    eig = top_eigenvalues(f, params, k=1, iters=s["eig_iters"], tol=s["eig_tol"], seed=s["eig_seed"],
                          method=s["eig_method"], keys=keys)
    t_eig = time.perf_counter() - t0
    tr = hessian_trace(f, params, n_samples=s["trace_samples"], seed=s["trace_seed"], keys=keys)
    fns = batch_loss_fns(encoder, head, images, labels, min(s["m"], len(labels)))
    ms = m_sharpness(fns, params, rho=s["rho"], steps=s["m_steps"], seed=s["m_seed"], keys=keys)
    ms_a = m_sharpness(fns, params, rho=s["rho_adaptive"], adaptive=True, steps=s["m_steps"], seed=s["m_seed"], keys=keys)
    avg = average_sharpness(f, params, sigma=s["avg_sigma"], n_samples=s["avg_samples"], seed=s["avg_seed"], keys=keys)
    with torch.no_grad():
        logits = head(torch.func.functional_call(encoder, dict(params), (images,)))
    return {
        "top_eigenvalue": eig.eigenvalues[0], "eig_products": eig.iterations, "eig_converged": eig.converged,
        "eig_seconds": round(t_eig, 3),
        "trace_mean": tr.mean, "trace_se": tr.se,
        "m_sharpness": ms.mean, "m_sharpness_se": ms.se,
        "m_sharpness_adaptive": ms_a.mean, "m_sharpness_adaptive_se": ms_a.se,
        "avg_sharpness": avg.mean, "avg_sharpness_se": avg.se,
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "n_params": num_params(params, keys), "n_images": int(len(labels)),
    }


def analyze_zoo(zoo, progress: Progress | None = None, n_images: int | None = None, quick: bool = False,
                force: bool = False, pairs: Sequence[tuple[str, str]] | None = None,
                variants: Sequence[str] | None = None, save: bool = True, threads: int | None = 1,
                **overrides) -> dict:
    """Compute (or load, if valid and computed with the same settings) the standard analytics of a zoo.

    Per checkpoint (task × variant): top Hessian eigenvalue, Hutchinson trace (mean, s.e.), m-sharpness
    (plain and adaptive), average sharpness, loss and accuracy — on the fixed batch
    ``Split.subset(n_images, batch_seed)`` of its task's ``split``. Per variant: task-vector cosine
    and sign-conflict matrices, and the disentanglement-error heatmap + mean for ``pairs`` (default:
    the first two tasks). Per (task, variant, layer): task-vector norm. ``overrides`` set any key of
    :func:`default_settings`. ``progress(done, total, stage)`` is called as work completes.
    ``threads``: torch CPU threads while computing (restored afterwards; None = unchanged).
    """
    with torch_threads(threads):
        return _analyze_zoo(zoo, progress, n_images, quick, force, pairs, variants, save, overrides)


def _merged_settings(what: str, quick: bool, overrides: dict, n_images: int | None) -> dict:
    """default_settings(quick) updated with known overrides (unknown → ConfigError) and n_images."""
    settings = default_settings(quick)
    unknown = [k for k in overrides if k not in settings]
    if unknown:
        raise ConfigError(f"{what}: unknown setting '{unknown[0]}' (known: {', '.join(settings)})")
    settings.update(overrides)
    if n_images is not None:
        settings["n_images"] = int(n_images)
    return settings


def _analyze_zoo(zoo, progress, n_images, quick, force, pairs, variants, save, overrides) -> dict:
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.analytics.interference import cosine_matrix, disentanglement_error, layer_norms, sign_conflict_matrix
    from sammerge.analytics.sharpness import fixed_batch

    settings = _merged_settings("analyze", quick, overrides, n_images)
    if pairs is not None:
        settings["pairs"] = [list(p) for p in pairs]
    variants = list(variants) if variants is not None else zoo.variants
    bad = [v for v in variants if v not in zoo.variants]
    if bad:
        raise ConfigError(f"analyze: unknown variant '{bad[0]}' (zoo has: {', '.join(zoo.variants)})")
    settings["variants"] = variants
    if settings["n_images"] < 2:
        raise ConfigError(f"analyze: n_images must be >= 2, got {settings['n_images']}")

    if not force:
        existing = load_analysis(zoo)
        if existing is not None and existing.get("settings") == jsonable(settings):
            return existing

    pair_list = _pairs(zoo, settings["pairs"])
    checkpoints = [(t, v) for v in variants for t in zoo.tasks]
    total = len(checkpoints) + len(variants) * (1 + len(pair_list))
    done = 0

    def tick(stage: str, n: int = 1) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total, stage)

    if progress:
        progress(0, total, "starting")
    timings: dict[str, float] = {}
    _check_not_linearized(zoo, "the sharpness analysis")
    encoder = zoo.create_encoder()
    for p in encoder.parameters():
        p.requires_grad_(False)

    # per-checkpoint sharpness
    t0 = time.perf_counter()
    sharp_rows = []
    batches = {t: fixed_batch(zoo, t, settings["n_images"], settings["batch_seed"], settings["split"])
               for t in zoo.tasks}
    for task, variant in checkpoints:
        b = batches[task]
        row = {"task": task, "variant": variant}
        row.update(checkpoint_sharpness(encoder, zoo.heads[task], b.images, b.labels,
                                        zoo.finetuned(task, variant), settings))
        sharp_rows.append(row)
        tick(f"sharpness {task} ({variant})")
    timings["sharpness"] = time.perf_counter() - t0

    # matrices and norms
    t0 = time.perf_counter()
    cosine, conflict, tvs_all = {}, {}, {}
    for variant in variants:
        tvs = {t: zoo.task_vector(t, variant) for t in zoo.tasks}
        names, C = cosine_matrix(tvs)
        _, S = sign_conflict_matrix(tvs)
        cosine[variant] = {"tasks": names, "matrix": C.tolist()}
        conflict[variant] = {"tasks": names, "matrix": [[None if np.isnan(x) else float(x) for x in r] for r in S]}
        tvs_all.update({(t, variant): tv for t, tv in tvs.items()})
        tick(f"task-vector matrices ({variant})")
    norms = layer_norms(tvs_all).to_dict(orient="records")
    del tvs_all
    timings["matrices"] = time.perf_counter() - t0

    # disentanglement error
    t0 = time.perf_counter()
    lo, hi = settings["disent_range"]
    alphas = np.linspace(lo, hi, settings["disent_n"])
    disent: dict[str, list] = {v: [] for v in variants}
    theta0 = zoo.pretrained()
    for pair in pair_list:
        ev = Evaluator.from_zoo(zoo, split=settings["split"], n_per_task=settings["disent_n_per_task"],
                                seed=settings["disent_seed"], tasks=list(pair))
        for variant in variants:
            res = disentanglement_error(ev, theta0, zoo.task_vector(pair[0], variant), zoo.task_vector(pair[1], variant),
                                        pair, alphas, alphas)
            disent[variant].append(res.to_json())
            tick(f"disentanglement {pair[0]}+{pair[1]} ({variant})")
    timings["disentanglement"] = time.perf_counter() - t0

    out = {
        "format": ANALYSIS_FORMAT,
        "zoo": str(zoo.path), "zoo_hashes": zoo.checkpoint_hashes(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": jsonable(settings),
        "batches": {t: b.record() for t, b in batches.items()},
        "sharpness": sharp_rows,
        "cosine": cosine, "sign_conflict": conflict, "layer_norms": norms,
        "disentanglement": disent,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "versions": {"sammerge": __version__, "torch": torch.__version__}, "threads": torch.get_num_threads(),
    }
    out = jsonable(out)
    if save:
        write_json(analysis_path(zoo), out)
    return out


def sharpness_table(analysis: Mapping) -> "Any":
    """DataFrame: one row per task, columns per (measure, variant) — plain vs SAM side by side."""
    import pandas as pd

    df = pd.DataFrame(analysis["sharpness"])
    cols = ["top_eigenvalue", "trace_mean", "m_sharpness", "avg_sharpness", "accuracy"]
    wide = df.pivot(index="task", columns="variant", values=cols)
    return wide.reindex(index=list(dict.fromkeys(df["task"])))


def disentanglement_summary(analysis: Mapping) -> dict[str, float]:
    """variant → mean disentanglement error over its pairs and grid points."""
    out = {}
    for variant, results in analysis["disentanglement"].items():
        if results:
            out[variant] = float(np.mean([r["mean"] for r in results]))
    return out


# -- on-demand, cached ----------------------------------------------------------------------------------------
def _sub(progress: Progress | None, stage: str) -> Progress | None:
    """``progress`` reporting under ``stage`` (the stage name the inner computation passes is replaced)."""
    return (lambda done, total, _inner="": progress(done, total, stage)) if progress else None


def _check_not_linearized(zoo, what: str) -> None:
    """Sharpness and cross-task linearity differentiate the encoder's own forward; a linearized zoo is evaluated as
    f(θ0) + J(θ − θ0), whose curvature these do not compute yet: refuse rather than report numbers of another model."""
    if zoo.manifest.linearized:
        raise ConfigError(f"{what} is not available for linearized zoos yet (it would differentiate f, but this zoo's "
                          "models are f(θ0) + J(θ − θ0)); the landscapes, interpolation and disentanglement use the "
                          "linearized model and work")


def _check_tasks(zoo, *tasks):
    for t in tasks:
        if t not in zoo.tasks:
            raise ConfigError(f"unknown task '{t}' (zoo has: {', '.join(zoo.tasks)})")


def _check_variant(zoo, variant):
    if variant not in zoo.variants:
        raise ConfigError(f"unknown variant '{variant}' (zoo has: {', '.join(zoo.variants)})")


def task_plane_for(zoo, task_i: str, task_j: str, variant: str, lo: float = -0.5, hi: float = 1.5, n: int = 21,
                   n_per_task: int = 256, seed: int = 0, split: str = "val",
                   merge_point: tuple[float, float] | None = None, progress: Progress | None = None,
                   use_cache: bool = True, cached_only: bool = False):
    """The (cached) task plane θ0 + α_i τ_i + α_j τ_j of a variant, on both tasks' data → ``Plane``.
    ``merge_point`` (α_i, α_j) only adds a marker (not part of the cache key)."""
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.analytics.landscape import Plane, grid, task_plane

    _check_tasks(zoo, task_i, task_j)
    _check_variant(zoo, variant)
    xs = grid(lo, hi, n)
    inputs = dict(task_i=task_i, task_j=task_j, variant=variant, xs=xs, n_per_task=n_per_task, seed=seed,
                  split=split)

    def compute():
        ev = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=seed, tasks=[task_i, task_j])
        return task_plane(ev, zoo.pretrained(), zoo.task_vector(task_i, variant), zoo.task_vector(task_j, variant),
                          xs, xs, names=(task_i, task_j), progress=_sub(progress, "task plane")).to_json()

    found = cached(zoo, "task_plane", inputs, compute, use_cache, cached_only=cached_only)
    if found is None:
        return None
    plane = Plane.from_json(found)
    if merge_point is not None:
        plane.markers["merge"] = (float(merge_point[0]), float(merge_point[1]))
    return plane


def random_plane_for(zoo, task: str, variant: str | None, lo: float = -1.0, hi: float = 1.0, n: int = 21,
                     seed: int = 0, n_per_task: int = 256, data_seed: int = 0, split: str = "val",
                     progress: Progress | None = None, use_cache: bool = True, cached_only: bool = False):
    """Filter-normalized random plane around θ_task (``variant``) or θ0 (``variant=None``), on the task's data."""
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.analytics.landscape import Plane, grid, random_plane

    _check_tasks(zoo, task)
    if variant is not None:
        _check_variant(zoo, variant)
    xs = grid(lo, hi, n)
    inputs = dict(task=task, variant=variant, xs=xs, seed=seed, n_per_task=n_per_task, data_seed=data_seed,
                  split=split)

    def compute():
        ev = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=data_seed, tasks=[task])
        center = zoo.pretrained() if variant is None else zoo.finetuned(task, variant)
        return random_plane(ev, center, xs, xs, seed=seed, progress=_sub(progress, "random plane")).to_json()

    found = cached(zoo, "random_plane", inputs, compute, use_cache, cached_only=cached_only)
    return None if found is None else Plane.from_json(found)


def interpolation_for(zoo, task: str, variant: str, alphas: Sequence[float] | None = None, n_per_task: int = 256,
                      seed: int = 0, split: str = "val", progress: Progress | None = None,
                      use_cache: bool = True, cached_only: bool = False) -> dict | None:
    """(Cached) 1-D curve θ0→θ_task of a variant on the task's data: ``{"finetuned": Curve}``."""
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.analytics.landscape import Curve, interpolate

    _check_tasks(zoo, task)
    _check_variant(zoo, variant)
    alphas = np.linspace(0, 1, 11) if alphas is None else np.asarray(alphas, float)
    inputs = dict(task=task, variant=variant, alphas=alphas, n_per_task=n_per_task, seed=seed, split=split)

    def compute():
        ev = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=seed, tasks=[task])
        return interpolate(ev, zoo.pretrained(), zoo.finetuned(task, variant), alphas,
                           _sub(progress, "interpolation θ0→θ_t"), label=f"θ0→θ_{task} ({variant})").to_json()

    found = cached(zoo, "interp", inputs, compute, use_cache, cached_only=cached_only)
    return None if found is None else {"finetuned": Curve.from_json(found)}


def disentanglement_for(zoo, task_1: str, task_2: str, variant: str, lo: float = 0.0, hi: float = 1.5,
                        n: int = 11, n_per_task: int = 256, seed: int = 0, split: str = "val",
                        progress: Progress | None = None, use_cache: bool = True, cached_only: bool = False):
    """(Cached) disentanglement-error heatmap of a task pair for a variant → ``Disentanglement``."""
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.analytics.interference import Disentanglement, disentanglement_error

    _check_tasks(zoo, task_1, task_2)
    _check_variant(zoo, variant)
    alphas = np.linspace(lo, hi, n)
    inputs = dict(tasks=[task_1, task_2], variant=variant, alphas=alphas, n_per_task=n_per_task, seed=seed,
                  split=split)

    def compute():
        ev = Evaluator.from_zoo(zoo, split=split, n_per_task=n_per_task, seed=seed, tasks=[task_1, task_2])
        return disentanglement_error(ev, zoo.pretrained(), zoo.task_vector(task_1, variant),
                                     zoo.task_vector(task_2, variant), (task_1, task_2), alphas, alphas,
                                     _sub(progress, "disentanglement")).to_json()

    d = cached(zoo, "disentanglement", inputs, compute, use_cache, cached_only=cached_only)
    if d is None:
        return None
    return Disentanglement(np.asarray(d["alphas1"]), np.asarray(d["alphas2"]), np.asarray(d["xi"]),
                           tuple(d["tasks"]))
