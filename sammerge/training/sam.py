"""Sharpness-aware minimization (Foret et al. 2021) as a two-step wrapper around any base optimizer.

first_step:  e(w) = ρ · g / ‖g‖                  (SAM)
             e(w) = ρ · |w|² ⊙ g / ‖ |w| ⊙ g ‖    (adaptive, ASAM; Kwon et al. 2021)
             w ← w + e(w)
second_step: w ← w − e(w), then the base optimizer steps with the gradient taken at w + e(w).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


class SAM(torch.optim.Optimizer):
    """SAM / ASAM wrapping ``base_optimizer_cls(params, **kwargs)``.

    Usage::

        loss_fn().backward(); opt.first_step(zero_grad=True)
        loss_fn().backward(); opt.second_step(zero_grad=True)

    or ``loss = opt.step(closure)`` where ``closure`` zeroes nothing, calls backward and returns the loss:
    ``step`` clears the gradients before each of its two evaluations, returns the loss at w, and leaves
    ``.grad`` holding the gradient at w + e(w) that the base step used.
    LR schedulers should wrap ``opt.base_optimizer``. ``state_dict()`` holds SAM's groups (ρ, adaptive and
    the base hyperparameters) and, under ``"base_optimizer"``, the base optimizer's state (e.g. AdamW moments).
    """

    def __init__(self, params: Iterable, base_optimizer_cls: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, eps: float = 1e-12, **kwargs) -> None:
        if not rho > 0:
            raise ValueError(f"SAM: rho must be > 0, got {rho}")
        defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer_cls(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.eps = eps

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                scale = p.abs() if group["adaptive"] else 1.0
                norms.append((scale * p.grad).norm(p=2))
        if not norms:
            return torch.tensor(0.0)
        return torch.stack(norms).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to the (approximate) worst point in the ρ-ball: w ← w + e(w)."""
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + self.eps)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = (p.pow(2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e_w)
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w (w ← w − e(w)) and take the base step with the gradient from w + e(w)."""
        for group in self.param_groups:
            for p in group["params"]:
                e_w = self.state[p].pop("e_w", None)
                if e_w is not None:
                    p.sub_(e_w)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure: Callable[[], torch.Tensor] | None = None):  # type: ignore[override]
        if closure is None:
            raise ValueError("SAM.step needs a closure that recomputes the loss and calls backward()")
        closure = torch.enable_grad()(closure)
        self.zero_grad(set_to_none=True)  # the closure zeroes nothing: drop gradients left from earlier steps
        loss = closure()
        self.first_step(zero_grad=True)
        closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict:
        state = super().state_dict()  # SAM's own state (a pending e(w)) and the shared param groups
        state["base_optimizer"] = self.base_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict) -> None:
        if "base_optimizer" not in state_dict:
            raise ValueError("SAM.load_state_dict: no 'base_optimizer' entry (a state dict from SAM.state_dict() "
                             "has one); the base optimizer's state cannot be restored")
        self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        super().load_state_dict({"state": state_dict["state"], "param_groups": state_dict["param_groups"]})
        # keep one set of param groups, shared by SAM and the base optimizer (LR schedulers on either see it)
        self.base_optimizer.param_groups = self.param_groups
