"""Exact, instant evaluation of merges of a *linearized* zoo.

A linearized zoo is evaluated as f_lin(x; θ) = f(x; θ0) + J f(x; θ0)(θ − θ0), which is linear in θ. A merge
θ = θ0 + Σ_t c_t τ_t therefore has the features

    f_lin(x; θ) = f(x; θ0) + Σ_t c_t (J τ_t)(x):

compute f(x; θ0) and each J τ_t once on the evaluation images (one forward-mode JVP each) and every slider
position costs a weighted sum of a few [N, D] matrices plus the heads. Methods that are not a linear combination
of the τ_t (TIES, DARE, …) merge to θ0 + λ τ_m with a direction τ_m = merge(λ = 1) − θ0 that does not depend on
λ: one JVP per direction, then every λ is free. For ordinary (non-linearized) checkpoints this is only a first-
order approximation, and a poor one on the demo zoo, so it is used for linearized zoos only.

f(θ0) and the J τ_t of every checkpoint are precomputed once per zoo and evaluation subset and kept on disk
(:mod:`sammerge.evaluation.preview_cache`); :meth:`LinearPreview.preload` hands them to a preview.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import torch
from torch.func import functional_call

from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator, TaskResult
from sammerge.models.linearize import locked_jvp

Params = Mapping[str, torch.Tensor]


class LinearPreview:
    """f(θ0) and cached J·direction products on an evaluator's images; ``evaluate`` scores Σ-combinations."""

    def __init__(self, evaluator: Evaluator, max_directions: int = 64, reverse_mode: bool = False) -> None:
        """``reverse_mode``: compute J·v by two reverse-mode passes (:func:`jvp_by_double_vjp`) instead of
        ``torch.func.jvp``, so that it may run in a background thread beside other forward-mode AD."""
        if evaluator.linearize_at is None:
            raise ConfigError("the exact preview needs a linearized zoo (recipe finetune.linearized)")
        self.evaluator = evaluator
        self.reverse_mode = reverse_mode
        self.theta0 = evaluator.linearize_at
        self.max_directions = max_directions
        self._base: torch.Tensor | None = None
        self._jvps: OrderedDict[str, torch.Tensor] = OrderedDict()  # computed on demand, least recently used first
        self._pinned: dict[str, torch.Tensor] = {}  # preloaded (never evicted)
        self.jvp_count = 0  # JVPs computed here (preloaded ones not counted)

    def preload(self, base: torch.Tensor, jvps: Mapping[str, torch.Tensor]) -> None:
        """Use precomputed f(x; θ0) [N, D] and J·direction [N, D] per key (e.g. ``task/variant`` → J τ) for this
        evaluator's images, in their order (ConfigError when a shape does not match)."""
        n = len(self.evaluator.images)
        bad = [k for k, v in {"f(θ0)": base, **jvps}.items() if v.ndim != 2 or v.shape != base.shape or len(v) != n]
        if bad:
            raise ConfigError(f"preloaded preview: {', '.join(bad)} not of shape [{n}, D] like f(θ0) "
                              f"{tuple(base.shape)}")
        device = self.evaluator.device
        self._base = base.to(device)
        self._pinned = {k: v.to(device) for k, v in jvps.items()}

    @torch.no_grad()
    def _chunks(self, fn) -> torch.Tensor:
        ev = self.evaluator
        return torch.cat([fn(ev.images[i:i + ev.chunk_size]) for i in range(0, len(ev.images), ev.chunk_size)])

    def base(self) -> torch.Tensor:
        """f(x; θ0) on every evaluation image: [N, D]."""
        if self._base is None:
            params = {k: v for k, v in self.theta0.items()}
            self._base = self._chunks(lambda x: functional_call(self.evaluator.encoder, params, (x,)))
        return self._base

    def jvp(self, key: str, direction: Callable[[], Params]) -> torch.Tensor:
        """(J_θ f(x; θ0)) · direction() on every evaluation image: [N, D], cached under ``key`` (``direction``
        is only called when ``key`` is not cached)."""
        if key in self._pinned:
            return self._pinned[key]
        if key in self._jvps:
            self._jvps.move_to_end(key)
            return self._jvps[key]
        direction = direction()
        keys = [k for k, v in self.theta0.items() if v.is_floating_point()]
        fixed = {k: v for k, v in self.theta0.items() if not v.is_floating_point()}
        primals = tuple(self.theta0[k] for k in keys)
        tangents = tuple(direction[k].to(self.theta0[k].device, self.theta0[k].dtype) for k in keys)
        encoder = self.evaluator.encoder

        def one(x: torch.Tensor) -> torch.Tensor:
            def f(*tensors):
                return functional_call(encoder, {**fixed, **dict(zip(keys, tensors))}, (x,))
            return jvp_by_double_vjp(f, primals, tangents) if self.reverse_mode else locked_jvp(f, primals, tangents)[1]

        out = self._chunks(one)
        self.jvp_count += 1
        self._jvps[key] = out
        while len(self._jvps) > self.max_directions:
            self._jvps.popitem(last=False)
        return out

    def features(self, terms: Sequence[tuple[str, Callable[[], Params], float]]) -> torch.Tensor:
        """f_lin(x; θ0 + Σ c · direction) = f(x; θ0) + Σ c (J · direction)(x) for ``terms`` = [(key, direction, c),
        …] on every evaluation image: [N, D]."""
        feats = self.base().clone()
        for key, direction, coef in terms:
            if coef:
                feats.add_(self.jvp(key, direction), alpha=float(coef))
        return feats

    def evaluate(self, terms: Sequence[tuple[str, Callable[[], Params], float]]) -> dict[str, TaskResult]:
        """Per-task results of θ0 + Σ c · direction for ``terms`` (see :meth:`features`), exactly as the
        linearized model (up to float rounding), without a forward pass once the JVPs are cached."""
        feats = self.features(terms)
        with torch.inference_mode():
            return self.evaluator.score(feats)


def jvp_by_double_vjp(f: Callable[..., torch.Tensor], primals: Sequence[torch.Tensor],
                      tangents: Sequence[torch.Tensor]) -> torch.Tensor:
    """J f(primals) · tangents by reverse mode twice: g(u) = Jᵀu (one backward with a graph), then J v = ∂⟨g(u), v⟩/∂u.

    Same number as ``torch.func.jvp(f, primals, tangents)[1]`` (up to float rounding), at about twice its cost, but
    thread-safe: forward-mode AD has one dual level per process, so two threads running ``torch.func.jvp`` at once
    (a background job and the explorer's exact evaluation of a linearized model) break each other."""
    with torch.enable_grad():
        leaves = [p.detach().requires_grad_(True) for p in primals]
        out = f(*leaves)
        u = torch.zeros_like(out, requires_grad=True)
        grads = torch.autograd.grad(out, leaves, grad_outputs=u, create_graph=True, allow_unused=True)
        used = [(g, t) for g, t in zip(grads, tangents) if g is not None]
        jv = torch.autograd.grad([g for g, _ in used], u, grad_outputs=[t for _, t in used], allow_unused=True)[0]
    return (torch.zeros_like(out) if jv is None else jv).detach()


def linear_coefficients(spec) -> list[float] | None:
    """c_t with merge(spec) = θ0 + Σ_t c_t τ_t, as the spec's method declares it (registry); else None."""
    return spec.spec.linear_coefficients(spec.method_kwargs, len(spec.tasks))
