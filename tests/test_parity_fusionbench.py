"""Parity of the 2024–2025 merge methods with FusionBench 0.2.33's own functions (run in its venv: ``./dev test``
installs it), on random state dicts: max |difference| ≤ 1e-5 (fp32).

Conv kernels: with ``conv="average"`` FusionBench's rule applies (4-D tensors averaged); with the default
``conv="reshape"`` our result must equal FusionBench run on the kernel reshaped to [out, in·kh·kw].
All FusionBench results come from one oracle run (importing fusion_bench takes seconds).
"""
from __future__ import annotations

import pytest
import torch

from fusionbench_oracle import run_fusionbench
from sammerge.merging import get_method

TOL = 1e-5
TASKS = 4
SHAPES = {"a.weight": (24, 16), "b.weight": (10, 30), "b.bias": (10,), "c.weight": (12, 3, 3, 3),
          "d.weight": (3, 40)}  # d: rank 3 < 4 tasks


def _zoo():
    g = torch.Generator().manual_seed(0)
    theta0 = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    tvs = [{k: 0.1 * torch.randn(s, generator=g) for k, s in SHAPES.items()} for _ in range(TASKS)]
    tvs[2]["a.weight"][0, 0] = tvs[0]["a.weight"][0, 0] = 5.0  # a MagMax tie: the later task wins
    tvs[1]["a.weight"][0, 0] = -5.0
    return theta0, tvs


def _flat_conv(sd):
    return {k: (v.reshape(v.shape[0], -1) if v.dim() == 4 else v) for k, v in sd.items()}


# (name, FusionBench call on `tvs`) — every call runs on the original tensors ("average") and on conv kernels
# reshaped to matrices ("reshape")
CALLS = {
    "tsv_m": "compute_and_sum_svd_mem_reduction(tvs, accelerator='cpu')",
    "iso_c": "iso_c(tvs, accelerator='cpu')",
    "iso_cts_0.8": "iso_cts(tvs, common_space_fraction=0.8, accelerator='cpu')",
    "iso_cts_0.5": "iso_cts(tvs, common_space_fraction=0.5, accelerator='cpu')",
    "wudi": "{k: v.detach() for k, v in wudi_merging(tvs, accelerator='cpu', iter_num=60).items()}",
    "magmax": "_magmax_select(tvs)",
}
SNIPPET = """
import torch
from fusion_bench.method.task_singular_vector.utils.TSVM_utils import compute_and_sum_svd_mem_reduction
from fusion_bench.method.isotropic_merging.iso_utils import iso_c, iso_cts
from fusion_bench.method.wudi.wudi import wudi_merging
from fusion_bench.method.magmax.magmax import _magmax_select
_Adam = torch.optim.Adam  # WUDI at lr 1e-3 (FusionBench hard-codes 1e-5) so that 60 steps move far from Σ τ_t
torch.optim.Adam = lambda params, lr, weight_decay: _Adam(params, lr=1e-3, weight_decay=weight_decay)
for conv in ("average", "reshape"):
    tvs = [load(f"{conv}{i}") for i in range(N)]
""" + "".join(f"    save(f'{name}-{{conv}}', {call})\n" for name, call in CALLS.items())


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    theta0, tvs = _zoo()
    inputs = {f"average{i}": tv for i, tv in enumerate(tvs)} | {f"reshape{i}": _flat_conv(tv) for i, tv in enumerate(tvs)}
    return theta0, tvs, run_fusionbench(tmp_path_factory.mktemp("fb"), f"N = {TASKS}\n" + SNIPPET, **inputs)


def _worst(ours, theirs, theta0, lam, skip=()):
    return max(float((ours[k] - (base + lam * theirs[k].reshape(base.shape))).abs().max())
               for k, base in theta0.items() if k not in skip)


CASES = [("tsv_m", {"lambda": 1.5}, "tsv_m", 1.5), ("iso_c", {"lambda": 1.0}, "iso_c", 1.0),
         ("iso_cts", {"lambda": 2.0}, "iso_cts_0.8", 2.0),
         ("iso_cts", {"lambda": 1.0, "common_space_fraction": 0.5}, "iso_cts_0.5", 1.0),
         ("wudi", {"lambda": 1.0, "iterations": 60, "lr": 1e-3}, "wudi", 1.0)]


@pytest.mark.parametrize("conv", ["average", "reshape"])
@pytest.mark.parametrize("method,params,ref,lam", CASES, ids=[c[2] for c in CASES])
def test_matches_fusionbench(oracle, method, params, ref, lam, conv):
    theta0, tvs, theirs = oracle
    ours = get_method(method)(theta0, tvs, **params, conv=conv)
    # TSV-M on d.weight (rank 3 < 4 tasks): FusionBench keeps no component (0), sammerge averages (documented)
    skip = {"d.weight"} if method == "tsv_m" else ()
    worst = _worst(ours, theirs[f"{ref}-{conv}"], theta0, lam, skip)
    assert worst <= TOL, f"{method} {params} conv={conv}: max |ours − FusionBench| = {worst:.3g} > {TOL}"
    mean = {k: torch.stack([tv[k] for tv in tvs]).mean(0) for k in theta0}
    assert torch.allclose(ours["b.bias"], theta0["b.bias"] + lam * mean["b.bias"], atol=TOL)  # non-matrix: mean
    # the matrix path changed the weights: not an average
    assert float((ours["a.weight"] - theta0["a.weight"] - lam * mean["a.weight"]).abs().max()) > 1e-2
    if method == "tsv_m":
        assert float(theirs[f"tsv_m-{conv}"]["d.weight"].abs().max()) == 0.0
        assert torch.allclose(ours["d.weight"], theta0["d.weight"] + lam * mean["d.weight"], atol=TOL)


def test_iso_c_spectrum_is_flat(oracle):
    theta0, tvs, _ = oracle
    merged = get_method("iso_c")(theta0, tvs)
    s = torch.linalg.svdvals(merged["a.weight"] - theta0["a.weight"])
    assert float(s.max() - s.min()) < 1e-4 * float(s.max())


def test_magmax_matches_fusionbench(oracle):
    theta0, tvs, theirs = oracle
    ours = get_method("magmax")(theta0, tvs)  # λ default 0.5, FusionBench's scaling_factor
    assert _worst(ours, theirs["magmax-average"], theta0, 0.5) <= TOL
    assert float(ours["a.weight"][0, 0] - theta0["a.weight"][0, 0]) == pytest.approx(2.5)  # the tie: task 2's +5


def test_wudi_first_adam_step_follows_the_autograd_gradient():
    """The closed-form gradient against autograd of the objective: Adam's first step is −lr·g/(|g| + 1e-8)."""
    from sammerge.merging.modern.wudi import wudi_matrix
    g = torch.Generator().manual_seed(5)
    mats = [torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    start = torch.stack(mats).sum(0).requires_grad_()
    loss = sum(((start - m) @ m.T).square().sum() / m.square().sum() for m in mats)
    (grad,) = torch.autograd.grad(loss, start)
    stepped = wudi_matrix(mats, iterations=1, lr=1e-3)
    assert torch.allclose(stepped, start.detach() - 1e-3 * grad / (grad.abs() + 1e-8), atol=1e-12)
    assert float(grad.abs().min()) > 1e-3
