"""The tap-sum backward of depthwise convolutions (sammerge.models.depthwise) against autograd through F.conv2d:
gradients and second derivatives in float64, and EfficientNet-Lite0's tail with and without it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sammerge.models.depthwise import depthwise_conv2d, use_tap_sum_backward

CASES = [  # (channels, size, kernel, stride, padding): the tail's layers at 32 px and edge cases
    (3, 2, 5, 1, 2), (3, 2, 3, 1, 1), (2, 1, 5, 1, 2), (2, 1, 3, 1, 1), (2, 5, 3, 2, 0), (2, 6, 5, 2, 0), (2, 4, 3, 2, 1),
]


@pytest.mark.parametrize("channels,size,kernel,stride,padding", CASES)
def test_first_and_second_derivatives_are_autograds(channels, size, kernel, stride, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, size, size, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(channels, 1, kernel, kernel, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(channels, dtype=torch.float64, generator=g).requires_grad_()

    def ours(x, w, b):
        return depthwise_conv2d(x, w, b, (stride, stride), (padding, padding))

    assert torch.equal(ours(x, w, b), F.conv2d(x, w, b, stride, padding, 1, channels))
    assert ours(x, w, b).grad_fn.name().startswith("_DepthwiseConv")  # the tap-sum path, not the fallback
    assert torch.autograd.gradcheck(ours, (x, w, b))
    assert torch.autograd.gradgradcheck(ours, (x, w, b))


def test_lite0_tail_gradients_and_hvp_match_the_plain_convolutions():
    from sammerge.models import lite0
    from sammerge.models.lite0_tail import split_lite0

    encoder = lite0.create_lite0()
    _, tail = split_lite0(encoder, 3)
    _, plain = split_lite0(lite0.create_lite0(), 3)
    plain.load_state_dict(tail.state_dict())
    for conv in plain.modules():  # back to timm's own forward
        conv.__dict__.pop("forward", None)
    assert use_tap_sum_backward(torch.nn.Sequential()) == 0
    assert sum("forward" in m.__dict__ for m in tail.modules()) == 11  # every depthwise layer of stages 3–6
    x = torch.randn(8, 40, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(tail(x), plain(x))
    grads = []
    for module in (tail, plain):
        params = [p for p in module.parameters()]
        loss = module(x).square().mean()
        g = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.ones_like(p) * 1e-2 for p in params]
        hv = torch.autograd.grad(g, params, grad_outputs=v)
        grads.append((g, hv))
    (g1, h1), (g2, h2) = grads
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    for a, b in zip(h1, h2):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


def test_plain_path_under_no_grad_and_vmap():
    x, w = torch.randn(3, 4, 2, 2), torch.randn(4, 1, 3, 3)
    with torch.no_grad():
        assert depthwise_conv2d(x, w, None, (1, 1), (1, 1)).grad_fn is None
    batched = torch.func.vmap(lambda xi: depthwise_conv2d(xi, w, None, (1, 1), (1, 1)))(x.unsqueeze(1))
    torch.testing.assert_close(batched.squeeze(1), F.conv2d(x, w, None, 1, 1, 1, 4))
