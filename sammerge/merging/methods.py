"""The merge methods: pure functions ``fn(θ0, [τ_1..τ_T], **params) -> θ`` registered in the registry.

Each docstring gives the formula; each method declares its mergekit name. Methods never modify their
inputs. Bad input raises :class:`~sammerge.errors.MergeError` (tensors, coefficients) or
:class:`~sammerge.errors.ConfigError` (unknown parameter, value out of range).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping

import torch

from sammerge.errors import ConfigError, MergeError
from sammerge.merging.registry import Mergekit, Param, merge_method
from sammerge.merging.common import (Densities, Density, KeyWeights, Lambda, Seed, Weights,  # noqa: F401
                                     _check_weight_sum, _combine, _dare_all, _densities, _normalize_help, _trim_all,
                                     _weights, ties_parts)
from sammerge.merging.sparsify import breadcrumbs_mask
from sammerge.merging.task_vector import StateDict, float_keys

__all__ = ["weight_average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "model_stock",
           "ties_parts"]

# ----------------------------------------------------------------------------------------------
# mergekit mappings: names, per-model keys, and where mergekit's semantics differ (comments of an export)
# ----------------------------------------------------------------------------------------------

def _linear_import(top: Mapping[str, Any], weights: list[float]) -> None:
    if top.get("normalize", True) is not True and abs(sum(weights) - 1.0) > 1e-9:
        raise ConfigError("mergekit config: linear with normalize: false is only supported when the weights sum to 1")
    if abs(sum(weights)) < 1e-8:
        raise ConfigError("mergekit config: linear weights sum to 0")


def _ties_notes(kw: Mapping[str, Any]) -> list[str]:
    notes = []
    if kw.get("trim_scope") == "model":
        notes.append("SEMANTICS DIFFER: sammerge trimmed over the whole flattened task vector (trim_scope: model, "
                     "original TIES); mergekit trims each tensor separately, so mergekit will NOT reproduce these weights.")
    else:
        notes.append("ties: per-tensor trim keeping max(1, int(density*n)) entries, weights applied before the "
                     "sign vote (mergekit 0.1.5 semantics); entries tied at the trim threshold may be "
                     "broken differently (sammerge: lowest index first).")
    if kw.get("vote") == "unweighted":
        notes.append("SEMANTICS DIFFER: vote: unweighted (AdaMerging++ TIES parts) elects the sign from the unweighted "
                     "trimmed task vectors; mergekit's ties votes with the weights applied, so mergekit reproduces "
                     "these weights only where every task has the same weight on a tensor.")
    return notes


def _dare_notes(kw: Mapping[str, Any]) -> list[str]:
    return [f"SEMANTICS DIFFER: DARE drop masks use sammerge's per-(seed, task, tensor) generator (seed "
            f"{kw.get('seed')}); mergekit draws from torch's global RNG and (0.1.5, rescale: true) rescales survivors "
            "to the original L1 norm instead of by 1/density, so weights agree only in expectation."]


MK_LINEAR = Mergekit("linear", fixed={"normalize": True}, base="none", check_import=_linear_import, notes=lambda kw: [
    "weight_average is exported as mergekit 'linear' over the fine-tuned models (sum w_t theta_t / sum w_t); "
    "identical weights."])
MK_TASK_ARITHMETIC = Mergekit("task_arithmetic", notes=lambda kw: [
    "task_arithmetic: same formula as mergekit (base + lambda * sum w_t tau_t [/ sum w_t]); identical weights up "
    "to float rounding."])
MK_TIES = Mergekit("ties", model_keys=("weight", "density"), notes=_ties_notes)
MK_DARE_LINEAR = Mergekit("dare_linear", model_keys=("weight", "density"), fixed={"rescale": True}, notes=_dare_notes)
MK_DARE_TIES = Mergekit("dare_ties", model_keys=("weight", "density"), fixed={"rescale": True}, notes=_dare_notes)
MK_BREADCRUMBS = Mergekit("breadcrumbs", model_keys=("weight", "density", "gamma"),
                          model_defaults={"weight": 1.0, "density": 1.0, "gamma": 0.01}, notes=lambda kw: [
    "SEMANTICS MAY DIFFER: breadcrumbs keeps ranks [int(gamma*n), int(gamma*n)+int(density*n)) by |value| per tensor "
    "(mergekit 0.1.5 magnitude_outliers); ties at the thresholds may be broken differently."])
MK_MODEL_STOCK = Mergekit("model_stock", model_keys=(), notes=lambda kw: [
    "model_stock: same per-tensor formula as mergekit (filter_wise: false); mergekit needs at least 2 fine-tuned "
    "models."])


# ----------------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------------

@merge_method(name="weight_average", label="Weight averaging",
              description="Average of the fine-tuned weights: θ0 + Σ w_t τ_t / Σ w_t (equal weights: the plain mean).",
              mergekit=MK_LINEAR, reference="https://arxiv.org/abs/2203.05482",
              validator=lambda p: _check_weight_sum(p, "weight_average"),
              linear_coefficients=lambda kw, n: [w / sum(_weights(kw.get("weights"), n))
                                                 for w in _weights(kw.get("weights"), n)])
def weight_average(pretrained: StateDict, task_vectors: list[StateDict], key_weights: KeyWeights | None = None,
                   weights: Weights = None) -> StateDict:
    """θ = θ_0 + Σ_t w_t τ_t / Σ_t w_t  ==  Σ_t w_t θ_t / Σ_t w_t (w_t = 1: the mean of the fine-tuned weights).

    Equals mergekit ``linear`` over the fine-tuned models (normalize: true).
    """
    w = _weights(weights, len(task_vectors))
    if abs(sum(w)) < 1e-8:
        raise MergeError("weight_average: the weights sum to 0")
    return _combine(pretrained, task_vectors, w, 1.0, normalize=True, consensus=False, key_weights=key_weights)


@merge_method(name="task_arithmetic", label="Task arithmetic",
              description="θ0 + λ Σ w_t τ_t (optionally divided by Σ w_t); one shared λ and/or one weight per task.",
              mergekit=MK_TASK_ARITHMETIC, reference="https://arxiv.org/abs/2212.04089",
              validator=lambda p: _check_weight_sum(p, "task_arithmetic") if p.get("normalize") else None,
              lambda_range=(0.0, 1.0, 0.05), lambda_is_scale=True,
              linear_coefficients=lambda kw, n: _ta_coefficients(kw, n))
def task_arithmetic(pretrained: StateDict, task_vectors: list[StateDict], key_weights: KeyWeights | None = None,
                    lambda_: Lambda = 1.0, weights: Weights = None,
                    normalize: Annotated[bool, Param(label="normalize", mergekit_name="normalize",
                                                     help=_normalize_help(False))] = False) -> StateDict:
    """θ = θ_0 + λ Σ_t w_t τ_t, or θ_0 + λ Σ_t w_t τ_t / Σ_t w_t when ``normalize``.

    Equals mergekit ``task_arithmetic`` (``lambda``, per-model ``weight``, ``normalize``, default false).
    """
    w = _weights(weights, len(task_vectors))
    return _combine(pretrained, task_vectors, w, lambda_, normalize=normalize, consensus=False,
                    key_weights=key_weights)


def _ta_coefficients(kw: Mapping[str, Any], n: int) -> list[float]:
    """Task arithmetic as θ0 + Σ c_t τ_t: c_t = λ w_t (÷ Σ w when normalize)."""
    w = _weights(kw.get("weights"), n)
    total = sum(w) if kw.get("normalize") else 1.0
    return [kw["lambda"] * x / total for x in w]


TrimScope = Annotated[Literal["tensor", "model"], Param(
    label="trim scope",
    help="'tensor' (default, mergekit 0.1.5): keep max(1, int(density·n)) entries of each tensor; "
         "'model' (original TIES): keep the top-k entries of the whole flattened task vector.")]


Vote = Annotated[Literal["weighted", "unweighted"], Param(
    label="sign vote",
    help="'weighted' (default, mergekit): the sign election counts w_t·τ̂_t; 'unweighted' (AdaMerging++): the "
         "election counts τ̂_t and the per-task weights scale the agreeing parts afterwards.")]


@merge_method(name="ties", label="TIES merging",
              description="Trim each task vector to its top-density entries by |value|, elect a sign per entry, "
                          "average the agreeing entries (disjoint mean), scale by λ.",
              mergekit=MK_TIES, reference="https://arxiv.org/abs/2306.01708",
              lambda_range=(0.0, 2.5, 0.1), lambda_is_scale=True)
def ties(pretrained: StateDict, task_vectors: list[StateDict], key_weights: KeyWeights | None = None,
         density: Density = 0.2, lambda_: Lambda = 1.0,
         weights: Weights = None, densities: Densities = None, trim_scope: TrimScope = "tensor",
         normalize: Annotated[bool, Param(label="normalize (disjoint mean)", mergekit_name="normalize",
                                          help=_normalize_help(True) + " False: disjoint sum.")] = True,
         vote: Vote = "weighted") -> StateDict:
    """TIES: τ̂_t = trim(τ_t, density); d_t = w_t τ̂_t; γ = sign(Σ_t d_t) (0 → +);
    τ_m = Σ_t d_t [sign d_t = γ] / Σ_t w_t [sign d_t = γ]  (disjoint mean; a sum if not ``normalize``);
    θ = θ_0 + λ τ_m.

    ``vote="unweighted"`` elects γ = sign(Σ_t τ̂_t) and applies the weights after the election (AdaMerging++'s
    TIES parts, :func:`ties_parts`); the default ``"weighted"`` is mergekit's (weights before the vote).
    ``trim_scope="tensor"`` (default) matches mergekit 0.1.5 ``ties``: exactly max(1, int(density·n)) entries of each
    tensor are kept (ties at the threshold broken by lowest index). ``"model"`` is the original paper's
    top-k over the whole flattened task vector.
    """
    n = len(task_vectors)
    w = _weights(weights, n)
    trimmed = _trim_all(pretrained, task_vectors, _densities(densities, density, n), trim_scope)
    return _combine(pretrained, trimmed, w, lambda_, normalize=normalize, consensus=True, key_weights=key_weights,
                    vote=vote)


@merge_method(name="dare_linear", label="DARE + task arithmetic",
              description="Randomly drop 1−density of each task vector's entries, rescale survivors by 1/density, "
                          "then task arithmetic.",
              mergekit=MK_DARE_LINEAR, reference="https://arxiv.org/abs/2311.03099",
              lambda_range=(0.0, 1.0, 0.05), lambda_is_scale=True)
def dare_linear(pretrained: StateDict, task_vectors: list[StateDict], task_ids: list[str],
                key_weights: KeyWeights | None = None,
                density: Density = 0.5, lambda_: Lambda = 1.0, weights: Weights = None, densities: Densities = None,
                seed: Seed = 0,
                normalize: Annotated[bool, Param(label="normalize", mergekit_name="normalize",
                                                 help=_normalize_help(False))] = False) -> StateDict:
    """DARE: τ̃_t = m_t ⊙ τ_t / density with m_t ~ Bernoulli(density) per entry (E[τ̃_t] = τ_t);
    θ = θ_0 + λ Σ_t w_t τ̃_t (/ Σ_t w_t if ``normalize``).

    Masks come from one generator per (seed, task id, tensor key): reproducible and independent of dict order.
    """
    n = len(task_vectors)
    dropped = _dare_all(pretrained, task_vectors, _densities(densities, density, n), seed, task_ids)
    return _combine(pretrained, dropped, _weights(weights, n), lambda_, normalize=normalize, consensus=False,
                    key_weights=key_weights)


@merge_method(name="dare_ties", label="DARE + TIES",
              description="Randomly drop 1−density of each task vector's entries, rescale by 1/density, "
                          "then TIES sign election and disjoint merge.",
              mergekit=MK_DARE_TIES, reference="https://arxiv.org/abs/2311.03099",
              lambda_range=(0.0, 1.0, 0.05), lambda_is_scale=True)
def dare_ties(pretrained: StateDict, task_vectors: list[StateDict], task_ids: list[str],
              key_weights: KeyWeights | None = None,
              density: Density = 0.5, lambda_: Lambda = 1.0, weights: Weights = None, densities: Densities = None,
              seed: Seed = 0,
              normalize: Annotated[bool, Param(label="normalize (disjoint mean)", mergekit_name="normalize",
                                               help=_normalize_help(False))] = False) -> StateDict:
    """DARE-TIES: τ̃_t = m_t ⊙ τ_t / density; d_t = w_t τ̃_t; γ = sign(Σ d_t);
    τ_m = Σ_t d_t [sign d_t = γ] (/ Σ_t w_t [sign d_t = γ] if ``normalize``); θ = θ_0 + λ τ_m.

    ``normalize`` defaults to false as in mergekit 0.1.5 ``dare_ties``.
    """
    n = len(task_vectors)
    dropped = _dare_all(pretrained, task_vectors, _densities(densities, density, n), seed, task_ids)
    return _combine(pretrained, dropped, _weights(weights, n), lambda_, normalize=normalize, consensus=True,
                    key_weights=key_weights)


def _check_breadcrumbs(params: dict[str, Any]) -> None:
    dens = [params["density"]] + [d for d in (params.get("densities") or []) if d is not None]
    for d in dens:
        if d + params["gamma"] > 1.0 + 1e-12:
            raise ConfigError(f"parameter 'gamma' = {params['gamma']} plus density {d} exceeds 1")


@merge_method(name="breadcrumbs", label="Model Breadcrumbs",
              description="Per tensor, drop the largest gamma fraction (outliers) and the smallest entries so that "
                          "density remain, then task arithmetic.",
              mergekit=MK_BREADCRUMBS, reference="https://arxiv.org/abs/2312.06795",
              validator=_check_breadcrumbs,
              lambda_range=(0.0, 1.0, 0.05), lambda_is_scale=True)
def breadcrumbs(pretrained: StateDict, task_vectors: list[StateDict], key_weights: KeyWeights | None = None,
                density: Density = 0.9,
                gamma: Annotated[float, Param(low=0.0, high=1.0, high_exclusive=True, step=0.01, label="gamma",
                                              mergekit_name="gamma",
                                              help="Fraction of largest-|value| entries of each tensor dropped "
                                                   "as outliers (density + gamma ≤ 1).")] = 0.01,
                lambda_: Lambda = 1.0, weights: Weights = None, densities: Densities = None,
                normalize: Annotated[bool, Param(label="normalize", mergekit_name="normalize",
                                                 help=_normalize_help(False))] = False) -> StateDict:
    """Breadcrumbs: per tensor of n entries sorted by |τ| descending, keep ranks [int(γn), int(γn)+int(density·n))
    (the top int(γn) outliers and the small tail are zeroed); θ = θ_0 + λ Σ_t w_t τ̂_t (/ Σ w_t if ``normalize``).
    """
    n = len(task_vectors)
    fkeys = float_keys(pretrained)
    sparse = []
    for tv, d in zip(task_vectors, _densities(densities, density, n)):
        if d + gamma > 1.0 + 1e-12:
            raise MergeError(f"breadcrumbs: density {d} + gamma {gamma} exceeds 1")
        sparse.append({k: tv[k] * breadcrumbs_mask(tv[k].detach().abs().float(), d, gamma) for k in fkeys})
    return _combine(pretrained, sparse, _weights(weights, n), lambda_, normalize=normalize, consensus=False,
                    key_weights=key_weights)


@merge_method(name="model_stock", label="Model Stock",
              description="Per tensor, interpolate between the average fine-tuned weights and θ0 with a ratio set by "
                          "the angle between task vectors (clamped to [0, 1]: vectors pointing apart give θ0).",
              mergekit=MK_MODEL_STOCK, reference="https://arxiv.org/abs/2403.19522")
def model_stock(pretrained: StateDict, task_vectors: list[StateDict]) -> StateDict:
    """Model Stock: per tensor, cos = mean pairwise cosine of the task vectors (1 for one task),
    t = clamp(T·cos / (1 + (T−1)·cos), 0, 1) (t = 0 where the denominator vanishes); θ = θ_0 + t · (1/T) Σ_t τ_t.

    Same formula as mergekit 0.1.5 ``model_stock`` (filter_wise: false) for cos ≥ 0; mergekit does not clamp, so
    for tasks whose vectors point apart (cos < 0) its ratio is unbounded (even negative or > 1) while ours stays
    in [0, 1]. mergekit needs ≥ 2 fine-tuned models.
    """
    T = len(task_vectors)
    out: StateDict = {}
    for key, base in pretrained.items():
        if not base.is_floating_point():
            out[key] = base.clone()
            continue
        flat = torch.stack([tv[key].float().reshape(-1) for tv in task_vectors], 0)
        if T == 1:
            cos = 1.0
        else:
            norms = flat.norm(dim=1)
            dots = flat @ flat.T
            cosm = (dots / (norms[:, None] * norms[None, :]).clamp_min(1e-6)).clamp(-1, 1)
            iu = torch.triu_indices(T, T, offset=1)
            cos = float(cosm[iu[0], iu[1]].mean())
        denom = 1 + (T - 1) * cos
        t = 0.0 if abs(denom) < 1e-6 else T * cos / denom
        t = min(1.0, max(0.0, t))  # unbounded when the vectors point apart (cos < 0): clamp to [θ0, mean]
        mean = flat.mean(0).reshape(base.shape)
        out[key] = (base.float() + t * mean).to(base.dtype)
    return out
