"""Loss landscapes: 1-D interpolation curves, the task plane through θ0, filter-normalized random planes.

Every landscape point is a full parameter setting evaluated with :meth:`Evaluator.evaluate_many`
(batched under ``vmap``, ``chunk`` settings per pass), never one model copy at a time. Arrays of a
plane are indexed ``[i, j]`` = (first coordinate, second coordinate). ``progress`` callbacks are
called as ``progress(done, total, stage)`` (:class:`Progress`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from sammerge.errors import ConfigError
from sammerge.progress import Progress
from sammerge.merging.task_vector import linear_combination, task_vector

Params = Mapping[str, torch.Tensor]


def _evaluate_points(evaluator, points: Sequence[Sequence[float]], base: Params, directions: Sequence[Params],
                     progress: Progress | None, chunk: int,
                     stage: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """loss and accuracy per task for base + Σ c_k d_k at every point (flat arrays, one per task)."""
    n = len(points)
    loss = {t: np.zeros(n) for t in evaluator.tasks}
    acc = {t: np.zeros(n) for t in evaluator.tasks}
    if progress:
        progress(0, n, stage)
    for start in range(0, n, chunk):
        idx = range(start, min(start + chunk, n))
        settings = [linear_combination(base, directions, points[i], validate=False) for i in idx]
        for i, result in zip(idx, evaluator.evaluate_many(settings, chunk_size=chunk)):
            for t, r in result.items():
                loss[t][i] = r.loss
                acc[t][i] = r.accuracy
        if progress:
            progress(idx[-1] + 1, n, stage)
    return loss, acc


# -- 1-D interpolation -----------------------------------------------------------------------------------
@dataclass
class Curve:
    alphas: np.ndarray
    loss: dict[str, np.ndarray]       # task → [len(alphas)]
    accuracy: dict[str, np.ndarray]
    label: str = ""

    def to_json(self) -> dict:
        return {"alphas": self.alphas.tolist(), "label": self.label,
                "loss": {t: v.tolist() for t, v in self.loss.items()},
                "accuracy": {t: v.tolist() for t, v in self.accuracy.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "Curve":
        return cls(np.asarray(d["alphas"]), {t: np.asarray(v) for t, v in d["loss"].items()},
                   {t: np.asarray(v) for t, v in d["accuracy"].items()}, d.get("label", ""))


def interpolate(evaluator, start: Params, end: Params, alphas: Sequence[float] | None = None,
                progress: Progress | None = None, chunk: int = 4, label: str = "") -> Curve:
    """Loss/accuracy of every evaluator task along θ(α) = start + α (end − start)."""
    alphas = np.linspace(0, 1, 11) if alphas is None else np.asarray(alphas, dtype=float)
    direction = task_vector(end, start, check_finite=False)
    loss, acc = _evaluate_points(evaluator, [[a] for a in alphas], start, [direction], progress, chunk,
                                 "interpolation")
    return Curve(alphas, loss, acc, label)


# -- 2-D planes ------------------------------------------------------------------------------------------
@dataclass
class Plane:
    """Loss/accuracy over base + a·d1 + b·d2 on the grid (xs × ys)."""

    xs: np.ndarray                       # coordinates along d1
    ys: np.ndarray                       # coordinates along d2
    loss: dict[str, np.ndarray]          # task → [len(xs), len(ys)]
    accuracy: dict[str, np.ndarray]
    markers: dict[str, tuple[float, float]] = field(default_factory=dict)  # name → (x, y)
    kind: str = "task"                   # "task" | "random"
    axes: tuple[str, str] = ("x", "y")

    def to_json(self) -> dict:
        return {"xs": self.xs.tolist(), "ys": self.ys.tolist(), "kind": self.kind, "axes": list(self.axes),
                "markers": {k: list(v) for k, v in self.markers.items()},
                "loss": {t: v.tolist() for t, v in self.loss.items()},
                "accuracy": {t: v.tolist() for t, v in self.accuracy.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "Plane":
        return cls(np.asarray(d["xs"]), np.asarray(d["ys"]),
                   {t: np.asarray(v) for t, v in d["loss"].items()},
                   {t: np.asarray(v) for t, v in d["accuracy"].items()},
                   {k: tuple(v) for k, v in d["markers"].items()}, d["kind"], tuple(d["axes"]))


def grid(lo: float, hi: float, n: int) -> np.ndarray:
    if n < 2 or not hi > lo:
        raise ConfigError(f"landscape grid: need n >= 2 and hi > lo (got n={n}, range [{lo}, {hi}])")
    return np.linspace(lo, hi, n)


def plane(evaluator, base: Params, d1: Params, d2: Params, xs: Sequence[float], ys: Sequence[float],
          progress: Progress | None = None, chunk: int = 4, stage: str = "plane") -> tuple[dict, dict]:
    """Raw evaluation of base + x d1 + y d2 over xs × ys → (loss, accuracy), each task → [nx, ny].
    ``stage``: the name ``progress`` reports."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    points = [[x, y] for x in xs for y in ys]
    loss, acc = _evaluate_points(evaluator, points, base, [d1, d2], progress, chunk, stage)
    shape = (len(xs), len(ys))
    return {t: v.reshape(shape) for t, v in loss.items()}, {t: v.reshape(shape) for t, v in acc.items()}


