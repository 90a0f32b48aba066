"""EMR-Merging — Elect, Mask & Rescale (Huang et al., NeurIPS 2024): one shared task vector, one mask and one
rescaler per task. Not one static model: task t is served by θ0 + r_t (M_t ⊙ τ_uni) — "task-routed"."""
from __future__ import annotations

import torch

from sammerge.merging.registry import merge_method
from sammerge.merging.task_vector import StateDict, float_keys

__all__ = ["emr_parts"]


def emr_parts(task_vectors: list[StateDict], keys: list[str]
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float]]:
    """(τ_uni, masks [T, …] per key, rescalers r_t) with σ = sign(Σ_t τ_t) (0 counts as −1, as FusionBench),
    M_t = [τ_t ⊙ σ > 0], τ_uni = σ ⊙ max_t |M_t ⊙ τ_t|, r_t = Σ_k mean|τ_t[k]| / Σ_k mean|M_t[k] ⊙ τ_uni[k]|
    (r_t = 0 where no entry of τ_t agrees with σ)."""
    T = len(task_vectors)
    unified, masks = {}, {}
    own, kept = torch.zeros(T, dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
    for key in keys:
        stack = torch.stack([tv[key].detach().float() for tv in task_vectors], 0)
        sign = torch.where(stack.sum(0) > 0, 1.0, -1.0)
        mask = stack * sign > 0
        unified[key] = (stack.abs() * mask).amax(0) * sign
        masks[key] = mask
        own += stack.abs().reshape(T, -1).mean(1).double()
        kept += (unified[key] * mask).abs().reshape(T, -1).mean(1).double()
    return unified, masks, [float(o / k) if k > 0 else 0.0 for o, k in zip(own, kept)]


@merge_method(name="emr", label="EMR (task-routed: a mask and a rescaler per task)",
              description="Elect one shared task vector (the sign of Σ τ_t, the largest agreeing magnitude), then "
                          "serve each task with its own binary mask and rescaler: θ_t = θ0 + r_t (M_t ⊙ τ_uni). "
                          "Not one merged model — each task is evaluated with its own mask.",
              reference="https://arxiv.org/abs/2405.17461", routing="task_routed")
def emr(pretrained: StateDict, task_vectors: list[StateDict]) -> list[StateDict]:
    """EMR: θ_t = θ0 + r_t (M_t ⊙ τ_uni) for every task t (:func:`emr_parts`), one state dict per task, in order.

    Same election, masks and rescalers as FusionBench 0.2.33 ``emr_merging.utils.emr_merge``."""
    keys = float_keys(pretrained)
    unified, masks, rescalers = emr_parts(task_vectors, keys)
    models = []
    for t, r in enumerate(rescalers):
        model = {k: v.clone() for k, v in pretrained.items()}
        for key in keys:
            base = pretrained[key]
            model[key] = (base.float() + r * masks[key][t] * unified[key]).to(base.dtype)
        models.append(model)
    return models
