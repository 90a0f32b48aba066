"""Consensus task arithmetic — TALL masks agreed by at least k tasks (Wang et al., ICML 2024)."""
from __future__ import annotations

from typing import Annotated

import torch

from sammerge.merging.registry import Param, merge_direction
from sammerge.merging.task_vector import StateDict, float_keys

__all__ = ["tall_masks"]

MaskLambda = Annotated[float, Param(low=0.0, ui_high=1.0, step=0.05, label="mask λ",
                                    help="TALL-mask threshold λ_t: task t keeps entry j where |τ_t| ≥ λ_t·|Σ τ − τ_t| "
                                         "(the paper picks it per task in 0.2–0.6; default 0.6 as FusionBench).")]
MaskLambdas = Annotated[list[float] | None, Param(
    low=0.0, ui_high=1.0, step=0.05, label="per-task mask λ", entry_default=None,
    help="Optional per-task override of the mask λ; default: the global mask λ.")]


def tall_masks(stack: torch.Tensor, mask_lambdas: list[float]) -> torch.Tensor:
    """TALL masks of stacked task vectors [T, …]: m_t = |τ_t| ≥ λ_t |τ_MTL − τ_t| with τ_MTL = Σ_t τ_t (the paper's
    |θ0 − θ_t| ≥ λ_t |θ_MTL − θ_t|, θ_MTL = θ0 + τ_MTL)."""
    lam = torch.tensor(mask_lambdas, dtype=stack.dtype).view(-1, *([1] * (stack.dim() - 1)))
    return stack.abs() >= lam * (stack.sum(0, keepdim=True) - stack).abs()


@merge_direction(name="consensus_ta", label="Consensus task arithmetic (TALL masks)",
                 description="Keep only the entries that at least k tasks' TALL masks mark as important, in the "
                             "task-arithmetic sum; θ0 + λ τ.",
                 reference="https://arxiv.org/abs/2405.07813", lambda_range=(0.0, 2.0, 0.05))
def consensus_ta(pretrained: StateDict, task_vectors: list[StateDict],
                 k: Annotated[int, Param(low=0, high=64, ui_high=8, step=1, label="k (agreeing tasks)",
                                         help="Entries marked by fewer than k TALL masks are removed (default 2; "
                                              "k = 0 is plain task arithmetic).")] = 2,
                 mask_lambda: MaskLambda = 0.6, mask_lambdas: MaskLambdas = None) -> StateDict:
    """Consensus: TALL masks m_t = [|τ_t| ≥ λ_t |Σ_s τ_s − τ_t|] (:func:`tall_masks`, λ_t = mask λ or its per-task
    override), consensus mask c = [Σ_t m_t ≥ k]; τ = c ⊙ Σ_t τ_t; θ = θ0 + λ τ.

    The masks follow the paper's per-task definition (tall_masks ``generate_task_masks``), not FusionBench 0.2.33's
    ``TallMaskTaskArithmeticAlgorithm.run``, which passes θ0 where the fine-tuned θ_t is meant.
    """
    lams = [mask_lambda if m is None else float(m) for m in (mask_lambdas or [None] * len(task_vectors))]
    out: StateDict = {}
    for key in float_keys(pretrained):
        stack = torch.stack([tv[key].detach().float() for tv in task_vectors], 0)
        agree = tall_masks(stack, lams).sum(0) >= k
        out[key] = stack.sum(0) * agree
    return out
