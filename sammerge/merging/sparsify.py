"""Sparsification of task vectors, apart from the methods that use it (mergekit ``sparsify.py`` style).

* :func:`trim_magnitude` — TIES trim: keep the max(1, int(density·n)) largest |τ| entries of a tensor;
* :func:`breadcrumbs_mask` — drop the top γ·n outliers and the small tail, keep int(density·n);
* :func:`dare_drop` — DARE: keep each entry with probability p, rescale survivors by 1/p;
* :func:`della_prune` — DELLA (MagPrune): keep probabilities linear in magnitude rank, rescale to the L1 norm.

Random masks draw from :func:`random_uniform`: one generator per (seed, task id, tensor key).
"""
from __future__ import annotations

import hashlib
import numbers
from typing import Sequence

import torch

__all__ = ["topk_mask_rows", "trim_magnitude", "breadcrumbs_mask", "dare_drop", "della_prune", "random_uniform"]


def topk_mask_rows(absval: torch.Tensor, k: Sequence[int] | int) -> torch.Tensor:
    """Boolean mask keeping, in each row of ``absval`` [R, n], the ``k`` (per row) largest entries.

    Exactly ``k`` entries are kept; ties at the threshold are broken by lowest flat index, so the
    result is deterministic. O(n) per row (one batched ``kthvalue`` per distinct k), no sorting.
    """
    rows, n = absval.shape
    ks = [int(k)] * rows if isinstance(k, (int, numbers.Integral)) else [int(v) for v in k]
    mask = torch.zeros_like(absval, dtype=torch.bool)
    for kr in sorted(set(ks)):
        idx = [r for r in range(rows) if ks[r] == kr]
        if kr <= 0:
            continue
        if kr >= n:
            mask[idx] = True
            continue
        sub = absval[idx] if len(idx) < rows else absval
        thr = torch.kthvalue(sub, n - kr + 1, dim=1, keepdim=True).values  # the kr-th largest value
        above = sub > thr
        need = kr - above.sum(1, keepdim=True)
        eq = sub == thr
        keep = above | (eq & (torch.cumsum(eq, 1) <= need))
        if len(idx) < rows:
            mask[idx] = keep
        else:
            mask = keep
    return mask


def trim_magnitude(tv: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``max(1, int(density·n))`` largest-|value| entries of one tensor, zero the rest (TIES trim).

    Same count as mergekit 0.1.5 ``magnitude`` sparsification (a positive density keeps at least one entry).
    """
    if density >= 1.0:
        return tv.clone()
    n = tv.numel()
    k = max(1, int(density * n)) if n > 0 else 0
    mask = topk_mask_rows(tv.detach().abs().reshape(1, -1).float(), k).reshape(tv.shape)
    return tv * mask


def breadcrumbs_mask(absval: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Mask over a 1-D |τ| keeping ranks [n_top, n_top + n_keep) by descending magnitude.

    ``n_keep = int(density·n)``, ``n_top = int(gamma·n)`` (reduced if ``n_top + n_keep > n``).
    """
    n = absval.numel()
    n_keep = int(density * n)
    n_top = int(gamma * n)
    if n_top + n_keep > n:
        n_top = n - n_keep
    row = absval.reshape(1, -1)
    top_plus = topk_mask_rows(row, n_top + n_keep)
    top = topk_mask_rows(row, n_top)
    return (top_plus & ~top).reshape(absval.shape)


def _key_seed(seed: int, task_id: str, key: str) -> int:
    digest = hashlib.sha256(f"sammerge-dare\x00{seed}\x00{task_id}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare_drop(tv: torch.Tensor, density: float, seed: int, task_id: str, key: str) -> torch.Tensor:
    """DARE on one tensor: keep each entry with probability ``density``, rescale survivors by 1/density.

    The random mask comes from a generator seeded by (seed, task_id, key) only, so it does not depend
    on the order of keys or on which other tasks are merged.
    """
    if density >= 1.0:
        return tv.clone()
    keep = random_uniform(tv.shape, seed, task_id, key) < density
    return tv.float() * keep.to(tv.device) / density


def random_uniform(shape: Sequence[int], seed: int, task_id: str, key: str) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` (float32, CPU) from a generator seeded by (seed, task_id, key) only."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_key_seed(seed, task_id, key))
    return torch.rand(tuple(shape), generator=gen)


def della_prune(tv: torch.Tensor, density: float, epsilon: float, seed: int, task_id: str, key: str) -> torch.Tensor:
    """DELLA's MagPrune on one tensor, as mergekit 0.1.5 ``della_magprune`` with ``rescale``.

    Per row (dim 1 of a ≥ 2-D tensor; a 1-D tensor is one row) rank the entries by |τ| ascending, r ∈ [0, 1]
    (min-max normalised rank); keep each entry with probability p = (density − ε) + 2ε·r (large entries are kept
    more often); then rescale the survivors so that ‖τ̂‖₁ = ‖τ‖₁ (the whole tensor; unchanged if either is < 1e-7).
    density ≥ 1 keeps the tensor.
    """
    if density >= 1.0:
        return tv.clone()
    x = tv.float()
    rows = x.unsqueeze(0) if x.dim() < 2 else x
    ranks = rows.abs().argsort(dim=1, stable=True).argsort(dim=1, stable=True).float()  # 0 .. n-1 along dim 1
    span = rows.shape[1] - 1
    rank_norm = (ranks / span).clamp(0, 1) if span > 0 else torch.zeros_like(ranks)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    keep = (random_uniform(rows.shape, seed, task_id, key).to(x.device) < probs).to(x.dtype)
    masked = rows * keep
    before, after = rows.abs().sum(), masked.abs().sum()
    if before >= 1e-7 and after >= 1e-7:
        masked = masked * (before / after)
    return masked.reshape(tv.shape)
