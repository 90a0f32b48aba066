"""RegMean — regression mean of linear layers from their input statistics (Jin et al., ICLR 2023)."""
from __future__ import annotations

from typing import Annotated, Mapping

import torch
import torch.nn.functional as F

from sammerge.errors import MergeError
from sammerge.merging.modern._data import ImageSeed, ImageSplit, ImagesPerTask, batches, finetuned_encoder, task_images
from sammerge.merging.modern._matrix import ConvRule, as_matrix
from sammerge.merging.registry import Param, merge_direction
from sammerge.merging.task_vector import StateDict, float_keys
from sammerge.progress import report

__all__ = ["input_grams", "reduce_non_diagonal", "regmean_matrix"]

_BATCH = 64


def _patches(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The rows the layer's weight matrix multiplies: a Linear's inputs [N·…, in]; a conv's unfolded patches
    [N·L, in·kh·kw] (same order as ``weight.reshape(out, -1)``); None for a conv RegMean cannot treat as one
    matrix (groups > 1, non-zero padding modes)."""
    if isinstance(module, torch.nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def input_grams(zoo, task: str, variant: str, params: Mapping) -> dict[str, torch.Tensor]:
    """G_t[k] = (1/n) Σ_rows x xᵀ (float64) of the inputs x of every Linear layer (and, with conv="reshape", every
    conv's unfolded patches) of the fine-tuned model θ_t on the task's unlabeled images; keyed by the layer's
    ``weight`` key. n counts rows (tokens, patch positions), as FusionBench's hooks do."""
    encoder = finetuned_encoder(zoo, task, variant)
    kinds = (torch.nn.Linear, torch.nn.Conv2d) if params["conv"] == "reshape" else (torch.nn.Linear,)
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = {}

    def hook(name):
        def fn(module, inputs, _output):
            x = _patches(module, inputs[0].detach())
            if x is None:
                return
            x = x.double()
            sums[name] = sums.get(name, 0) + x.T @ x
            rows[name] = rows.get(name, 0) + x.shape[0]
        return fn

    handles = [m.register_forward_hook(hook(f"{n}.weight")) for n, m in encoder.named_modules()
               if isinstance(m, kinds) and n]
    images = task_images(zoo, task, params)
    device = next(encoder.parameters()).device
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches(images, _BATCH, device)):
                report(i, -(-len(images) // _BATCH), f"RegMean input statistics: {task}")
                encoder(batch)
    finally:
        for h in handles:
            h.remove()
    return {k: (s / rows[k]).cpu() for k, s in sums.items()}


def reduce_non_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """G̃ = α G + (1 − α) diag(G): off-diagonal entries scaled by α, the diagonal kept."""
    return alpha * gram + (1 - alpha) * torch.diag(torch.diagonal(gram))


def regmean_matrix(mats: list[torch.Tensor], grams: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """One layer (weights [out, in], grams [in, in]): τ = ((Σ_t G̃_t)⁻¹ Σ_t G̃_t τ_tᵀ)ᵀ, solved in float64 with a
    ridge δ = 10⁻¹⁰·mean diag(Σ G̃) that pulls only directions no task's inputs reach toward the mean τ_t."""
    reduced = [reduce_non_diagonal(g.double(), alpha) for g in grams]
    a = sum(reduced)
    b = sum(g @ m.double().T for g, m in zip(reduced, mats))
    delta = 1e-10 * float(torch.diagonal(a).mean().clamp_min(1e-30))
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    mean = torch.stack([m.double() for m in mats], 0).mean(0)
    return torch.linalg.solve(a + delta * eye, b + delta * mean.T).T


ReduceNonDiagonal = Annotated[float, Param(low=0.0, high=1.0, step=0.05, label="non-diagonal scale α",
                                           help="Off-diagonal entries of each Gram matrix are multiplied by α "
                                                "(FusionBench's reduce_non_diagonal_ratio, default 0.95 for CLIP).")]


@merge_direction(name="regmean", label="RegMean (regression mean)",
                 description="Per linear layer (and conv, as a linear map of patches), the weights that best "
                             "reproduce every fine-tuned layer's outputs on its own task's unlabeled inputs "
                             "(least squares with the inputs' Gram matrices); other tensors averaged; θ0 + λ τ.",
                 reference="https://arxiv.org/abs/2212.09849", lambda_range=(0.0, 2.0, 0.1),
                 data="unlabeled_images", statistics=input_grams)
def regmean(pretrained: StateDict, task_vectors: list[StateDict], statistics: list,
            reduce_non_diagonal: ReduceNonDiagonal = 0.95, conv: ConvRule = "reshape",
            images_per_task: ImagesPerTask = 256, image_split: ImageSplit = "train",
            image_seed: ImageSeed = 0) -> StateDict:
    """RegMean: per weight W with input Grams G_t (``statistics``, :func:`input_grams`),
    τ = ((Σ_t G̃_t)⁻¹ Σ_t G̃_t τ_tᵀ)ᵀ, G̃ = α G + (1 − α) diag G (:func:`regmean_matrix`); every other tensor
    τ = (1/T) Σ_t τ_t; θ = θ0 + λ τ (λ = 1 is RegMean; FusionBench applies no scaling).

    Since Σ G̃_t θ0ᵀ = (Σ G̃_t) θ0ᵀ, θ0 + τ equals FusionBench 0.2.33's ``merging_with_regmean_weights`` of the
    fine-tuned weights θ_t (conv="average": only Linear layers; the default also treats each conv kernel as the
    matrix [out, in·kh·kw] acting on unfolded patches). Grams come from θ_t's own activations.
    """
    out: StateDict = {}
    keys = float_keys(pretrained)
    for i, key in enumerate(keys):
        report(i, len(keys), f"merged direction: {key}")
        tensors = [tv[key].detach() for tv in task_vectors]
        grams = [s.get(key) for s in statistics]
        mats = [as_matrix(t, conv) for t in tensors] if all(g is not None for g in grams) else [None]
        if mats[0] is None:
            out[key] = torch.stack([t.float() for t in tensors], 0).mean(0)
            continue
        if any(g.shape != (mats[0].shape[1],) * 2 for g in grams):
            raise MergeError(f"regmean: the input statistics of '{key}' are {tuple(grams[0].shape)}, but the weight "
                             f"matrix has {mats[0].shape[1]} inputs (statistics of another model?)")
        out[key] = regmean_matrix(mats, grams, reduce_non_diagonal).reshape(tensors[0].shape).float()
    report(len(keys), len(keys), "merged direction")
    return out
