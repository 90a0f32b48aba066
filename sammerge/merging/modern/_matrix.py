"""Weight tensors as matrices, for the SVD- and layer-wise methods (TSV-M, Iso-C/CTS, WUDI).

Linear weights are [out, in] matrices already. A conv kernel [out, in, kh, kw] is, by default, the matrix
[out, in·kh·kw] (the linear map it applies to each unfolded input patch) — ``conv="reshape"``. FusionBench's rule,
``conv="average"``, treats only 2-D tensors as matrices. Every tensor that is not a matrix (biases, norms, and conv
kernels under ``"average"``) is merged by the plain mean of the task vectors, τ = (1/T) Σ_t τ_t.
"""
from __future__ import annotations

from typing import Annotated, Callable, Literal, Mapping, Sequence

import torch

from sammerge.merging.registry import Param
from sammerge.merging.task_vector import StateDict, float_keys
from sammerge.progress import report

__all__ = ["ConvRule", "as_matrix", "matrix_wise", "polar"]

ConvRule = Annotated[Literal["reshape", "average"], Param(
    label="conv kernels",
    help="How a conv kernel [out, in, kh, kw] is treated: 'reshape' = the matrix [out, in·kh·kw] (default); "
         "'average' = FusionBench's rule, only 2-D tensors are matrices, all other tensors are averaged.")]


def as_matrix(t: torch.Tensor, conv: str = "reshape") -> torch.Tensor | None:
    """``t`` as a 2-D matrix (a view where possible), or None when the method averages it instead."""
    if t.ndim == 2:
        return t
    if t.ndim == 4 and conv == "reshape":
        return t.reshape(t.shape[0], -1)
    return None


def _work(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def matrix_wise(pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]], conv: str,
                merge: Callable[[list[torch.Tensor]], torch.Tensor]) -> StateDict:
    """τ_merged per float key: ``merge([M_1..M_T])`` for matrices (reshaped back), (1/T) Σ_t τ_t for the rest.
    Reports its progress per tensor (:func:`sammerge.progress.report`)."""
    out: StateDict = {}
    keys = float_keys(pretrained)
    for i, key in enumerate(keys):
        report(i, len(keys), f"merged direction: {key}")
        tensors = [_work(tv[key]) for tv in task_vectors]
        mats = [as_matrix(t, conv) for t in tensors]
        if mats[0] is None:
            out[key] = torch.stack(tensors, 0).mean(0)
        else:
            out[key] = merge(mats).reshape(tensors[0].shape)
    report(len(keys), len(keys), "merged direction")
    return out


def polar(m: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor U Vᵀ of m = U S Vᵀ (the nearest matrix with orthonormal columns/rows)."""
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh
