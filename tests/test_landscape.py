"""Landscapes on a small synthetic encoder: grid values match direct evaluation; filter normalization."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator
from sammerge.analytics.landscape import filter_normalized_direction, grid, interpolate, random_plane, task_plane
from sammerge.errors import MergeError
from sammerge.merging import linear_combination
from sammerge.models.model import Head


@pytest.fixture(autouse=True)
def _one_thread():
    """Small double-backward / vmap workloads run far faster single-threaded on the shared 2-core box."""
    from sammerge.analytics.report import torch_threads
    with torch_threads(1):
        yield


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x))).mean((2, 3))
        return self.fc(h)


@pytest.fixture
def setup():
    torch.manual_seed(0)
    enc = TinyConv().eval()
    theta0 = {k: v.detach().clone() for k, v in enc.state_dict().items()}
    tau_a = {k: 0.3 * torch.randn_like(v) for k, v in theta0.items()}
    tau_b = {k: 0.3 * torch.randn_like(v) for k, v in theta0.items()}
    heads = {"a": Head(torch.randn(3, 6), torch.zeros(3)), "b": Head(torch.randn(4, 6), torch.zeros(4))}
    data = {"a": (torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))),
            "b": (torch.randn(24, 1, 8, 8), torch.randint(0, 4, (24,)))}
    return Evaluator(enc, heads, data), theta0, tau_a, tau_b


def test_task_plane_matches_direct_evaluation(setup):
    ev, theta0, ta, tb = setup
    calls = []
    pl = task_plane(ev, theta0, ta, tb, xs=grid(-0.5, 1.5, 5), ys=grid(0, 1.5, 4), merge_point=(0.3, 0.3),
                    progress=lambda d, t, s="": calls.append((d, t, s)))
    assert pl.loss["a"].shape == (5, 4) and pl.accuracy["b"].shape == (5, 4)
    assert pl.markers["θ0"] == (0.0, 0.0) and pl.markers["θ_i"] == (1.0, 0.0) and pl.markers["θ_j"] == (0.0, 1.0)
    assert pl.markers["merge"] == (0.3, 0.3)
    assert calls[0] == (0, 20, "task plane") and calls[-1] == (20, 20, "task plane")
    ev2 = Evaluator(ev.encoder, ev.heads, {t: (ev.images[ev.slices[t]], ev.labels[ev.slices[t]]) for t in ev.tasks})
    for i, j in [(0, 0), (3, 2), (4, 3)]:
        a, b = float(pl.xs[i]), float(pl.ys[j])  # independent reference: plain tensor arithmetic
        direct = ev2.evaluate({k: v + a * ta[k] + b * tb[k] if v.is_floating_point() else v
                               for k, v in theta0.items()})
        for t in ("a", "b"):
            assert pl.loss[t][i, j] == pytest.approx(direct[t].loss, rel=1e-4, abs=1e-5)
            assert pl.accuracy[t][i, j] == pytest.approx(direct[t].accuracy)
    # JSON round trip
    again = type(pl).from_json(pl.to_json())
    np.testing.assert_allclose(again.loss["a"], pl.loss["a"])
    assert again.markers == pl.markers


def test_interpolation_end_points(setup):
    ev, theta0, ta, _ = setup
    end = {k: v + ta[k] if v.is_floating_point() else v for k, v in theta0.items()}
    calls = []
    curve = interpolate(ev, theta0, end, alphas=[0, 0.5, 1], chunk=2, progress=lambda *a: calls.append(a))
    assert calls == [(0, 3, "interpolation"), (2, 3, "interpolation"), (3, 3, "interpolation")]
    start_r, end_r = ev.evaluate(theta0), ev.evaluate(end)
    assert curve.loss["a"][0] == pytest.approx(start_r["a"].loss, rel=1e-5)
    assert curve.loss["a"][-1] == pytest.approx(end_r["a"].loss, rel=1e-5)


def test_filter_normalization(setup):
    _, theta0, _, _ = setup
    d = filter_normalized_direction(theta0, seed=3)
    assert set(d) == set(theta0)
    for k, v in theta0.items():
        if v.dim() < 2:
            assert torch.count_nonzero(d[k]) == 0, k
        else:
            torch.testing.assert_close(d[k].reshape(v.shape[0], -1).norm(dim=1), v.reshape(v.shape[0], -1).norm(dim=1))
            assert not torch.allclose(d[k], v)
    torch.testing.assert_close(filter_normalized_direction(theta0, seed=3)["conv.weight"], d["conv.weight"])
    assert not torch.allclose(filter_normalized_direction(theta0, seed=4)["conv.weight"], d["conv.weight"])


def test_random_plane_center(setup):
    ev, theta0, _, _ = setup
    calls = []
    pl = random_plane(ev, theta0, xs=grid(-1, 1, 3), ys=grid(-1, 1, 3), seed=0, progress=lambda *a: calls.append(a))
    assert calls[-1] == (9, 9, "random plane")
    assert pl.kind == "random" and pl.loss["a"].shape == (3, 3)
    assert pl.loss["a"][1, 1] == pytest.approx(ev.evaluate(theta0)["a"].loss, rel=1e-5)


def test_bad_grid():
    with pytest.raises(ConfigError):
        grid(1, 0, 5)
    with pytest.raises(MergeError):
        linear_combination({}, [{}, {}], [1.0])


def test_filter_normalized_direction_on_the_parameters_device(setup):
    """The random direction is made where the parameters live ("meta": devices and shapes, no data)."""
    _, theta0, _, _ = setup
    d = filter_normalized_direction({k: v.to("meta") for k, v in theta0.items()}, seed=0)
    assert {k: (t.device.type, t.shape) for k, t in d.items()} == {k: ("meta", v.shape) for k, v in theta0.items()}


def test_filter_normalized_direction_is_the_seeded_cpu_stream(setup):
    """Drawn from the CPU generator seeded with ``seed``, keys in sorted order, then rescaled per filter."""
    _, theta0, _, _ = setup
    d = filter_normalized_direction(theta0, seed=7)
    gen = torch.Generator().manual_seed(7)
    for key in sorted(theta0):
        v = theta0[key]
        if v.dim() < 2:
            continue
        raw = torch.randn(v.shape, generator=gen, dtype=v.dtype)
        scale = v.reshape(v.shape[0], -1).norm(dim=1) / raw.reshape(v.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(d[key], raw * scale.reshape(-1, *([1] * (v.dim() - 1))), rtol=0, atol=0)
