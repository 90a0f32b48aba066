"""TSV-M — Task Singular Vectors: Merging (Gargiulo et al., CVPR 2025)."""
from __future__ import annotations

import torch

from sammerge.merging.modern._matrix import ConvRule, matrix_wise, polar
from sammerge.merging.registry import merge_direction
from sammerge.merging.task_vector import StateDict

__all__ = ["tsv_m_matrix"]


def tsv_m_matrix(mats: list[torch.Tensor]) -> torch.Tensor:
    """One layer: τ_t = U_t S_t V_tᵀ; keep each task's top k = ⌊r/T⌋ singular triplets (r = min(out, in));
    U = [U_1,k | … | U_T,k], S = diag(S_1,k … S_T,k), Vᵀ = [V_1,kᵀ; …; V_T,kᵀ]; τ = polar(U) S polar(Vᵀ).

    A matrix with r < T keeps no triplet: FusionBench's code then gives 0; here it is the mean (1/T) Σ τ_t."""
    T = len(mats)
    k = int(min(mats[0].shape) * (1 / T))  # FusionBench's ⌊r·(1/T)⌋, same rounding
    if k == 0:
        return torch.stack(mats, 0).mean(0)
    us, ss, vhs = [], [], []
    for m in mats:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k, :])
    u_all, s_all, vh_all = torch.cat(us, 1), torch.cat(ss), torch.cat(vhs, 0)
    return polar(u_all) @ torch.diag(s_all) @ polar(vh_all)


@merge_direction(name="tsv_m", label="TSV-M (task singular vectors)",
                 description="Per layer, keep each task's top 1/T singular directions, decorrelate the stacked "
                             "directions (orthogonal polar factor), sum; θ0 + λ τ.",
                 reference="https://arxiv.org/abs/2412.00081", lambda_range=(0.0, 3.0, 0.1))
def tsv_m(pretrained: StateDict, task_vectors: list[StateDict], conv: ConvRule = "reshape") -> StateDict:
    """TSV-M: per weight matrix τ = polar([U_1,k … U_T,k]) diag(S_1,k … S_T,k) polar([V_1,k … V_T,k])ᵀ with
    k = ⌊r/T⌋ (:func:`tsv_m_matrix`); other tensors τ = (1/T) Σ_t τ_t; θ = θ0 + λ τ (FusionBench ``alpha``, default 1).

    Matches FusionBench 0.2.33 ``compute_and_sum_svd_mem_reduction`` (conv="average"); conv kernels are reshaped to
    [out, in·kh·kw] by default.
    """
    return matrix_wise(pretrained, task_vectors, conv, tsv_m_matrix)
