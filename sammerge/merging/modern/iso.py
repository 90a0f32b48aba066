"""Iso-C and Iso-CTS — isotropic merging in common and task-specific subspaces (Marczak et al., ICML 2025)."""
from __future__ import annotations

from typing import Annotated

import torch

from sammerge.merging.modern._matrix import ConvRule, matrix_wise, polar
from sammerge.merging.registry import Param, merge_direction
from sammerge.merging.task_vector import StateDict

__all__ = ["iso_c_matrix", "iso_cts_matrix"]


def iso_c_matrix(mats: list[torch.Tensor]) -> torch.Tensor:
    """One layer: Σ_t τ_t = U S Vᵀ; τ = U (mean(S)·I) Vᵀ (a flat, isotropic spectrum)."""
    u, s, vh = torch.linalg.svd(torch.stack(mats, 0).sum(0), full_matrices=False)
    return (u * s.mean()) @ vh


def iso_cts_matrix(mats: list[torch.Tensor], common_space_fraction: float) -> torch.Tensor:
    """One layer (r = min(out, in), T tasks): k = r − round((r − ⌊f·r⌋)/T)·T common directions = the top-k left/right
    singular vectors of Σ_t τ_t; n = (r − k)/T directions per task = the top n of (I − U_c U_cᵀ) τ_t; stack
    [task dirs … | common dirs], orthogonalise U and Vᵀ (polar factor), τ = U (mean of the stacked S · I) Vᵀ.
    Where that k would be negative (f near 0; FusionBench slices with a negative index there), n = ⌊r/T⌋ and the
    remaining r − nT directions are common."""
    T, r = len(mats), min(mats[0].shape)
    common = int(r * common_space_fraction)
    common = r - round((r - common) / T) * T
    if common < 0:  # rounding up left no room (fraction near 0): ⌊r/T⌋ directions per task, the rest common
        common = r - (r // T) * T
    per_task = (r - common) // T
    u, s, vh = torch.linalg.svd(torch.stack(mats, 0).sum(0), full_matrices=False)
    uc, sc, vhc = u[:, :common], s[:common], vh[:common, :]
    us, ss, vhs = [], [], []
    for m in mats:
        ut, st, vht = torch.linalg.svd(m - uc @ (uc.T @ m), full_matrices=False)
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vhs.append(vht[:per_task, :])
    u_all = polar(torch.cat([*us, uc], 1))
    vh_all = polar(torch.cat([*vhs, vhc], 0))
    s_mean = torch.cat([*ss, sc]).mean()
    return (u_all * s_mean) @ vh_all


@merge_direction(name="iso_c", label="Iso-C (isotropic merging)",
                 description="Per layer, the sum of the task vectors with a flattened (isotropic) singular "
                             "spectrum; θ0 + λ τ.",
                 reference="https://arxiv.org/abs/2502.04959", lambda_range=(0.0, 3.0, 0.1))
def iso_c(pretrained: StateDict, task_vectors: list[StateDict], conv: ConvRule = "reshape") -> StateDict:
    """Iso-C: per weight matrix Σ_t τ_t = U S Vᵀ, τ = mean(S) U Vᵀ (:func:`iso_c_matrix`); other tensors
    τ = (1/T) Σ_t τ_t; θ = θ0 + λ τ (FusionBench ``scaling_factor``, default 1).

    Matches FusionBench 0.2.33 ``isotropic_merging.iso_utils.iso_c`` (conv="average"); conv kernels are reshaped to
    [out, in·kh·kw] by default.
    """
    return matrix_wise(pretrained, task_vectors, conv, iso_c_matrix)


CommonSpaceFraction = Annotated[float, Param(
    low=0.0, high=1.0, step=0.05, label="common space fraction",
    help="Fraction f of each layer's rank given to the common subspace of Σ τ_t (default 0.8); the rest is split "
         "equally between the tasks' own directions.")]


@merge_direction(name="iso_cts", label="Iso-CTS (common + task-specific subspaces)",
                 description="Per layer, the top directions of Σ τ_t plus each task's own top directions outside "
                             "them, orthogonalised, with an isotropic spectrum; θ0 + λ τ.",
                 reference="https://arxiv.org/abs/2502.04959", lambda_range=(0.0, 3.0, 0.1))
def iso_cts(pretrained: StateDict, task_vectors: list[StateDict], common_space_fraction: CommonSpaceFraction = 0.8,
            conv: ConvRule = "reshape") -> StateDict:
    """Iso-CTS: per weight matrix the common subspace (top ⌊f·r⌋ directions of Σ τ_t, adjusted so that the rest
    divides by T) plus each task's top (r − k)/T directions of τ_t with the common left subspace projected out,
    orthogonalised, every singular value set to their mean (:func:`iso_cts_matrix`); other tensors (1/T) Σ_t τ_t;
    θ = θ0 + λ τ.

    Matches FusionBench 0.2.33 ``isotropic_merging.iso_utils.iso_cts`` (conv="average"); conv kernels are reshaped
    to [out, in·kh·kw] by default.
    """
    return matrix_wise(pretrained, task_vectors, conv,
                       lambda mats: iso_cts_matrix(mats, common_space_fraction))
