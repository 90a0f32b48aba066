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
from sammerge.training.model import Head


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
                                progress=lambda d, t: calls.append((d, t)))
    assert res.xi[0, 0] == 0.0  # both sides are θ0
    assert res.mean > 0 and np.all((res.xi >= 0) & (res.xi <= 2))
    assert calls[-1] == (15, 15)
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
    from sammerge.training.model import EncoderConfig, create_encoder, encoder_params
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
