"""What the classic methods share (:mod:`sammerge.merging.methods`, and DELLA, Fisher, AdaMerging): the parameter
annotations with a meaning across methods (λ, per-task weights, density, seed) and the TIES / DARE machinery —
trim, random drop, sign election and the disjoint mean (:func:`ties_parts`, :func:`_combine`)."""
from __future__ import annotations

from typing import Annotated, Any, Mapping, Sequence

import torch

from sammerge.errors import ConfigError, MergeError
from sammerge.merging.schema import Param
from sammerge.merging.sparsify import dare_drop, topk_mask_rows
from sammerge.merging.task_vector import StateDict, check_coefficients, float_keys

__all__ = ["Lambda", "Weights", "Density", "Densities", "Seed", "KeyWeights", "ties_parts"]

# ----------------------------------------------------------------------------------------------
# shared parameter annotations
# ----------------------------------------------------------------------------------------------

Lambda = Annotated[float, Param(ui_low=0.0, ui_high=2.0, step=0.05, label="λ (scaling)", mergekit_name="lambda",
                                help="Scaling coefficient λ applied to the merged task vector (mergekit 'lambda').")]
Weights = Annotated[list[float] | None, Param(
    ui_low=0.0, ui_high=2.0, step=0.05, entry_default=1.0, label="per-task weight", mergekit_name="weight",
    help="One weight w_t per task, multiplied into its task vector (mergekit 'weight'); default 1 each.")]
Density = Annotated[float, Param(
    low=0.0, high=1.0, low_exclusive=True, ui_low=0.05, step=0.05, label="density", mergekit_name="density",
    help="Fraction of entries of each task vector that is kept, in (0, 1].")]
Densities = Annotated[list[float] | None, Param(
    low=0.0, high=1.0, low_exclusive=True, ui_low=0.05, step=0.05, label="per-task density", mergekit_name="density",
    help="Optional per-task override of density (mergekit per-model 'density'); default: the global density.")]
Seed = Annotated[int, Param(low=0, high=2**31 - 1, ui_high=1000, step=1, label="seed",
                            help="Seed of the random drop masks (one generator per task and tensor).")]


def _normalize_help(default: bool) -> str:
    return (f"Divide the weighted sum by the sum of the weights (mergekit 'normalize'; default {str(default).lower()}).")


