"""PCB — Parameter Competition Balancing (Du et al., NeurIPS 2024)."""
from __future__ import annotations

from typing import Annotated

import torch

from sammerge.merging.registry import Param, merge_direction
from sammerge.merging.task_vector import StateDict, float_keys

__all__ = ["pcb_scores"]


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise (x − min) / (max − min); a constant row gives 0."""
    lo, hi = x.min(1, keepdim=True).values, x.max(1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)


def _clamp_quantiles(x: torch.Tensor, low_ratio: float, high_ratio: float) -> torch.Tensor:
    """Row-wise clamp of x [T, d] to [sorted[int(d·low)], sorted[int(d·(1 − high)) − 1]] (the reference's indices)."""
    d = x.shape[1]
    lo = torch.kthvalue(x, int(d * low_ratio) + 1, dim=1, keepdim=True).values
    hi = torch.kthvalue(x, int(d * (1 - high_ratio) - 1) + 1, dim=1, keepdim=True).values
    return torch.clamp(x, lo, hi)


def pcb_scores(flat: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PCB on flattened task vectors [T, d]: |τ| clamped at its 0.01 % tails (τ̄ = sign(τ)·clamped |τ|);
    intra-balance exp(T · minmax(|τ̄|)²), inter-balance tanh(τ_t ⊙ Σ_s τ_s); score = their product, clamped below at
    its (1 − ratio) quantile, min-max normalised → s_t ∈ [0, 1] (only the top ratio of entries is > 0).
    Returns (τ̄, s)."""
    T = flat.shape[0]
    clamped_abs = _clamp_quantiles(flat.abs(), 0.0001, 0.0001)
    clamped = torch.sign(flat) * clamped_abs
    intra = torch.exp(T * _minmax(clamped_abs) ** 2)
    inter = torch.tanh(flat * flat.sum(0, keepdim=True))
    scale = _minmax(_clamp_quantiles(intra * inter, 1 - ratio, 0))
    return clamped, scale


@merge_direction(name="pcb", label="PCB (parameter competition balancing)",
                 description="Score every entry by its importance within its task and agreement across tasks, keep "
                             "the top ratio per task, average the (clipped) task vectors weighted by score; θ0 + λ τ.",
                 reference="https://arxiv.org/abs/2410.02396", lambda_range=(0.0, 2.0, 0.05), lambda_default=1.2)
def pcb(pretrained: StateDict, task_vectors: list[StateDict],
        ratio: Annotated[float, Param(low=0.0, high=1.0, low_exclusive=True, step=0.01, label="ratio",
                                      help="Fraction of each task vector's entries that keep a score "
                                           "(default 0.05, the authors' ViT setting).")] = 0.05) -> StateDict:
    """PCB over the whole flattened model: (τ̄, s) = :func:`pcb_scores`; τ = Σ_t τ̄_t s_t / max(Σ_t s_t, 1e-12);
    θ = θ0 + λ τ (λ default 1.2, the authors' start value for ViT; their evolutionary per-task λ search is not run).

    Written from the authors' ``pcb-merging.py`` (duguodong7/pcb-merging).
    """
    keys = float_keys(pretrained)
    sizes = [pretrained[k].numel() for k in keys]
    flat = torch.stack([torch.cat([tv[k].detach().float().reshape(-1) for k in keys]) for tv in task_vectors], 0)
    clamped, scale = pcb_scores(flat, ratio)
    merged = (clamped * scale).sum(0) / scale.sum(0).clamp_min(1e-12)
    return {k: part.reshape(pretrained[k].shape) for k, part in zip(keys, merged.split(sizes))}
