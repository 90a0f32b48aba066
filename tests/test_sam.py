"""SAM against its definition: e = ρ g/‖g‖, update uses the gradient at θ+e, weights restored."""
import pytest
import torch

from sammerge.training.sam import SAM


def _quadratic_setup(adaptive: bool, rho: float):
    torch.manual_seed(0)
    A = torch.randn(5, 5)
    A = A @ A.T + torch.eye(5)
    b = torch.randn(5)
    w = torch.nn.Parameter(torch.randn(5))
    opt = SAM([w], torch.optim.SGD, rho=rho, adaptive=adaptive, lr=0.1)

    def loss_fn(x):
        return 0.5 * x @ A @ x + b @ x

    def grad_at(x):
        return A @ x + b

    return w, opt, loss_fn, grad_at


@pytest.mark.parametrize("adaptive", [False, True])
def test_first_step_moves_by_definition(adaptive):
    rho = 0.05
    w, opt, loss_fn, grad_at = _quadratic_setup(adaptive, rho)
    w0 = w.detach().clone()
    loss_fn(w).backward()
    g = grad_at(w0)
    opt.first_step(zero_grad=True)
    if adaptive:
        expected = rho * w0.abs() ** 2 * g / torch.linalg.norm(w0.abs() * g)
    else:
        expected = rho * g / torch.linalg.norm(g)
        assert torch.linalg.norm(w.detach() - w0) == pytest.approx(rho, rel=1e-5)
    torch.testing.assert_close(w.detach() - w0, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("adaptive", [False, True])
def test_second_step_uses_gradient_at_perturbed_point_and_restores(adaptive):
    rho, lr = 0.05, 0.1
    w, opt, loss_fn, grad_at = _quadratic_setup(adaptive, rho)
    w0 = w.detach().clone()
    loss_fn(w).backward()
    opt.first_step(zero_grad=True)
    assert w.grad is None  # gradients zeroed between the steps
    w_perturbed = w.detach().clone()
    loss_fn(w).backward()
    opt.second_step(zero_grad=True)
    expected = w0 - lr * grad_at(w_perturbed)  # SGD step from the restored θ with g(θ+e)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-5, atol=1e-6)
    # and this differs from the plain SGD step (the perturbation mattered)
    assert not torch.allclose(w.detach(), w0 - lr * grad_at(w0))


def _sam_reference(w0, A, b, rho, lr, steps):
    """SAM with plain SGD by hand, in float64: e = ρ g/‖g‖, θ ← θ − lr·g(θ + e)."""
    A, b, w = A.double(), b.double(), w0.double()
    for _ in range(steps):
        g = A @ w + b
        e = rho * g / torch.linalg.norm(g)
        w = w - lr * (A @ (w + e) + b)
    return w


def test_closure_step_equals_two_step_api_and_definition():
    """The closure zeroes nothing, as documented; nobody zeroes between steps on the optimizer's behalf."""
    rho, lr, steps = 0.1, 0.1, 3
    w1, opt1, loss_fn, _ = _quadratic_setup(False, rho)
    w2, opt2, _, _ = _quadratic_setup(False, rho)
    w0 = w1.detach().clone()
    torch.manual_seed(0)  # the same A, b as _quadratic_setup drew
    A = torch.randn(5, 5)
    A = A @ A.T + torch.eye(5)
    b = torch.randn(5)

    def closure():
        loss = loss_fn(w2)
        loss.backward()
        return loss

    for _ in range(steps):
        loss_fn(w1).backward(); opt1.first_step(zero_grad=True)
        loss_fn(w1).backward(); opt1.second_step(zero_grad=True)
        before = w2.detach().clone()
        loss = opt2.step(closure)
        assert loss.item() == pytest.approx(loss_fn(before).item())  # the loss at θ, not at θ + e
    torch.testing.assert_close(w2.detach(), w1.detach(), rtol=0, atol=0)
    reference = _sam_reference(w0, A, b, rho, lr, steps)
    torch.testing.assert_close(w2.detach().double(), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w1.detach().double(), reference, rtol=1e-5, atol=1e-6)


def test_closure_step_ignores_gradients_left_before_the_call():
    """step(closure) computes its own gradients: a stale .grad (e.g. from a previous backward) must not leak in."""
    w1, opt1, loss_fn, _ = _quadratic_setup(False, 0.1)
    w2, opt2, _, _ = _quadratic_setup(False, 0.1)
    w2.grad = torch.full_like(w2, 100.0)

    def closure_for(w):
        def closure():
            loss = loss_fn(w)
            loss.backward()
            return loss
        return closure

    opt1.step(closure_for(w1))
    opt2.step(closure_for(w2))
    torch.testing.assert_close(w2.detach(), w1.detach(), rtol=0, atol=0)


def _mlp_and_data():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
    return model, x, y


def _adamw_sam(model, rho=0.05, adaptive=True):
    return SAM(model.parameters(), torch.optim.AdamW, rho=rho, adaptive=adaptive, lr=1e-2, weight_decay=0.1)


def _train(model, opt, x, y, steps):
    for _ in range(steps):
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.first_step(zero_grad=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.second_step(zero_grad=True)


def test_state_dict_round_trip_resumes_exactly():
    """k steps, save, fresh model + SAM, load, m more steps == k + m uninterrupted steps (AdamW moments kept)."""
    import copy
    import io

    k, m = 3, 4
    torch.manual_seed(0)
    model, x, y = _mlp_and_data()

    reference = copy.deepcopy(model)
    ref_opt = _adamw_sam(reference)
    _train(reference, ref_opt, x, y, k + m)

    opt = _adamw_sam(model)
    _train(model, opt, x, y, k)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)

    resumed, _, _ = _mlp_and_data()
    resumed.load_state_dict(ckpt["model"])
    resumed_opt = _adamw_sam(resumed, rho=0.5, adaptive=False)  # hyperparameters come back from the state dict
    resumed_opt.load_state_dict(ckpt["opt"])
    assert resumed_opt.param_groups[0]["rho"] == 0.05 and resumed_opt.param_groups[0]["adaptive"] is True
    assert resumed_opt.base_optimizer.param_groups is resumed_opt.param_groups  # still one set of groups
    _train(resumed, resumed_opt, x, y, m)

    for (name, p), q in zip(resumed.named_parameters(), reference.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(resumed.parameters(), reference.parameters()):
        s, t = resumed_opt.base_optimizer.state[p], ref_opt.base_optimizer.state[q]
        assert torch.equal(s["exp_avg"], t["exp_avg"]) and torch.equal(s["exp_avg_sq"], t["exp_avg_sq"])

    # the saved state holds the base optimizer's moments and SAM's own hyperparameters
    sd = ckpt["opt"]
    base_state = sd["base_optimizer"]["state"]
    assert len(base_state) == len(list(model.parameters()))
    assert all({"exp_avg", "exp_avg_sq", "step"} <= set(s) for s in base_state.values())
    assert sd["param_groups"][0]["rho"] == 0.05 and sd["param_groups"][0]["adaptive"] is True


def test_load_state_dict_refuses_a_dict_without_base_state():
    w = torch.nn.Parameter(torch.ones(3))
    opt = SAM([w], torch.optim.AdamW, rho=0.05, lr=1e-2)
    sd = opt.state_dict()
    del sd["base_optimizer"]
    with pytest.raises(ValueError, match="base_optimizer"):
        opt.load_state_dict(sd)


def test_rejects_bad_rho():
    with pytest.raises(ValueError, match="rho"):
        SAM([torch.nn.Parameter(torch.zeros(2))], torch.optim.SGD, rho=0.0, lr=0.1)


def test_scheduler_wraps_base_optimizer():
    w = torch.nn.Parameter(torch.ones(3))
    opt = SAM([w], torch.optim.AdamW, rho=0.05, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt.base_optimizer, lambda s: 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    del sched
