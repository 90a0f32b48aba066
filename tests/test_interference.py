"""Interference diagnostics on hand-made vectors and a two-branch linear model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator
from sammerge.analytics.interference import (block_features, cosine_matrix, cross_task_linearity, disentanglement_error,
                                   layer_norms, sign_conflict_matrix)
from sammerge.models.model import Head


@pytest.fixture(autouse=True)
def _one_thread():
    """Small double-backward / vmap workloads run far faster single-threaded on the shared 2-core box."""
    from sammerge.analytics.report import torch_threads
    with torch_threads(1):
        yield


def test_cosine_matrix_symmetric_unit_diagonal():
    g = torch.Generator().manual_seed(0)
    tvs = {n: {"w": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "step": torch.tensor(3)}
           for n in "abcd"}
    names, C = cosine_matrix(tvs)
    assert names == list("abcd")
    np.testing.assert_allclose(C, C.T)
    np.testing.assert_allclose(np.diag(C), 1.0)
    assert np.all(np.abs(C) <= 1 + 1e-12)
    fa = torch.cat([tvs["a"]["b"], tvs["a"]["w"].reshape(-1)]).double()
    fb = torch.cat([tvs["b"]["b"], tvs["b"]["w"].reshape(-1)]).double()
    assert C[0, 1] == pytest.approx(float(fa @ fb / fa.norm() / fb.norm()))
    _, C2 = cosine_matrix({"x": {"w": torch.ones(3)}, "y": {"w": -2 * torch.ones(3)}})
    assert C2[0, 1] == pytest.approx(-1.0)


def test_sign_conflict_by_hand():
    tvs = {"a": {"w": torch.tensor([1.0, -1.0, 0.0, 2.0, 3.0])},
           "b": {"w": torch.tensor([1.0, 1.0, 5.0, -1.0, 0.0])},
           "c": {"w": torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])}}
    names, S = sign_conflict_matrix(tvs)
    # a vs b: non-zero in both at 0, 1, 3 → opposite at 1, 3 → 2/3
    assert S[0, 1] == pytest.approx(2 / 3) and S[1, 0] == pytest.approx(2 / 3)
    assert S[1, 2] == 0.0  # only index 2, same sign
    assert np.isnan(S[0, 2])  # nothing non-zero in both
    assert S[0, 0] == 0.0


def test_mismatched_keys():
    with pytest.raises(ConfigError):
        cosine_matrix({"a": {"w": torch.ones(2)}, "b": {"v": torch.ones(2)}})


def test_layer_norms():
    df = layer_norms({("a", "plain"): {"w": torch.tensor([3.0, 4.0]), "b": torch.zeros(1)},
                      ("a", "sam"): {"w": torch.tensor([0.0, 1.0]), "b": torch.ones(1)}})
    assert list(df.columns[:4]) == ["layer", "task", "variant", "norm"]
    assert df.set_index(["variant", "layer"]).loc[("plain", "w"), "norm"] == pytest.approx(5.0)
    assert len(df) == 4


class Linear2(nn.Module):
    """Flatten → Linear(16 → 8): features 0..3 and 4..7 are two independent branches."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 8)

    def forward(self, x):
        return self.lin(x.flatten(1))


def _two_branch(seed=0):
    torch.manual_seed(seed)
    enc = Linear2().eval()
    theta0 = {k: v.detach().clone() for k, v in enc.state_dict().items()}
    mask1 = torch.zeros(8, 1)
    mask1[:4] = 1
    tau1 = {"lin.weight": torch.randn(8, 16) * mask1, "lin.bias": torch.randn(8) * mask1[:, 0]}
    tau2 = {"lin.weight": torch.randn(8, 16) * (1 - mask1), "lin.bias": torch.randn(8) * (1 - mask1[:, 0])}
    w1 = torch.randn(3, 8)
    w1[:, 4:] = 0  # head 1 reads only features 0..3
    w2 = torch.randn(3, 8)
    w2[:, :4] = 0
    heads = {"t1": Head(w1, torch.zeros(3)), "t2": Head(w2, torch.zeros(3))}
    data = {t: (torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))) for t in heads}
    return Evaluator(enc, heads, data), theta0, tau1, tau2


def test_disentanglement_zero_for_disjoint_branches():
    ev, theta0, tau1, tau2 = _two_branch()
    res = disentanglement_error(ev, theta0, tau1, tau2, ("t1", "t2"), alphas1=np.linspace(-2, 2, 5),
                                alphas2=np.linspace(-2, 2, 5))
    assert res.xi.shape == (5, 5)
    assert res.mean == 0.0


def test_disentanglement_positive_when_entangled():
    ev, theta0, tau1, tau2 = _two_branch()
    # the task vectors now both act on all features: interference appears
    mixed1 = {k: tau1[k] + tau2[k] for k in tau1}
    mixed2 = {k: tau2[k] - 0.7 * tau1[k] for k in tau1}
    calls = []
    res = disentanglement_error(ev, theta0, mixed1, mixed2, ("t1", "t2"), alphas1=[0, 1, 2], alphas2=[0, 1, 2],
                                progress=lambda d, t, s="": calls.append((d, t, s)))
    assert res.xi[0, 0] == 0.0  # both sides are θ0
    assert res.mean > 0 and np.all((res.xi >= 0) & (res.xi <= 2))
    assert calls[0] == (0, 15, "disentanglement") and calls[-1] == (15, 15, "disentanglement")
    assert res.to_json()["mean"] == pytest.approx(res.mean)


