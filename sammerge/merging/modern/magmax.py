"""MagMax — per entry, the task vector of largest magnitude (Marczak et al., ECCV 2024)."""
from __future__ import annotations

import torch

from sammerge.merging.registry import merge_direction
from sammerge.merging.task_vector import StateDict, float_keys


@merge_direction(name="magmax", label="MagMax",
                 description="Per entry, keep the task vector value of largest |τ_t|; θ0 + λ τ.",
                 reference="https://arxiv.org/abs/2407.06322", lambda_range=(0.0, 1.5, 0.05), lambda_default=0.5)
def magmax(pretrained: StateDict, task_vectors: list[StateDict]) -> StateDict:
    """MagMax: τ[j] = τ_{t*}[j] with t* = argmax_t |τ_t[j]| (ties → the later task); θ = θ0 + λ τ (λ default 0.5).

    Same rule and default as FusionBench 0.2.33 ``magmax`` (the official release's ``merge_max_abs``).
    """
    out: StateDict = {}
    for key in float_keys(pretrained):
        stack = torch.stack([tv[key].detach().float() for tv in task_vectors], 0)
        last_max = stack.shape[0] - 1 - stack.abs().flip(0).argmax(0, keepdim=True)  # argmax keeps the first
        out[key] = stack.gather(0, last_max)[0]
    return out
