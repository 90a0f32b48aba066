"""Sharpness measures on models whose Hessian is known exactly."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from sammerge.errors import ConfigError
from sammerge.models.model import Head
from sammerge.analytics.perturbation import average_sharpness, m_sharpness
from sammerge.analytics.sharpness import (HessianOperator, batch_loss_fns, hessian_trace, hvp, parameter_keys,
                                          task_loss_fn, top_eigenvalues)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small double-backward / vmap workloads run far faster single-threaded on the shared 2-core box."""
    from sammerge.analytics.report import torch_threads
    with torch_threads(1):
        yield


def _spd(n: int, eigs, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (q * torch.tensor(eigs, dtype=torch.float64)) @ q.T


def _quadratic(A: torch.Tensor, b: torch.Tensor):
    """f(θ) = ½θᵀAθ + bᵀθ over a dict of two tensors {"w": [3, 4], "u": [n - 12]}."""
    def flat(p):
        return torch.cat([p["w"].reshape(-1), p["u"].reshape(-1)]).to(A.dtype)

    def f(p):
        t = flat(p)
        return 0.5 * t @ A @ t + b @ t
    return f


def _split(t: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"w": t[:12].reshape(3, 4).clone(), "u": t[12:].clone()}


N = 20
EIGS = [10.0, 6.0, 4.0] + list(np.linspace(0.1, 2.0, N - 3))


@pytest.fixture
def quad():
    A = _spd(N, EIGS)
    b = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    theta = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return A, b, _quadratic(A, b), _split(theta)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalue_quadratic(quad, method):
    A, _, f, params = quad
    res = top_eigenvalues(f, params, k=1, iters=200, tol=1e-6, method=method)
    assert res.converged
    assert res.eigenvalues[0] == pytest.approx(10.0, rel=0.02)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_k_eigenvalues(quad, method):
    _, _, f, params = quad
    res = top_eigenvalues(f, params, k=3, iters=300, tol=1e-8, method=method, return_vectors=True)
    assert res.eigenvalues == pytest.approx([10.0, 6.0, 4.0], rel=0.02)
    v = res.eigenvectors[0]
    assert set(v) == {"w", "u"} and v["w"].shape == (3, 4)


def test_trace_quadratic(quad):
    A, _, f, params = quad
    exact = float(torch.trace(A))
    res = hessian_trace(f, params, n_samples=3000, seed=0, batch=100)
    assert res.se > 0 and res.n_samples == 3000
    assert res.mean == pytest.approx(exact, rel=0.02)
    assert abs(res.mean - exact) < 4 * res.se
    batched = hessian_trace(f, params, n_samples=3000, seed=0, batch=1)
    assert batched.mean == pytest.approx(res.mean, rel=1e-9)


def _linear_mse(seed=0, n=64, d=6, k=2):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, d, dtype=torch.float64)
    Y = torch.randn(n, k, generator=g, dtype=torch.float64)
    params = {"weight": torch.randn(k, d, generator=g, dtype=torch.float64),
              "bias": torch.randn(k, generator=g, dtype=torch.float64)}

    def f(p):
        pred = X @ p["weight"].T + p["bias"]
        return ((pred - Y) ** 2).sum(1).mean()
    # exact Hessian w.r.t. vec(weight) (row-major) and bias: per output, 2/n · [X 1]ᵀ[X 1]
    Xa = torch.cat([X, torch.ones(n, 1, dtype=torch.float64)], 1)
    block = 2 * Xa.T @ Xa / n
    return f, params, block


def test_linear_mse_exact_hessian():
    f, params, block = _linear_mse()
    eig = torch.linalg.eigvalsh(block)
    top = float(eig[-1])
    trace = float(torch.trace(block)) * 2  # two outputs share the block
    res = top_eigenvalues(f, params, k=1, iters=100, tol=1e-8)
    assert res.eigenvalues[0] == pytest.approx(top, rel=0.02)
    # each block eigenvalue appears twice (once per output): power iteration with deflation finds both
    # copies (single-vector Lanczos finds each distinct eigenvalue once — see top_eigenvalues' doc)
    res = top_eigenvalues(f, params, k=2, iters=500, tol=1e-10, method="power")
    assert res.eigenvalues == pytest.approx([top, top], rel=0.02)
    tr = hessian_trace(f, params, n_samples=2000, seed=3, batch=100)
    assert tr.mean == pytest.approx(trace, rel=0.02)
    # dense Hessian from the operator matches the block structure
    H = HessianOperator(f, params).dense()
    assert torch.linalg.eigvalsh(H.double())[-1].item() == pytest.approx(top, rel=1e-6)


