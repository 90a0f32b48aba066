"""Linearized models (Ortiz-Jimenez et al., NeurIPS 2023): the first-order Taylor expansion around θ0,

    f_lin(x; θ) = f(x; θ0) + J_θ f(x; θ0) · (θ − θ0),

computed with one forward-mode Jacobian-vector product (``torch.func.jvp``), never a dense Jacobian.
Fine-tuning a linearized model trains θ through f_lin (plain, SAM or ASAM alike: the loss is just
computed through f_lin); a linearized zoo is evaluated through f_lin everywhere, and merges stay
ordinary weight arithmetic on θ.
"""
from __future__ import annotations

import threading
from typing import Mapping

import torch
from torch import nn
from torch.func import functional_call, jvp

Params = Mapping[str, torch.Tensor]

# torch's forward-mode AD has one dual level per process: two threads inside ``jvp`` at once break each other
# ("no level exists", "bad optional access"), e.g. the explorer's exact evaluation of a linearized zoo while a
# background job computes its preview, or two sessions on two linearized zoos. Every jvp in sammerge takes this lock.
FORWARD_AD_LOCK = threading.RLock()


def locked_jvp(f, primals: tuple, tangents: tuple):
    """``torch.func.jvp(f, primals, tangents)`` under ``FORWARD_AD_LOCK`` (safe from any thread)."""
    with FORWARD_AD_LOCK:
        return jvp(f, primals, tangents)


def linearized_call(module: nn.Module, theta0: Params, params: Params, x: torch.Tensor) -> torch.Tensor:
    """f(x; θ0) + J f(x; θ0)(θ − θ0) for ``params`` θ (keys of θ0; non-floating tensors are taken from θ0).

    Differentiable with respect to θ (training) and composable with ``torch.func.vmap`` (batched evaluation).
    """
    keys = [k for k, v in theta0.items() if v.is_floating_point()]
    fixed = {k: v for k, v in theta0.items() if not v.is_floating_point()}

    def f(*tensors: torch.Tensor) -> torch.Tensor:
        return functional_call(module, {**fixed, **dict(zip(keys, tensors))}, (x,))

    primals = tuple(theta0[k] for k in keys)
    tangents = tuple(params[k] - theta0[k] for k in keys)
    out, delta = locked_jvp(f, primals, tangents)
    return out + delta


class LinearizedEncoder(nn.Module):
    """The encoder ``x ↦ f_lin(x; θ)`` whose parameters θ are the wrapped encoder's own (same names, same
    ``state_dict``), linearized around a frozen copy of θ0.

    So a training loop, ``load_state_dict(θ0)`` and ``state_dict()`` work on it exactly as on the encoder.
    """

    def __init__(self, encoder: nn.Module, theta0: Params) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = getattr(encoder, "num_features", None)
        device = next(encoder.parameters()).device
        self._theta0 = {k: v.detach().clone().to(device) for k, v in theta0.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        live = dict(self.encoder.named_parameters())
        live.update(self.encoder.named_buffers())
        params = {k: live.get(k, v) for k, v in self._theta0.items()}
        return linearized_call(self.encoder, self._theta0, params, x)

    def state_dict(self, *args, **kwargs):  # the encoder's keys, not "encoder.*"
        return self.encoder.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.encoder.load_state_dict(state_dict, strict=strict, assign=assign)


def linearize_for_finetuning(encoder: nn.Module, theta0: Params, linearized: bool) -> nn.Module:
    """The module a zoo build fine-tunes and scores: the encoder itself, or its linearization around θ0."""
    return LinearizedEncoder(encoder, theta0) if linearized else encoder