def _weights(weights: list[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise MergeError(f"{len(weights)} weights given for {n} task vectors")
    return check_coefficients(weights, "weights")


def _check_weight_sum(params: dict[str, Any], method: str) -> None:
    """Σ_t w_t divides the merge: refuse weights that sum to 0 when the spec is made, not at merge time."""
    weights = params.get("weights")
    if weights is not None and abs(sum(weights)) < 1e-8:
        raise ConfigError(f"{method}: the per-task weights sum to 0, and the merge divides by their sum")


def _densities(densities: list[float] | None, density: float, n: int) -> list[float]:
    if densities is None:
        return [density] * n
    if len(densities) != n:
        raise MergeError(f"{len(densities)} densities given for {n} task vectors")
    return [density if d is None else float(d) for d in densities]


KeyWeights = list  # list[dict[str, float] | None]: per task, key → multiplier of its weight (per-layer coefficients)


def _combine(pretrained: Mapping[str, torch.Tensor], sparse_tvs: Sequence[Mapping[str, torch.Tensor]],
             weights: Sequence[float], lam: float, normalize: bool, consensus: bool,
             key_weights: KeyWeights | None = None, vote: str = "weighted") -> StateDict:
    """Generalized task arithmetic on (already sparsified) task vectors, mergekit 0.1.5 semantics.

    Weighted deltas d_t = w_t τ̂_t, with w_t(k) = w_t · s_{t,k} on key k when per-layer multipliers are given.
    Without consensus: Δ = Σ_t d_t, divisor Σ_t w_t. With consensus (TIES sign election): γ = sign(Σ_t d_t) (0 → +)
    (``vote="unweighted"``: γ = sign(Σ_t τ̂_t), mask_t = [sign(τ̂_t) = γ] — weights applied after the election),
    mask_t = [sign(d_t) = γ], Δ = Σ_t d_t mask_t, divisor Σ_t w_t mask_t (0 → 1). If normalize: Δ /= divisor.
    θ = θ_0 + λ Δ.
    """
    out: StateDict = {}
    base_w = list(weights)
    for key, base in pretrained.items():
        if not base.is_floating_point():
            out[key] = base.clone()
            continue
        kw = base_w if not key_weights else [w * (s[key] if s else 1.0) for w, s in zip(base_w, key_weights)]
        w = torch.tensor(kw, dtype=torch.float32)
        wsum = float(w.sum())
        deltas = torch.stack([tv[key].float() for tv in sparse_tvs], 0)
        wv = w.view(-1, *([1] * base.dim()))
        weighted = deltas * wv
        if consensus:
            voters = deltas if vote == "unweighted" else weighted
            majority = torch.where(voters.sum(0) >= 0, 1.0, -1.0)
            mask = torch.sign(voters) == majority
            mixed = (weighted * mask).sum(0)
            if normalize:
                divisor = (wv * mask).sum(0)
                divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
                mixed = mixed / divisor
        else:
            mixed = weighted.sum(0)
            if normalize:
                mixed = mixed / (wsum if abs(wsum) >= 1e-8 else 1.0)
        out[key] = (base.float() + lam * mixed).to(base.dtype)
    return out


def ties_parts(pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
               density: float, trim_scope: str = "tensor") -> list[StateDict]:
    """TIES' disjoint parts (AdaMerging++): τ̂_t = trim(τ_t, density); γ = sign(Σ_t τ̂_t) (0 → +);
    part_t = τ̂_t · [sign τ̂_t = γ]. ``ties(vote="unweighted", normalize=False, weights=w)`` = θ_0 + λ Σ_t w_t part_t."""
    trimmed = _trim_all(pretrained, task_vectors, [density] * len(task_vectors), trim_scope)
    parts: list[StateDict] = [{} for _ in task_vectors]
    for key in float_keys(pretrained):
        stack = torch.stack([tv[key].float() for tv in trimmed], 0)
        majority = torch.where(stack.sum(0) >= 0, 1.0, -1.0)
        kept = stack * (torch.sign(stack) == majority)
        for i in range(len(task_vectors)):
            parts[i][key] = kept[i].to(pretrained[key].dtype)
    return parts


def _trim_all(pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
              densities: Sequence[float], scope: str) -> list[StateDict]:
    """TIES trim of every task vector: per tensor (``int(d·n)`` per tensor) or per model (top-k overall)."""
    fkeys = float_keys(pretrained)
    out: list[StateDict] = []
    for tv, d in zip(task_vectors, densities):
        if d >= 1.0:
            out.append({k: tv[k] for k in fkeys})
            continue
        if scope == "tensor":
            out.append(None)  # filled below, batched over tasks
        else:
            flat = torch.cat([tv[k].detach().float().reshape(-1) for k in fkeys])
            k_keep = max(1, int(d * flat.numel())) if flat.numel() else 0
            mask = topk_mask_rows(flat.abs().reshape(1, -1), k_keep).reshape(-1)
            res, offset = {}, 0
            for k in fkeys:
                n = tv[k].numel()
                res[k] = tv[k] * mask[offset:offset + n].reshape(tv[k].shape)
                offset += n
            out.append(res)
    if scope == "tensor":
        todo = [i for i, d in enumerate(densities) if d < 1.0]
        if todo:
            trimmed = {i: {} for i in todo}
            for key in fkeys:
                n = pretrained[key].numel()
                stack = torch.stack([task_vectors[i][key].detach().float().reshape(-1) for i in todo])
                ks = [max(1, int(densities[i] * n)) if n > 0 else 0 for i in todo]
                mask = topk_mask_rows(stack.abs(), ks)
                for row, i in enumerate(todo):
                    tv = task_vectors[i][key]
                    trimmed[i][key] = tv * mask[row].reshape(tv.shape)
            for i in todo:
                out[i] = trimmed[i]
    return out


def _dare_all(pretrained, task_vectors, densities, seed, task_ids) -> list[StateDict]:
    fkeys = float_keys(pretrained)
    return [{k: dare_drop(tv[k], d, seed, tid, k) for k in fkeys}
            for tv, d, tid in zip(task_vectors, densities, task_ids)]