def test_hvp_matches_finite_difference(quad):
    _, _, f, params = quad
    g = torch.Generator().manual_seed(5)
    v = {k: torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in params.items()}

    def grad_at(p):
        leaves = {k: t.clone().requires_grad_(True) for k, t in p.items()}
        gs = torch.autograd.grad(f(leaves), list(leaves.values()))
        return dict(zip(leaves, gs))

    eps = 1e-4
    gp = grad_at({k: params[k] + eps * v[k] for k in params})
    gm = grad_at({k: params[k] - eps * v[k] for k in params})
    fd = {k: (gp[k] - gm[k]) / (2 * eps) for k in params}
    fwd = hvp(f, params, v)
    op = HessianOperator(f, params)
    rev = op.as_dict(op.matvec([v[k] for k in op.keys]))
    for k in params:
        torch.testing.assert_close(fwd[k], fd[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rev[k], fd[k], rtol=1e-5, atol=1e-6)


def test_hvp_on_small_convnet():
    """Forward-over-reverse and double-backward agree on a conv + GroupNorm network (float32)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    head = Head(torch.randn(3, 4), torch.zeros(3))
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    f = task_loss_fn(net, head, x, y)
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    v = {k: torch.randn_like(t) for k, t in params.items()}
    fwd = hvp(f, params, v)
    op = HessianOperator(f, params)
    rev = op.as_dict(op.matvec([v[k] for k in op.keys]))
    for k in params:
        torch.testing.assert_close(fwd[k], rev[k], rtol=1e-3, atol=1e-5)
    res = top_eigenvalues(f, params, k=1, iters=60, tol=1e-5)
    H = op.dense().double()
    H = (H + H.T) / 2
    assert res.eigenvalues[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=0.02)
    assert len(batch_loss_fns(net, head, x, y, m=4)) == 4


def test_batchnorm_network_curvature_is_over_its_parameters():
    """A BN network's state dict holds float buffers (running statistics) the loss cannot be differentiated by: the
    Hessian is over the parameters (checked against a dense Hessian by torch.autograd.functional over them alone)."""
    from sammerge.analytics.report import checkpoint_sharpness

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    head = Head(torch.randn(3, 3), torch.zeros(3))
    x, y = torch.randn(16, 1, 5, 5), torch.randint(0, 3, (16,))
    params = {k: v.detach().clone() for k, v in net.state_dict().items()}
    keys = parameter_keys(net)
    assert keys == ["0.weight", "0.bias", "1.weight", "1.bias"]
    f = task_loss_fn(net, head, x, y)
    res = top_eigenvalues(f, params, k=1, iters=80, tol=1e-6, keys=keys)
    flat = torch.cat([params[k].reshape(-1) for k in keys]).double()
    sizes = [params[k].numel() for k in keys]

    def loss_of(vector):
        parts = dict(zip(keys, [p.reshape(params[k].shape).float() for p, k in zip(vector.split(sizes), keys)]))
        return f({**params, **parts})
    dense = torch.autograd.functional.hessian(loss_of, flat)
    assert res.eigenvalues[0] == pytest.approx(float(torch.linalg.eigvalsh((dense + dense.T) / 2)[-1]), rel=0.02)
    row = checkpoint_sharpness(net, head, x, y, params, {"eig_iters": 20, "trace_samples": 2, "avg_samples": 2})
    assert row["n_params"] == sum(sizes) and np.isfinite(row["top_eigenvalue"]) and np.isfinite(row["avg_sharpness"])


def test_m_sharpness_at_minimum_matches_closed_form():
    A = _spd(N, EIGS, seed=3)
    f = _quadratic(A, torch.zeros(N, dtype=torch.float64))
    params = _split(torch.zeros(N, dtype=torch.float64))  # the minimum
    rho = 0.1
    res = m_sharpness([f, f], params, rho=rho, steps=30, seed=0)
    expected = rho ** 2 * 10.0 / 2
    assert all(v >= 0 for v in res.values)
    assert res.mean == pytest.approx(expected, rel=0.05)
    one = m_sharpness(f, params, rho=rho, steps=1)
    assert 0 <= one.mean <= expected * 1.0001


def test_m_sharpness_first_step_is_sam_perturbation():
    """Away from a minimum one step from a tiny start goes to θ + ρ g/‖g‖ (plain) — loss increase ≈ ρ‖g‖."""
    A = _spd(N, EIGS, seed=4)
    b = torch.randn(N, dtype=torch.float64, generator=torch.Generator().manual_seed(7)) * 10
    f = _quadratic(A, b)
    theta = torch.zeros(N, dtype=torch.float64)
    params = _split(theta)
    rho = 1e-3
    res = m_sharpness(f, params, rho=rho, steps=1, init_scale=1e-6)
    gnorm = float(torch.linalg.norm(b))
    assert res.mean == pytest.approx(rho * gnorm, rel=0.01)


def test_adaptive_m_sharpness_respects_scaled_ball():
    """With adaptive=True only weights with |θ| > 0 move; zero weights stay (their scale is 0)."""
    A = torch.eye(N, dtype=torch.float64)
    f = _quadratic(A, torch.zeros(N, dtype=torch.float64))
    theta = torch.zeros(N, dtype=torch.float64)
    theta[:12] = 2.0  # "w" entries nonzero, "u" zero
    params = _split(theta)
    rho = 0.05
    res = m_sharpness(f, params, rho=rho, adaptive=True, steps=5)
    # δ = u ⊙ |θ|, ‖u‖ ≤ ρ; worst case moves along θ on the w block: f(θ+δ) − f(θ) ≤ ρ‖θ‖²+ ½ρ²‖θ‖²·max|θ|²/...
    norm_w = float(torch.linalg.norm(theta))
    upper = rho * 2.0 * norm_w + 0.5 * (rho * 2.0) ** 2
    assert 0 < res.mean <= upper * 1.0001


def test_average_sharpness_at_minimum():
    A = _spd(N, EIGS, seed=3)
    f = _quadratic(A, torch.zeros(N, dtype=torch.float64))
    params = _split(torch.zeros(N, dtype=torch.float64))
    sigma = 0.05
    res = average_sharpness(f, params, sigma=sigma, n_samples=2000, seed=0)
    expected = sigma ** 2 * float(torch.trace(A)) / 2
    assert res.mean >= 0
    assert res.mean == pytest.approx(expected, rel=0.1)


def test_bad_arguments(quad):
    _, _, f, params = quad
    with pytest.raises(ConfigError):
        top_eigenvalues(f, params, k=0)
    with pytest.raises(ConfigError):
        top_eigenvalues(f, params, method="qr")
    with pytest.raises(ConfigError):
        m_sharpness(f, params, rho=-1)
    with pytest.raises(ConfigError):
        hessian_trace(f, params, keys=["nope"])


# -- device placement of the random draws ---------------------------------------------------------------
META = torch.device("meta")  # the only non-CPU device on a CPU-only machine: shapes and devices, no data


class _Stop(Exception):
    """Raised by a spy once it has seen the tensors it checks (meta tensors cannot be read back)."""


def _meta_params():
    return {"w": torch.empty(3, 4, dtype=torch.float64, device=META),
            "u": torch.empty(8, dtype=torch.float64, device=META)}


def _sum_sq(p):
    return sum((t * t).sum() for t in p.values())


def test_probe_vectors_on_the_parameters_device(monkeypatch):
    """Lanczos/power start vectors and Hutchinson probes are made where the parameters live."""
    params = _meta_params()
    op = HessianOperator(_sum_sq, params)
    assert [t.device for t in op.random_normal(torch.Generator().manual_seed(0))] == [META, META]
    seen = []

    def spy(self, vs):  # the first Hessian product: record the devices of the vectors, then stop
        seen.append({t.device for t in vs})
        raise _Stop

    monkeypatch.setattr(HessianOperator, "matvec", spy)
    monkeypatch.setattr(HessianOperator, "matvec_batched", spy)
    for run in (lambda: top_eigenvalues(_sum_sq, params, method="lanczos"),
                lambda: top_eigenvalues(_sum_sq, params, method="power"),
                lambda: hessian_trace(_sum_sq, params, n_samples=2, batch=1),
                lambda: hessian_trace(_sum_sq, params, n_samples=2, batch=2)):
        with pytest.raises(_Stop):
            run()
    assert seen == [{META}] * 4


def test_noise_on_the_parameters_device(monkeypatch):
    """m-sharpness and average sharpness perturb θ with noise made on θ's device."""
    import sammerge.analytics.perturbation as sh  # m_sharpness reads _norm from its own module

    params = _meta_params()
    seen = []

    def loss(p):  # odd calls: L(θ), returned on the CPU so that float() works; even calls: L(θ + δ) → stop
        seen.append({t.device for t in p.values()})
        if len(seen) % 2 == 0:
            raise _Stop
        return torch.zeros((), dtype=torch.float64)

    for adaptive in (False, True):
        with pytest.raises(_Stop):
            average_sharpness(loss, params, n_samples=1, adaptive=adaptive)
    monkeypatch.setattr(sh, "_norm", lambda a: torch.ones((), dtype=torch.float64))  # float(‖u‖) of meta u
    for adaptive in (False, True):
        with pytest.raises(_Stop):
            m_sharpness(loss, params, adaptive=adaptive)
    assert seen == [{META}] * 8


def test_random_draws_are_the_seeded_cpu_stream(quad):
    """Seeded draws are the CPU generator's stream (so a seed gives the same numbers on any device)."""
    _, _, f, params = quad
    op = HessianOperator(f, params)
    ref = torch.Generator().manual_seed(5)
    got = op.random_normal(torch.Generator().manual_seed(5))
    for key, t in zip(op.keys, got):
        assert torch.equal(t, torch.randn(params[key].shape, generator=ref, dtype=params[key].dtype))
