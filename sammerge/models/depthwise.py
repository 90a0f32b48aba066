"""Depthwise convolution with its backward written as a sum over kernel taps, for EfficientNet-Lite0's tail.

At 32 px the tail's maps are 4×4 down to 1×1 with 3×3 and 5×5 depthwise kernels; oneDNN's depthwise backward spends
most of a fine-tuning step in im2col there (≈ 50–140 ms per layer for a batch of 128 on a busy core, 85 % of the
step; a whole step takes 0.25 s with the tap sum instead of 0.74 s on a quiet core).
With y[n,c,i,j] = Σ_{a,b} w[c,a,b] · xp[n,c, s·i+a, s·j+b] (xp: x zero-padded by p) the backward is, per tap (a, b),

    ∂L/∂w[c,a,b] = Σ_{n,i,j} g[n,c,i,j] · xp[n,c, s·i+a, s·j+b]      ∂L/∂xp[n,c, s·i+a, s·j+b] += w[c,a,b] · g[n,c,i,j]

and taps that only ever meet padding are skipped (on a 2×2 map a 5×5 kernel has 9 live taps of 25). The forward is
``F.conv2d`` itself (the same numbers); the backward is written in differentiable torch operations, so Hessian-vector
products (double backward) work. Under torch.func transforms (vmap, jvp) the plain convolution runs instead.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def _live(k: int, out: int, stride: int, pad: int, size: int) -> bool:
    """Whether tap offset ``k`` meets the unpadded input for some output position."""
    return any(pad <= k + stride * i < pad + size for i in range(out))


def tap_sum_backward(x: torch.Tensor, weight: torch.Tensor, grad_y: torch.Tensor, stride: tuple[int, int],
                     padding: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂x, ∂L/∂w) of a depthwise ``conv2d(x, weight, stride, padding, groups=C)`` given ∂L/∂y (module doc)."""
    (sh, sw), (ph, pw) = stride, padding
    _, channels, height, width = x.shape
    kh, kw = weight.shape[-2:]
    out_h, out_w = grad_y.shape[-2:]
    xp = F.pad(x, (pw, pw, ph, ph))
    grad_xp = torch.zeros_like(xp)
    taps = []
    for a in range(kh):
        for b in range(kw):
            if not (_live(a, out_h, sh, ph, height) and _live(b, out_w, sw, pw, width)):
                taps.append(weight.new_zeros(channels))
                continue
            window = (slice(None), slice(None), slice(a, a + sh * (out_h - 1) + 1, sh),
                      slice(b, b + sw * (out_w - 1) + 1, sw))
            taps.append((grad_y * xp[window]).sum((0, 2, 3)))
            grad_xp[window] += weight[:, 0, a, b].view(1, channels, 1, 1) * grad_y
    grad_w = torch.stack(taps, dim=1).view(channels, 1, kh, kw)
    return grad_xp[:, :, ph:ph + height, pw:pw + width], grad_w


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_x, grad_w = tap_sum_backward(x, weight, grad_y, ctx.stride, ctx.padding)
        return grad_x, grad_w, grad_y.sum((0, 2, 3)) if ctx.has_bias else None, None, None


def _functorch_active() -> bool:
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # an older torch: stay on the plain path
        return True


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, groups=C)`` with the tap-sum backward (plain under torch.func)."""
    stride, padding = tuple(stride), tuple(padding)
    if not torch.is_grad_enabled() or _functorch_active() or x.device.type != "cpu":
        return F.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])
    return _DepthwiseConv.apply(x, weight, bias, stride, padding)


def _forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if getattr(self, "_same_pad", False):  # timm's Conv2dSame: TF "same" padding applied to x first
        from timm.layers.padding import pad_same
        x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
    return depthwise_conv2d(x, self.weight, self.bias, self.stride, self.padding)


def use_tap_sum_backward(module: nn.Module) -> int:
    """Give every depthwise convolution of ``module`` (groups = in = out channels, no dilation, zero padding) the
    tap-sum backward; parameter names, state dicts and forward outputs are unchanged. Returns how many."""
    from timm.layers import Conv2dSame
    count = 0
    for conv in module.modules():
        if (isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
                and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)):
            conv._same_pad = isinstance(conv, Conv2dSame)
            conv.forward = types.MethodType(_forward, conv)
            count += 1
    return count
