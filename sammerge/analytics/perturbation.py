"""Sharpness by perturbing the parameters (no Hessian): worst-case m-sharpness (SAM's and ASAM's ascent step, the
loss rise within a ρ-ball, averaged over m-sized batches) and average-case sharpness (the mean loss rise under
Gaussian noise of scale σ). Loss functions and helpers: :mod:`sammerge.analytics.sharpness`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from sammerge.analytics.sharpness import LossFn, Params, _float_keys, _norm, _randn
from sammerge.errors import ConfigError

__all__ = ["SharpnessResult", "m_sharpness", "average_sharpness"]


# -- worst-case and average-case sharpness ---------------------------------------------------------------
@dataclass
class SharpnessResult:
    mean: float
    se: float
    values: list[float]        # one per batch (m-sharpness) or per noise sample (average sharpness)
    base_loss: float           # mean L(θ) over the batches
    settings: dict


def _mean_se(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    return float(arr.mean()), se


def m_sharpness(loss_fns: Sequence[LossFn] | LossFn, params: Params, rho: float = 0.05, adaptive: bool = False,
                steps: int = 1, seed: int = 0, init_scale: float = 0.1, eta: float = 0.0,
                keys: Sequence[str] | None = None) -> SharpnessResult:
    """Worst-case sharpness max_{‖δ‖≤ρ} L_b(θ+δ) − L_b(θ), averaged over the batches ``loss_fns``
    (pass one loss function per batch of size m, e.g. from :func:`batch_loss_fns`).

    The maximum is approximated by ``steps`` normalized projected-gradient ascent steps of length ρ
    from a small seeded random start of norm ``init_scale``·ρ (so a zero gradient, e.g. at an exact
    minimum, still has a direction). ``adaptive``: the ball is ‖δ ⊘ T‖ ≤ ρ with T = |θ| + ``eta``
    (ASAM); the ascent runs in the rescaled coordinates u = δ ⊘ T. Returns per-batch values ≥ 0
    (clipped below at the first-order value is *not* done: a negative value means the ascent failed).
    """
    if rho <= 0:
        raise ConfigError(f"m_sharpness: rho must be > 0, got {rho}")
    if steps < 1:
        raise ConfigError(f"m_sharpness: steps must be >= 1, got {steps}")
    fns = [loss_fns] if callable(loss_fns) else list(loss_fns)
    if not fns:
        raise ConfigError("m_sharpness: no batches")
    names = _float_keys(params, keys)
    base = {k: v.detach() for k, v in params.items()}
    scale = {k: (base[k].abs() + eta) if adaptive else torch.ones_like(base[k]) for k in names}
    gen = torch.Generator().manual_seed(seed)
    values, base_losses = [], []
    for fn in fns:
        with torch.no_grad():
            l0 = float(fn(base))
        u = {k: _randn(base[k].shape, gen, base[k]) for k in names}
        nu = float(_norm(list(u.values())))
        u = {k: t * (init_scale * rho / max(nu, 1e-30)) for k, t in u.items()}
        for _ in range(steps):
            leaves = {k: (base[k] + u[k] * scale[k]).requires_grad_(True) for k in names}
            with torch.enable_grad():
                loss = fn({**base, **leaves})
                g = torch.autograd.grad(loss, list(leaves.values()))
            gu = {k: gi * scale[k] for k, gi in zip(names, g)}  # gradient w.r.t. u
            ng = float(_norm(list(gu.values())))
            if ng > 0:
                u = {k: u[k] + rho * gu[k] / ng for k in names}
            nu = float(_norm(list(u.values())))
            if nu > rho:
                u = {k: t * (rho / nu) for k, t in u.items()}
        with torch.no_grad():
            l1 = float(fn({**base, **{k: base[k] + u[k] * scale[k] for k in names}}))
        values.append(l1 - l0)
        base_losses.append(l0)
    mean, se = _mean_se(values)
    return SharpnessResult(mean, se, values, float(np.mean(base_losses)),
                           {"kind": "m-sharpness", "rho": rho, "adaptive": adaptive, "steps": steps,
                            "n_batches": len(fns), "seed": seed, "init_scale": init_scale, "eta": eta})


def average_sharpness(loss_fn: LossFn, params: Params, sigma: float = 0.01, n_samples: int = 10, seed: int = 0,
                      adaptive: bool = False, keys: Sequence[str] | None = None) -> SharpnessResult:
    """Average-case sharpness E_{δ∼N(0,σ²I)} L(θ+δ) − L(θ) (Monte Carlo over ``n_samples`` seeded draws).

    ``adaptive``: δ ∼ N(0, σ² diag(θ²)) (noise relative to each weight's magnitude).
    """
    if sigma <= 0:
        raise ConfigError(f"average_sharpness: sigma must be > 0, got {sigma}")
    if n_samples < 1:
        raise ConfigError(f"average_sharpness: n_samples must be >= 1, got {n_samples}")
    names = _float_keys(params, keys)
    base = {k: v.detach() for k, v in params.items()}
    gen = torch.Generator().manual_seed(seed)
    values = []
    with torch.no_grad():
        l0 = float(loss_fn(base))
        for _ in range(n_samples):
            pert = {}
            for k in names:
                d = _randn(base[k].shape, gen, base[k]) * sigma
                pert[k] = base[k] + (d * base[k].abs() if adaptive else d)
            values.append(float(loss_fn({**base, **pert})) - l0)
    mean, se = _mean_se(values)
    return SharpnessResult(mean, se, values, l0, {"kind": "average", "sigma": sigma, "n_samples": n_samples,
                                                  "adaptive": adaptive, "seed": seed})
