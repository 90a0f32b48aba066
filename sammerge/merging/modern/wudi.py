"""WUDI — "Whoever Started the Interference Should End It" (Cheng et al., 2025): data-free merging by task vectors."""
from __future__ import annotations

from typing import Annotated

import torch

from sammerge.merging.modern._matrix import ConvRule, matrix_wise
from sammerge.merging.registry import Param, merge_direction
from sammerge.merging.task_vector import StateDict

__all__ = ["wudi_matrix"]


def wudi_matrix(mats: list[torch.Tensor], iterations: int, lr: float) -> torch.Tensor:
    """One layer: minimise L(τ) = Σ_t ‖(τ − τ_t) τ_tᵀ‖²_F / ‖τ_t‖²_F from τ = Σ_t τ_t with Adam (lr, ``iterations``).

    The gradient is exact in closed form, ∇L = 2 (τ A − B) with A = Σ_t τ_tᵀτ_t / ‖τ_t‖², B = Σ_t τ_t τ_tᵀτ_t / ‖τ_t‖²
    (one [out, in]·[in, in] product per step instead of T forward and backward products)."""
    stack = torch.stack(mats, 0)
    sq = stack.reshape(len(mats), -1).square().sum(1).clamp_min(torch.finfo(stack.dtype).tiny)
    grams = torch.einsum("toi,toj->tij", stack, stack) / sq.view(-1, 1, 1)  # τ_tᵀτ_t / ‖τ_t‖²
    a = grams.sum(0)
    b = torch.einsum("toi,tij->oj", stack, grams)
    tau = torch.nn.Parameter(stack.sum(0).clone())
    opt = torch.optim.Adam([tau], lr=lr, weight_decay=0)
    for _ in range(int(iterations)):
        with torch.no_grad():
            tau.grad = 2 * (tau @ a - b)
        opt.step()
    return tau.detach()


Iterations = Annotated[int, Param(low=0, high=10_000, ui_high=1000, step=50, label="iterations",
                                  help="Adam steps per layer (FusionBench's wudi_merging default 300).")]
LearningRate = Annotated[float, Param(low=0.0, high=1.0, low_exclusive=True, ui_high=1e-3, step=1e-6,
                                      label="learning rate", help="Adam learning rate (default 1e-5).")]


@merge_direction(name="wudi", label="WUDI (data-free interference removal)",
                 description="Per layer, the direction that least disturbs each task's own input space: minimise "
                             "Σ_t ‖(τ − τ_t) τ_tᵀ‖² / ‖τ_t‖² by Adam from Σ τ_t; θ0 + λ τ.",
                 reference="https://arxiv.org/abs/2503.08099", lambda_range=(0.0, 2.0, 0.1))
def wudi(pretrained: StateDict, task_vectors: list[StateDict], iterations: Iterations = 300,
         lr: LearningRate = 1e-5, conv: ConvRule = "reshape") -> StateDict:
    """WUDI: per weight matrix τ = argmin Σ_t ‖(τ − τ_t) τ_tᵀ‖²_F / ‖τ_t‖²_F, Adam from Σ_t τ_t
    (:func:`wudi_matrix`); other tensors τ = (1/T) Σ_t τ_t; θ = θ0 + λ τ (FusionBench applies no scaling: λ = 1).

    Same objective, start, optimiser and defaults as FusionBench 0.2.33 ``wudi.wudi_merging`` (conv="average");
    conv kernels are reshaped to [out, in·kh·kw] by default.
    """
    return matrix_wise(pretrained, task_vectors, conv, lambda mats: wudi_matrix(mats, iterations, lr))
