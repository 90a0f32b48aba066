"""Sharpness of encoder parameters on a fixed batch: Hessian spectra and trace (m-sharpness and average
sharpness: :mod:`sammerge.analytics.perturbation`).

Everything is functional: a *loss function* ``f(params) -> scalar tensor`` over a dict of tensors
(build one for an encoder + frozen head with :func:`task_loss_fn`). Curvature is taken with respect
to every floating-point tensor of the dict (for a zoo encoder: all encoder parameters — convolutions
and GroupNorm affine weights/biases; the frozen head is not included), unless ``keys`` restricts it.

Hessian-vector products use double backward (reverse-over-reverse) with the gradient graph built
once per operator and reused for every product (``HessianOperator``); :func:`hvp` is the stand-alone
forward-over-reverse version (``torch.func.jvp(grad(f))``).

Random draws (start vectors, Hutchinson probes, perturbations) come from a seeded CPU generator and are
then moved to the parameters' device: a seed gives the same numbers on any device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

from sammerge.errors import ConfigError
from sammerge.models.linearize import locked_jvp

Params = Mapping[str, torch.Tensor]
LossFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


# -- loss functions on a fixed batch ----------------------------------------------------------------
def task_loss_fn(encoder: nn.Module, head, images: torch.Tensor, labels: torch.Tensor) -> LossFn:
    """``f(params)`` = mean cross-entropy of ``head(encoder_params(images))`` on this fixed batch."""
    encoder = encoder.eval()
    images = images.detach()
    labels = labels.detach()

    def loss_fn(params: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = functional_call(encoder, dict(params), (images,))
        return F.cross_entropy(head(feats), labels)

    return loss_fn


def batch_loss_fns(encoder: nn.Module, head, images: torch.Tensor, labels: torch.Tensor, m: int) -> list[LossFn]:
    """One loss function per consecutive batch of ``m`` samples (the last partial batch is dropped
    unless it is the only one) — the batches of m-sharpness."""
    if m < 1:
        raise ConfigError(f"m-sharpness: batch size m must be >= 1, got {m}")
    n = len(labels)
    starts = list(range(0, max(n - m + 1, 1), m))
    return [task_loss_fn(encoder, head, images[s:s + m], labels[s:s + m]) for s in starts]


@dataclass(frozen=True)
class FixedBatch:
    """A recorded, reproducible batch: which split, how many images and which subset seed."""

    task: str
    split: str
    n: int
    seed: int
    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)

    def record(self) -> dict:
        return {"task": self.task, "split": self.split, "n": self.n, "seed": self.seed,
                "subset": "Split.subset(n, seed) (class-balanced, deterministic)"}


def fixed_batch(zoo, task: str, n: int = 256, seed: int = 0, split: str = "val") -> FixedBatch:
    """The deterministic ``Split.subset(n, seed)`` of a task's split (the batch sharpness is measured on)."""
    if task not in zoo.tasks:
        raise ConfigError(f"unknown task '{task}' (zoo has: {', '.join(zoo.tasks)})")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, not '{split}'")
    part = zoo.split(task, split).subset(n, seed)
    return FixedBatch(task, split, len(part.labels), seed, part.images, part.labels)


# -- helpers over parameter dicts ------------------------------------------------------------------
def parameter_keys(encoder: nn.Module) -> list[str]:
    """The keys of the encoder's parameters, its buffers left out: the Hessian and the perturbations of sharpness are
    over what fine-tuning moves. (A batch norm's running statistics are float buffers: the loss has no derivative
    with respect to them, and a random perturbation could make a variance negative.)"""
    return [name for name, _ in encoder.named_parameters()]


def _float_keys(params: Params, keys: Sequence[str] | None = None) -> list[str]:
    if keys is not None:
        missing = [k for k in keys if k not in params]
        if missing:
            raise ConfigError(f"sharpness: unknown parameter '{missing[0]}'")
        return [k for k in keys if params[k].is_floating_point()]
    return [k for k, v in params.items() if v.is_floating_point()]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(_dot(a, a))


