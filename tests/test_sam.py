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


def test_closure_step_equals_two_step_api():
    w1, opt1, loss_fn, _ = _quadratic_setup(False, 0.1)
    w2, opt2, _, _ = _quadratic_setup(False, 0.1)
    for _ in range(3):
        loss_fn(w1).backward(); opt1.first_step(True)
        loss_fn(w1).backward(); opt1.second_step(True)

        def closure():
            loss = loss_fn(w2)
            loss.backward()
            return loss
        opt2.step(closure)
        opt2.zero_grad()
    torch.testing.assert_close(w1.detach(), w2.detach())


def test_rejects_bad_rho():
    with pytest.raises(ValueError, match="rho"):
        SAM([torch.nn.Parameter(torch.zeros(2))], torch.optim.SGD, rho=0.0, lr=0.1)


def test_scheduler_wraps_base_optimizer():
    w = torch.nn.Parameter(torch.ones(3))
    opt = SAM([w], torch.optim.AdamW, rho=0.05, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt.base_optimizer, lambda s: 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    del sched
