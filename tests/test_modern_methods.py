"""PCB and Consensus TA against references written here from the papers (plain torch, float64, the authors'
sort-based formulas), plus properties every 2024–2025 method shares: λ is a final scale of one merged direction,
integer buffers pass through, bad inputs are refused with a message."""
from __future__ import annotations

import pytest
import torch

from sammerge.errors import ConfigError, MergeError
from sammerge.merging import get_method

MODERN = ["tsv_m", "iso_c", "iso_cts", "wudi", "magmax", "consensus_ta", "pcb", "della"]


def _zoo(seed=0, tasks=3):
    g = torch.Generator().manual_seed(seed)
    shapes = {"w": (8, 6), "b": (6,), "k": (4, 2, 3, 3)}
    theta0 = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    theta0["steps"] = torch.tensor(7)
    tvs = [{k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(tasks)]
    return theta0, tvs


def _flat(sd, keys):
    return torch.cat([sd[k].double().reshape(-1) for k in keys])


def _pcb_reference(tvs, keys, ratio):
    """duguodong7/pcb-merging `PCB_merge`, with torch.sort as the authors wrote it."""
    x = torch.stack([_flat(tv, keys) for tv in tvs])
    n, d = x.shape

    def clamp(v, lo_ratio, hi_ratio):
        s, _ = torch.sort(v, dim=1)
        return torch.clamp(v, s[:, int(d * lo_ratio)].unsqueeze(1), s[:, int(d * (1 - hi_ratio) - 1)].unsqueeze(1))

    def normalize(v):
        lo, hi = v.min(1, keepdim=True).values, v.max(1, keepdim=True).values
        return (v - lo) / (hi - lo)

    a = clamp(x.abs(), 0.0001, 0.0001)
    clamped = torch.sign(x) * a
    score = torch.exp(n * normalize(a) ** 2) * torch.tanh(x * x.sum(0))
    scale = normalize(clamp(score, 1 - ratio, 0))
    return (clamped * scale).sum(0) / torch.clamp(scale.sum(0), min=1e-12)


@pytest.mark.parametrize("ratio,lam", [(0.05, 1.2), (0.3, 0.7)])
def test_pcb_matches_the_authors_formula(ratio, lam):
    theta0, tvs = _zoo(1)
    keys = ["w", "b", "k"]
    ours = get_method("pcb")(theta0, tvs, ratio=ratio, **{"lambda": lam})
    merged = _pcb_reference(tvs, keys, ratio)
    got = _flat(ours, keys) - _flat(theta0, keys)
    assert float((got - lam * merged).abs().max()) <= 1e-5
    assert ours["steps"] == theta0["steps"]
    # only about `ratio` of each task's entries carry a score: with a small ratio most of the merge is zero
    if ratio == 0.05:
        assert float((got == 0).double().mean()) > 0.5


@pytest.mark.parametrize("k,mask_lambda,per_task", [(2, 0.6, None), (1, 0.3, [0.2, 0.5, 0.9]), (3, 0.4, None)])
def test_consensus_matches_the_paper(k, mask_lambda, per_task):
    theta0, tvs = _zoo(2)
    ours = get_method("consensus_ta")(theta0, tvs, k=k, mask_lambda=mask_lambda, mask_lambdas=per_task,
                                      **{"lambda": 0.8})
    lams = per_task or [mask_lambda] * 3
    for key in ("w", "b", "k"):
        t = [tv[key].double() for tv in tvs]
        theta_mtl = theta0[key].double() + sum(t)
        votes = sum((theta0[key].double() - (theta0[key].double() + t[i])).abs()
                    >= lams[i] * (theta_mtl - (theta0[key].double() + t[i])).abs() for i in range(3))
        expect = theta0[key].double() + 0.8 * sum(t) * (votes >= k)
        assert float((ours[key].double() - expect).abs().max()) <= 1e-5, key
    if k == 3:  # a strict consensus removes entries
        assert float((ours["w"] == theta0["w"]).double().mean()) > 0.05


def test_consensus_with_k0_is_task_arithmetic():
    theta0, tvs = _zoo(3)
    ours = get_method("consensus_ta")(theta0, tvs, k=0, **{"lambda": 0.4})
    ta = get_method("task_arithmetic")(theta0, tvs, **{"lambda": 0.4})
    assert all(torch.allclose(ours[k].float(), ta[k].float(), atol=1e-6) for k in ("w", "b", "k"))


@pytest.mark.parametrize("name", MODERN)
def test_lambda_is_a_final_scale_of_one_direction(name):
    theta0, tvs = _zoo(4)
    method = get_method(name)
    assert method.lambda_is_scale and method.is_static
    direction = method.direction(theta0, tvs, task_ids=["a", "b", "c"])
    for lam in (0.3, 1.7):
        merged = method(theta0, tvs, task_ids=["a", "b", "c"], **{"lambda": lam})
        for key in ("w", "b", "k"):
            assert torch.allclose(merged[key], theta0[key] + lam * direction[key], atol=1e-5), (name, key)
        assert merged["steps"] == theta0["steps"] and merged["steps"].dtype == theta0["steps"].dtype


@pytest.mark.parametrize("name", ["tsv_m", "iso_c", "iso_cts", "wudi"])
def test_conv_rule_average_means_conv_kernels(name):
    theta0, tvs = _zoo(5)
    method = get_method(name)
    mean = torch.stack([tv["k"] for tv in tvs]).mean(0)
    avg = method.direction(theta0, tvs, conv="average")
    assert torch.allclose(avg["k"], mean, atol=1e-6)
    reshaped = method.direction(theta0, tvs)  # default: the kernel is the matrix [out, in·kh·kw]
    assert float((reshaped["k"] - mean).abs().max()) > 1e-3


def test_bad_inputs_are_named():
    theta0, tvs = _zoo(6)
    tvs[1]["w"][0, 0] = float("nan")
    with pytest.raises(MergeError, match="NaN|finite"):
        get_method("tsv_m")(theta0, tvs)
    with pytest.raises(ConfigError, match="conv"):
        get_method("iso_c")(theta0, _zoo(6)[1], conv="flatten")
    with pytest.raises(ConfigError, match="common_space_fraction"):
        get_method("iso_cts")(theta0, _zoo(6)[1], common_space_fraction=1.5)
    with pytest.raises(ConfigError, match="mask_lambdas"):
        get_method("consensus_ta")(theta0, _zoo(6)[1], mask_lambdas=[0.1, 0.2])


def test_iso_cts_with_almost_no_common_space_keeps_whole_task_blocks():
    """f = 0 on a rank-32 matrix, 3 tasks: rounding would leave −1 common directions; instead ⌊32/3⌋ = 10 per task
    and 2 common, and the merge is finite and isotropic (one singular value)."""
    g = torch.Generator().manual_seed(4)
    theta0 = {"w": torch.zeros(32, 40)}
    tvs = [{"w": torch.randn(32, 40, generator=g)} for _ in range(3)]
    out = get_method("iso_cts")(theta0, tvs, common_space_fraction=0.0)["w"]
    s = torch.linalg.svdvals(out)
    assert torch.isfinite(out).all() and float(s.max() - s[s > 1e-4].min()) < 1e-3 * float(s.max())
