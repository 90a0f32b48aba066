"""DELLA — drop and rescale by magnitude rank, then TIES election (Deep et al., 2024), as mergekit's ``della``."""
from __future__ import annotations

from typing import Annotated, Any, Mapping

from sammerge.errors import ConfigError
from sammerge.merging.common import Densities, Density, KeyWeights, Lambda, Seed, Weights, _combine, _densities, \
    _weights
from sammerge.merging.registry import Mergekit, Param, merge_method
from sammerge.merging.sparsify import della_prune
from sammerge.merging.task_vector import StateDict, float_keys


def _check_epsilon(params: dict[str, Any]) -> None:
    eps = params["epsilon"]
    for d in [params["density"]] + [d for d in (params.get("densities") or []) if d is not None]:
        if d < 1.0 and not (0.0 < d - eps and d + eps < 1.0):
            raise ConfigError(f"della: density {d} ± epsilon {eps} must lie inside (0, 1)")


def _della_notes(kw: Mapping[str, Any]) -> list[str]:
    return [f"SEMANTICS DIFFER: DELLA keep masks use sammerge's per-(seed, task, tensor) generator (seed "
            f"{kw.get('seed')}); mergekit draws from torch's global RNG, so the weights agree only in distribution "
            "(same keep probabilities, L1 rescale, sign election and normalisation)."]


MK_DELLA = Mergekit("della", model_keys=("weight", "density", "epsilon"),
                    model_defaults={"weight": 1.0, "density": 1.0, "epsilon": 0.15}, fixed={"rescale": True},
                    notes=_della_notes)


@merge_method(name="della", label="DELLA",
              description="Drop each task vector's entries with probability falling with their magnitude rank, "
                          "rescale to the L1 norm, then TIES sign election and disjoint mean, scale by λ.",
              mergekit=MK_DELLA, reference="https://arxiv.org/abs/2406.11617", validator=_check_epsilon,
              lambda_range=(0.0, 2.5, 0.1), lambda_is_scale=True)
def della(pretrained: StateDict, task_vectors: list[StateDict], task_ids: list[str],
          key_weights: KeyWeights | None = None, density: Density = 0.5,
          epsilon: Annotated[float, Param(low=0.0, high=0.5, step=0.01, label="epsilon", mergekit_name="epsilon",
                                          help="Half-width ε of the keep probabilities: from density − ε (smallest "
                                               "|τ|) to density + ε (largest), per row (mergekit default 0.15).")] = 0.15,
          lambda_: Lambda = 1.0, weights: Weights = None, densities: Densities = None, seed: Seed = 0,
          normalize: Annotated[bool, Param(label="normalize (disjoint mean)", mergekit_name="normalize",
                                           help="Divide by the agreeing weights (mergekit default true).")] = True
          ) -> StateDict:
    """DELLA: τ̂_t = MagPrune(τ_t; density_t, ε) (:func:`~sammerge.merging.sparsify.della_prune`: keep probability
    linear in |τ| rank over [density − ε, density + ε], survivors rescaled to ‖τ_t‖₁); d_t = w_t τ̂_t;
    γ = sign(Σ_t d_t); τ = Σ_t d_t [sign d_t = γ] / Σ_t w_t [sign d_t = γ]; θ = θ0 + λ τ.

    mergekit 0.1.5 ``della`` semantics (rescale: true); the keep masks come from one generator per (seed, task id,
    tensor) instead of torch's global RNG. density 0.5 here (mergekit's default 1 prunes nothing).
    """
    n = len(task_vectors)
    keys = float_keys(pretrained)
    pruned = [{k: della_prune(tv[k], d, epsilon, seed, tid, k) for k in keys}
              for tv, d, tid in zip(task_vectors, _densities(densities, density, n), task_ids)]
    return _combine(pretrained, pruned, _weights(weights, n), lambda_, normalize=normalize, consensus=True,
                    key_weights=key_weights)