def test_cross_task_linearity_exact_for_linear_model():
    """A linear map is exactly linear in its weights: 1 − cos = 0 at every α; a ReLU net is not."""
    ev, theta0, tau1, tau2 = _two_branch()
    ti = {k: theta0[k] + tau1[k] for k in theta0}
    tj = {k: theta0[k] + tau2[k] for k in theta0}
    x = torch.randn(10, 1, 4, 4)
    out = cross_task_linearity(ev.encoder, ti, tj, x, alphas=[0, 0.5, 1], blocks=["lin"])
    np.testing.assert_allclose(out["lin"], 0, atol=1e-6)


def test_cross_task_linearity_resnet_blocks():
    from sammerge.models.model import EncoderConfig, create_encoder, encoder_params
    torch.manual_seed(0)
    enc = create_encoder(EncoderConfig(channels=(8, 8, 16, 16), stem_width=8, stem_stride=2, gn_groups=4)).eval()
    p0 = encoder_params(enc)
    pi = {k: v + 0.1 * torch.randn_like(v) for k, v in p0.items()}
    pj = {k: v + 0.1 * torch.randn_like(v) for k, v in p0.items()}
    x = torch.randn(8, 1, 16, 16)
    feats = block_features(enc, p0, x)
    assert list(feats) == ["stem", "layer1", "layer2", "layer3", "layer4"]
    out = cross_task_linearity(enc, pi, pj, x, alphas=[0, 0.5, 1])
    for b, v in out.items():
        assert v[0] == pytest.approx(0, abs=1e-5) and v[2] == pytest.approx(0, abs=1e-5)
        assert 0 <= v[1] <= 2
    assert out["layer4"][1] > 0
    with pytest.raises(ConfigError):
        cross_task_linearity(enc, pi, pj, x, blocks=["nope"])


class Line(nn.Module):
    """A scalar input x (images of shape [n, 1, 1, 1]) ↦ features (w₀x + b₀, w₁x + b₁)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 2)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_disentanglement_error_known_values():
    """ξ on a model small enough to predict by hand: task a's head reads feature 0, task b's feature 1;
    τ1 steepens feature 0 but also shifts feature 1, τ2 steepens feature 1 but also shifts feature 0.
    Each head predicts class 1 iff its feature is < 0 (logits [f, 0]), so f_t(x; θ) is a sign test and
    the expected ξ is a count of sign flips, computed here with plain float64 arithmetic."""
    w0, b0 = torch.tensor([1.0, -1.0]), torch.tensor([0.1, 0.1])
    dw1, db1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, -0.6])
    dw2, db2 = torch.tensor([0.0, -1.0]), torch.tensor([0.45, 0.0])
    xa = torch.tensor([-1.3, -0.65, -0.35, -0.15, 0.2, 0.9])
    xb = torch.tensor([-1.1, -0.4, -0.15, 0.3, 0.8])
    a1, a2 = [0.0, 0.5, 1.0, 1.5], [0.0, 0.75, 1.5]  # different lengths: a swapped index cannot pass

    enc = Line().eval()
    theta0 = {"lin.weight": w0.reshape(2, 1).clone(), "lin.bias": b0.clone()}
    tau1 = {"lin.weight": dw1.reshape(2, 1), "lin.bias": db1}
    tau2 = {"lin.weight": dw2.reshape(2, 1), "lin.bias": db2}
    heads = {"a": Head(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.zeros(2)),
             "b": Head(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.zeros(2))}
    data = {"a": (xa.reshape(-1, 1, 1, 1), torch.zeros(6, dtype=torch.long)),
            "b": (xb.reshape(-1, 1, 1, 1), torch.zeros(5, dtype=torch.long))}
    res = disentanglement_error(Evaluator(enc, heads, data), theta0, tau1, tau2, ("a", "b"), a1, a2, chunk=5)

    def feature(row, c1, c2, x):  # feature `row` at θ0 + c1 τ1 + c2 τ2, in float64
        w = float(w0[row]) + c1 * float(dw1[row]) + c2 * float(dw2[row])
        b = float(b0[row]) + c1 * float(db1[row]) + c2 * float(db2[row])
        return w * x.double() + b

    expected = np.zeros((len(a1), len(a2)))
    for i, c1 in enumerate(a1):
        for j, c2 in enumerate(a2):
            fa_single, fa_merged = feature(0, c1, 0.0, xa), feature(0, c1, c2, xa)  # task a: θ0 + α1τ1 vs merged
            fb_single, fb_merged = feature(1, 0.0, c2, xb), feature(1, c1, c2, xb)  # task b: θ0 + α2τ2 vs merged
            for f in (fa_single, fa_merged, fb_single, fb_merged):
                assert float(f.abs().min()) > 0.04  # no feature near 0: the reference is not a float32 tie
            expected[i, j] = (float(((fa_single < 0) != (fa_merged < 0)).double().mean())
                              + float(((fb_single < 0) != (fb_merged < 0)).double().mean()))
    # two entries by hand: (α1, α2) = (0, 0.75): task a's feature goes from x + 0.1 to x + 0.4375, flipping
    # x = −0.35 and −0.15 (2 of 6); task b is untouched (α1 = 0). (1.5, 0): task a is untouched (α2 = 0);
    # task b's goes from −x + 0.1 to −x − 0.8, flipping x = −0.4 and −0.15 (2 of 5).
    assert expected[0, 1] == pytest.approx(2 / 6) and expected[3, 0] == pytest.approx(2 / 5)
    assert res.xi.shape == (4, 3)
    np.testing.assert_allclose(res.xi, expected, rtol=0, atol=1e-6)
    assert res.mean == pytest.approx(expected.mean(), abs=1e-6)
    np.testing.assert_array_equal(res.alphas1, a1)
    np.testing.assert_array_equal(res.alphas2, a2)
