"""SLERP — spherical interpolation between two fine-tuned models, per tensor (mergekit ``slerp``)."""
from __future__ import annotations

from typing import Annotated, Any

import torch

from sammerge.errors import ConfigError
from sammerge.merging.registry import Mergekit, Param, merge_method
from sammerge.merging.task_vector import StateDict

__all__ = ["slerp_tensor"]


def slerp_tensor(t: float, a: torch.Tensor, b: torch.Tensor, dot_threshold: float = 0.9995,
                 eps: float = 1e-8) -> torch.Tensor:
    """Whole tensors a, b as vectors: cos Ω = ⟨a/‖a‖, b/‖b‖⟩ (a norm < eps counts as 1);
    slerp = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b, or (1−t) a + t b where |cos Ω| > 0.9995."""
    dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
    x, y = a.reshape(1, -1).to(dtype), b.reshape(1, -1).to(dtype)
    if x.shape[1] == 0:
        return x.reshape(a.shape)
    na, nb = x.norm(dim=1, keepdim=True), y.norm(dim=1, keepdim=True)
    na, nb = torch.where(na > eps, na, 1), torch.where(nb > eps, nb, 1)
    dot = ((x / na) * (y / nb)).sum(1, keepdim=True).clamp(-1, 1)
    linear = dot.abs() > dot_threshold
    omega = torch.acos(torch.where(linear, 0, dot))
    sin = torch.sin(omega)
    ca = torch.where(linear, 1 - t, torch.sin((1 - t) * omega) / sin)
    cb = torch.where(linear, t, torch.sin(t * omega) / sin)
    return (ca * x + cb * y).reshape(a.shape)


def _slerp_import(top: dict[str, Any], weights: list[float]) -> None:
    if len(weights) != 2:
        raise ConfigError(f"mergekit config: slerp merges exactly two models, got {len(weights)}")


MK_SLERP = Mergekit("slerp", model_keys=(), base="first_model", check_import=_slerp_import, notes=lambda kw: [
    "slerp: base_model is the first fine-tuned model (t = 0), the other model is t = 1; whole-tensor interpolation as "
    "mergekit 0.1.5 (linear where |cos| > 0.9995)."])


@merge_method(name="slerp", label="SLERP (two models)",
              description="Spherical interpolation between the two fine-tuned models, tensor by tensor: t = 0 "
                          "is the first model, t = 1 the second.",
              mergekit=MK_SLERP, reference="https://en.wikipedia.org/wiki/Slerp", task_count=(2, 2))
def slerp(pretrained: StateDict, task_vectors: list[StateDict],
          t: Annotated[float, Param(low=0.0, high=1.0, step=0.05, label="t", mergekit_name="t",
                                    help="Interpolation position between the first (0) and second (1) model.")] = 0.5
          ) -> StateDict:
    """θ = slerp(t, θ_1, θ_2) per tensor (:func:`slerp_tensor`), θ_t = θ0 + τ_t; exactly two tasks.

    Same formula as mergekit 0.1.5 ``slerp`` (base_model = θ_1).
    """
    out: StateDict = {}
    for key, base in pretrained.items():
        if not base.is_floating_point():
            out[key] = base.clone()
            continue
        a = base.float() + task_vectors[0][key].float()
        b = base.float() + task_vectors[1][key].float()
        out[key] = slerp_tensor(t, a, b).to(base.dtype)
    return out