def _randn(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal draws of ``shape`` with ``like``'s dtype on ``like``'s device."""
    # drawn on the generator's device (the CPU for every seed here), then moved: the CPU numbers are the
    # ones CPU runs always had, and a seed gives the same draws on any device
    return torch.randn(shape, generator=gen, dtype=like.dtype, device=gen.device).to(like.device)


def num_params(params: Params, keys: Sequence[str] | None = None) -> int:
    return sum(params[k].numel() for k in _float_keys(params, keys))


# -- Hessian-vector products -------------------------------------------------------------------------
def hvp(loss_fn: LossFn, params: Params, v: Params) -> dict[str, torch.Tensor]:
    """H(θ) v by forward-over-reverse (``jvp(grad(f), (θ,), (v,))``); ``v`` has the keys it perturbs."""
    keys = list(v)
    base = {k: t.detach() for k, t in params.items()}

    def f(sub):
        return loss_fn({**base, **sub})

    primal = {k: base[k] for k in keys}
    tangent = {k: v[k].detach().to(base[k].dtype) for k in keys}
    return locked_jvp(grad(f), (primal,), (tangent,))[1]


class HessianOperator:
    """v ↦ H v at fixed θ by double backward; the gradient graph is built once and reused."""

    def __init__(self, loss_fn: LossFn, params: Params, keys: Sequence[str] | None = None) -> None:
        self.keys = _float_keys(params, keys)
        if not self.keys:
            raise ConfigError("sharpness: no floating-point parameters to take the curvature over")
        self.fixed = {k: v.detach() for k, v in params.items() if k not in self.keys}
        self.leaves = {k: params[k].detach().clone().requires_grad_(True) for k in self.keys}
        with torch.enable_grad():
            self.loss = loss_fn({**self.fixed, **self.leaves})
            self.grads = torch.autograd.grad(self.loss, list(self.leaves.values()), create_graph=True)
        self.shapes = [self.leaves[k].shape for k in self.keys]
        self.dim = sum(int(np.prod(s)) for s in self.shapes)
        self.n_products = 0

    def matvec(self, v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.n_products += 1
        with torch.enable_grad():
            out = torch.autograd.grad(self.grads, list(self.leaves.values()), grad_outputs=list(v),
                                      retain_graph=True)
        return [o.detach() for o in out]

    def matvec_batched(self, vs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """H applied to B vectors at once (each tensor carries a leading batch dimension)."""
        self.n_products += int(vs[0].shape[0])
        with torch.enable_grad():
            out = torch.autograd.grad(self.grads, list(self.leaves.values()), grad_outputs=list(vs),
                                      retain_graph=True, is_grads_batched=True)
        return [o.detach() for o in out]

    def random_normal(self, gen: torch.Generator) -> list[torch.Tensor]:
        return [_randn(s, gen, self.leaves[k]) for k, s in zip(self.keys, self.shapes)]

    def as_dict(self, vecs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(self.keys, vecs))

    def dense(self) -> torch.Tensor:
        """The full Hessian (dim × dim); only for tiny models and tests."""
        cols = []
        for i in range(self.dim):
            e = torch.zeros(self.dim, device=self.leaves[self.keys[0]].device)
            e[i] = 1
            cols.append(torch.cat([t.reshape(-1) for t in self.matvec(self._unflatten(e))]))
        return torch.stack(cols, 1)

    def _unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        out, i = [], 0
        for s in self.shapes:
            n = int(np.prod(s))
            out.append(flat[i:i + n].reshape(s))
            i += n
        return out


# -- top eigenvalues -----------------------------------------------------------------------------------
@dataclass
class EigenResult:
    eigenvalues: list[float]           # largest first (algebraic for Lanczos, by magnitude for power)
    iterations: int                    # Hessian-vector products used
    converged: bool
    method: str
    eigenvectors: list[dict[str, torch.Tensor]] | None = field(default=None, repr=False)


def top_eigenvalues(loss_fn: LossFn, params: Params, k: int = 1, iters: int = 100, tol: float = 1e-3,
                    seed: int = 0, method: str = "lanczos", keys: Sequence[str] | None = None,
                    return_vectors: bool = False) -> EigenResult:
    """Top-``k`` Hessian eigenvalues at ``params``.

    ``method="lanczos"`` (default): Lanczos with full reorthogonalization, stopped when every wanted
    Ritz value's residual bound |β_m s_m| is below ``tol``·|θ| (``iters`` = max Krylov dimension);
    gives the k algebraically largest *distinct* eigenvalues (a single start vector cannot resolve
    multiplicities: a repeated eigenvalue is found once; use ``method="power"`` for those).
    ``method="power"``: power iteration with deflation against the already-found eigenvectors,
    stopped when the Rayleigh quotient changes by less than ``tol`` (relative); gives the
    eigenvalues of largest magnitude.
    """
    if k < 1:
        raise ConfigError(f"top_eigenvalues: k must be >= 1, got {k}")
    op = HessianOperator(loss_fn, params, keys)
    if k > op.dim:
        raise ConfigError(f"top_eigenvalues: k={k} exceeds the number of parameters ({op.dim})")
    gen = torch.Generator().manual_seed(seed)
    if method == "lanczos":
        return _lanczos(op, k, iters, tol, gen, return_vectors)
    if method == "power":
        return _power(op, k, iters, tol, gen, return_vectors)
    raise ConfigError(f"top_eigenvalues: method must be 'lanczos' or 'power', not '{method}'")


def _power(op: HessianOperator, k: int, iters: int, tol: float, gen, return_vectors: bool) -> EigenResult:
    values, vectors, all_converged = [], [], True
    for _ in range(k):
        v = op.random_normal(gen)
        nv = _norm(v)
        v = [t / nv for t in v]
        lam_prev, lam, converged = None, 0.0, False
        for _ in range(iters):
            w = op.matvec(v)
            for lam_j, u in zip(values, vectors):  # deflation: H - Σ λ_j u_j u_jᵀ
                c = _dot(u, v)
                w = [wi - lam_j * c * ui for wi, ui in zip(w, u)]
            lam = float(_dot(v, w))
            nw = float(_norm(w))
            if nw == 0.0:
                converged = True
                break
            v = [t / nw for t in w]
            if lam_prev is not None and abs(lam - lam_prev) <= tol * max(abs(lam), 1e-12):
                converged = True
                break
            lam_prev = lam
        all_converged &= converged
        values.append(lam)
        vectors.append(v)
    return EigenResult(values, op.n_products, all_converged, "power",
                       [op.as_dict(v) for v in vectors] if return_vectors else None)


def _lanczos(op: HessianOperator, k: int, iters: int, tol: float, gen, return_vectors: bool) -> EigenResult:
    m_max = max(min(iters, op.dim), k)
    v = op.random_normal(gen)
    nv = _norm(v)
    v = [t / nv for t in v]
    basis = [v]
    alphas: list[float] = []
    betas: list[float] = []
    converged = False
    theta = np.zeros(0)
    s = np.zeros((0, 0))
    for j in range(m_max):
        w = op.matvec(basis[j])
        alpha = float(_dot(w, basis[j]))
        alphas.append(alpha)
        # full reorthogonalization (twice, for stability)
        for _ in range(2):
            for q in basis:
                c = _dot(w, q)
                w = [wi - c * qi for wi, qi in zip(w, q)]
        beta = float(_norm(w))
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, s = np.linalg.eigh(T)
        order = np.argsort(theta)[::-1]
        theta, s = theta[order], s[:, order]
        if len(alphas) >= k:
            resid = np.abs(beta * s[-1, :k])
            if np.all(resid <= tol * np.maximum(np.abs(theta[:k]), 1e-12)) or beta < 1e-10:
                converged = True
                break
        if j == m_max - 1:
            break
        betas.append(beta)
        basis.append([t / beta for t in w])
    vectors = None
    if return_vectors:
        vectors = []
        for i in range(k):
            vec = [sum(float(s[r, i]) * basis[r][p] for r in range(len(alphas))) for p in range(len(op.keys))]
            vectors.append(op.as_dict(vec))
    return EigenResult([float(t) for t in theta[:k]], op.n_products, converged, "lanczos", vectors)


# -- trace ---------------------------------------------------------------------------------------------
@dataclass
class TraceResult:
    mean: float
    se: float          # standard error of the mean over the probe vectors
    n_samples: int


def hessian_trace(loss_fn: LossFn, params: Params, n_samples: int = 20, seed: int = 0,
                  keys: Sequence[str] | None = None, batch: int = 1) -> TraceResult:
    """Hutchinson: tr(H) ≈ mean_v vᵀHv over Rademacher ``v``; returns (mean, standard error).

    ``batch`` > 1 applies H to that many probes per call (``is_grads_batched``); 1 is a plain loop.
    """
    if n_samples < 1:
        raise ConfigError(f"hessian_trace: n_samples must be >= 1, got {n_samples}")
    op = HessianOperator(loss_fn, params, keys)
    gen = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    while len(samples) < n_samples:
        b = min(batch, n_samples - len(samples))
        probes = [[(torch.randint(0, 2, s, generator=gen) * 2 - 1).to(op.leaves[key].device, op.leaves[key].dtype)
                   for key, s in zip(op.keys, op.shapes)] for _ in range(b)]  # same draws for any batch, any device
        vs = [torch.stack(parts) for parts in zip(*probes)]
        if b == 1:
            hv = [h.unsqueeze(0) for h in op.matvec([t[0] for t in vs])]
        else:
            hv = op.matvec_batched(vs)
        vals = sum((x * y).reshape(b, -1).sum(1) for x, y in zip(vs, hv))
        samples.extend(float(t) for t in vals)
    arr = np.asarray(samples)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan")
    return TraceResult(float(arr.mean()), se, len(arr))