def task_plane(evaluator, theta0: Params, tau_i: Params, tau_j: Params, xs: Sequence[float] | None = None,
               ys: Sequence[float] | None = None, merge_point: tuple[float, float] | None = None,
               names: tuple[str, str] = ("θ_i", "θ_j"), progress: Progress | None = None, chunk: int = 4) -> Plane:
    """The plane θ0 + α_i τ_i + α_j τ_j (default 21×21 on [−0.5, 1.5]²): every evaluator task's loss and
    accuracy (build the evaluator on the two tasks). Markers: θ0 (0,0), θ_i (1,0), θ_j (0,1), and the
    merge (α_i, α_j) if given (e.g. task arithmetic with λ: (λ, λ))."""
    xs = grid(-0.5, 1.5, 21) if xs is None else np.asarray(xs, float)
    ys = grid(-0.5, 1.5, 21) if ys is None else np.asarray(ys, float)
    loss, acc = plane(evaluator, theta0, tau_i, tau_j, xs, ys, progress, chunk, "task plane")
    markers = {"θ0": (0.0, 0.0), names[0]: (1.0, 0.0), names[1]: (0.0, 1.0)}
    if merge_point is not None:
        markers["merge"] = (float(merge_point[0]), float(merge_point[1]))
    return Plane(xs, ys, loss, acc, markers, "task", ("α_i", "α_j"))


def filter_normalized_direction(params: Params, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random direction d (Li et al. 2018): Gaussian, then each filter d[f] (slice along dim 0 of every
    tensor with ≥ 2 dims: conv filters, linear rows) rescaled to ‖θ[f]‖; 1-D tensors (biases,
    GroupNorm weights) and non-floating tensors get zero direction."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(params):  # key order fixed: the same seed gives the same direction
        value = params[key]
        if not value.is_floating_point() or value.dim() < 2:
            out[key] = torch.zeros_like(value)
            continue
        # drawn on the CPU generator, then moved: CPU numbers as always, and the same direction on any device
        d = torch.randn(value.shape, generator=gen, dtype=value.dtype).to(value.device)
        d_norm = d.reshape(d.shape[0], -1).norm(dim=1)
        t_norm = value.reshape(value.shape[0], -1).norm(dim=1)
        scale = t_norm / d_norm.clamp_min(1e-12)
        out[key] = d * scale.reshape(-1, *([1] * (value.dim() - 1)))
    return {k: out[k] for k in params}


def random_plane(evaluator, center: Params, xs: Sequence[float] | None = None, ys: Sequence[float] | None = None,
                 seed: int = 0, progress: Progress | None = None, chunk: int = 4) -> Plane:
    """Loss around ``center`` along two filter-normalized random directions (seeds ``seed``, ``seed+1``);
    default 21×21 on [−1, 1]²."""
    xs = grid(-1.0, 1.0, 21) if xs is None else np.asarray(xs, float)
    ys = grid(-1.0, 1.0, 21) if ys is None else np.asarray(ys, float)
    d1 = filter_normalized_direction(center, seed)
    d2 = filter_normalized_direction(center, seed + 1)
    loss, acc = plane(evaluator, center, d1, d2, xs, ys, progress, chunk, "random plane")
    return Plane(xs, ys, loss, acc, {"center": (0.0, 0.0)}, "random", ("d1", "d2"))
