"""Merge methods: hand-computed examples, invariants, registry schema, bad input."""
import math

import pytest
import torch

from sammerge.errors import ConfigError, MergeError
from sammerge.merging import (MERGE_METHODS, TaskVector, apply_task_vector, breadcrumbs_mask, check_compatible,
                            get_method, linear_combination, task_vector, trim_magnitude)


def sd(**kw):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in kw.items()}


@pytest.fixture
def toy():
    torch.manual_seed(0)
    pre = {"w": torch.randn(4, 5), "b": torch.randn(5), "steps": torch.tensor(7)}
    fts = [{"w": pre["w"] + torch.randn(4, 5), "b": pre["b"] + torch.randn(5), "steps": torch.tensor(99)}
           for _ in range(3)]
    tvs = [task_vector(ft, pre) for ft in fts]
    return pre, fts, tvs


def close(a, b, atol=1e-6):
    return all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


# -- task vectors -------------------------------------------------------------------------------

def test_task_vector_roundtrip_and_nonfloat(toy):
    pre, fts, tvs = toy
    assert "steps" not in tvs[0]
    out = apply_task_vector(pre, tvs[0], 1.0)
    assert torch.allclose(out["w"], fts[0]["w"]) and out["steps"].item() == 7
    tv = TaskVector(pretrained=pre, finetuned=fts[0])
    s = sum([tv, TaskVector(tvs[1])])
    assert torch.allclose(s["w"], tvs[0]["w"] + tvs[1]["w"])
    assert torch.allclose((-tv)["w"], -tvs[0]["w"])
    assert torch.allclose((0.5 * tv)["b"], 0.5 * tvs[0]["b"])
    assert torch.allclose((tv - tv)["w"], torch.zeros(4, 5))
    assert torch.allclose(tv.apply_to(pre, 0.5)["w"], pre["w"] + 0.5 * tvs[0]["w"])
    with pytest.raises(MergeError):
        tv * float("nan")
    with pytest.raises(MergeError, match="'b'"):
        tv + TaskVector({"w": tvs[0]["w"]})


def test_inputs_not_modified(toy):
    pre, _, tvs = toy
    before = {k: v.clone() for k, v in pre.items()}
    tvb = [{k: v.clone() for k, v in tv.items()} for tv in tvs]
    for m in MERGE_METHODS.values():
        used = tvs if m.accepts_tasks(len(tvs)) else tvs[:m.task_count[0]]
        m(pre, used, statistics=[{k: torch.rand_like(v) for k, v in tv.items() if v.ndim == 1} for tv in used]
          if m.needs_data else None)
    assert close(pre, before) and all(close(a, b) for a, b in zip(tvs, tvb))


# -- hand-computed examples ---------------------------------------------------------------------

PRE = sd(x=[0.0, 0.0, 0.0, 0.0])
T1 = sd(x=[1.0, -2.0, 0.5, 0.0])
T2 = sd(x=[3.0, 1.0, -0.5, 4.0])


def test_weight_average_and_task_arithmetic_hand():
    assert torch.allclose(get_method("weight_average")(PRE, [T1, T2])["x"], torch.tensor([2.0, -0.5, 0.0, 2.0]))
    out = get_method("weight_average")(PRE, [T1, T2], weights=[1.0, 3.0])["x"]
    assert torch.allclose(out, (torch.tensor([1.0, -2, 0.5, 0]) + 3 * torch.tensor([3.0, 1, -0.5, 4])) / 4)
    ta = get_method("task_arithmetic")
    assert torch.allclose(ta(PRE, [T1, T2], **{"lambda": 0.5})["x"], torch.tensor([2.0, -0.5, 0.0, 2.0]))
    out = ta(PRE, [T1, T2], **{"lambda": 2.0, "weights": [1.0, 0.5]})["x"]
    assert torch.allclose(out, torch.tensor([2 * (1 + 1.5), 2 * (-2 + 0.5), 2 * (0.5 - 0.25), 2 * 2.0]))
    out = ta(PRE, [T1, T2], **{"lambda": 1.0, "weights": [1.0, 3.0], "normalize": True})["x"]
    assert torch.allclose(out, (T1["x"] + 3 * T2["x"]) / 4)


def test_ties_hand():
    # density 0.5 on 4 entries keeps 2 per task: T1 -> [0,-2,0,0]+[1..]: |1|,|2| -> keep -2 and 1
    t1 = sd(x=[1.0, -2.0, 0.5, 0.0])
    t2 = sd(x=[3.0, 1.0, -0.5, 4.0])
    # trimmed: t1 -> [1,-2,0,0], t2 -> [3,0,0,4]; sign sum [4,-2,0,4] -> gamma [+,-,+,+]
    # disjoint mean: [ (1+3)/2, -2, 0, 4 ]
    out = get_method("ties")(PRE, [t1, t2], density=0.5)["x"]
    assert torch.allclose(out, torch.tensor([2.0, -2.0, 0.0, 4.0]))
    # sign conflict at entry 0 without trimming: [1, -3] -> sum -2 -> keep -3 only
    a, b = sd(x=[1.0]), sd(x=[-3.0])
    assert torch.allclose(get_method("ties")(sd(x=[0.0]), [a, b], density=1.0)["x"], torch.tensor([-3.0]))
    # normalize false -> disjoint sum, lambda scales
    out = get_method("ties")(PRE, [t1, t2], density=0.5, normalize=False, **{"lambda": 0.5})["x"]
    assert torch.allclose(out, 0.5 * torch.tensor([4.0, -2.0, 0.0, 4.0]))


def test_ties_no_conflict_density1_is_mean(toy):
    pre, _, _ = toy
    tvs = [{"w": torch.rand(4, 5) + 0.1, "b": -torch.rand(5) - 0.1} for _ in range(3)]
    out = get_method("ties")(pre, tvs, density=1.0, **{"lambda": 0.7})
    mean = {k: sum(tv[k] for tv in tvs) / 3 for k in ("w", "b")}
    assert torch.allclose(out["w"], pre["w"] + 0.7 * mean["w"], atol=1e-6)
    assert torch.allclose(out["b"], pre["b"] + 0.7 * mean["b"], atol=1e-6)


def test_ties_trim_exact_count_ties_and_scopes():
    x = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5])  # ties at threshold: lowest index wins
    assert torch.equal(trim_magnitude(x, 0.4), torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]))
    y = torch.randn(1000)
    assert int((trim_magnitude(y, 0.2) != 0).sum()) == 200
    assert int((trim_magnitude(torch.randn(7), 0.1) != 0).sum()) == 1  # max(1, int(0.7)) like mergekit 0.1.5
    # model scope: top-k over the whole vector (big tensor keeps everything, small none)
    pre = {"a": torch.zeros(4), "b": torch.zeros(4)}
    tv = {"a": torch.tensor([10.0, 9, 8, 7]), "b": torch.tensor([1.0, 2, 3, 4])}
    out_m = get_method("ties")(pre, [tv], density=0.5, trim_scope="model")
    assert torch.equal(out_m["a"], tv["a"]) and torch.equal(out_m["b"], torch.zeros(4))
    out_t = get_method("ties")(pre, [tv], density=0.5, trim_scope="tensor")
    assert torch.equal(out_t["b"], torch.tensor([0.0, 0, 3, 4]))


def test_dare_expectation_reproducible_order_independent(toy):
    pre, _, tvs = toy
    dl = get_method("dare_linear")
    full = get_method("task_arithmetic")(pre, tvs, **{"lambda": 0.5})
    acc = {k: torch.zeros_like(v) for k, v in full.items() if v.is_floating_point()}
    n = 400
    for s in range(n):
        out = dl(pre, tvs, density=0.5, seed=s, **{"lambda": 0.5})
        for k in acc:
            acc[k] += out[k] / n
    for k in acc:
        # std of the mean per entry ~ 0.5*sqrt(3)*|tau|/sqrt(n) -> tolerance 5 sigma-ish
        assert torch.allclose(acc[k], full[k], atol=0.35), k
    a = dl(pre, tvs, density=0.3, seed=7)
    b = dl(pre, tvs, density=0.3, seed=7)
    assert close(a, b, atol=0)
    rev_pre = dict(reversed(list(pre.items())))
    rev_tvs = [dict(reversed(list(tv.items()))) for tv in tvs]
    assert close(a, dl(rev_pre, rev_tvs, density=0.3, seed=7), atol=0)
    assert not close(a, dl(pre, tvs, density=0.3, seed=8), atol=0)
    # a task's mask depends on its id, not on the other tasks
    one = dl(pre, tvs[:1], task_ids=["digits"], density=0.3, seed=1)
    two = dl(pre, [tvs[0], {k: torch.zeros_like(v) for k, v in tvs[1].items()}], task_ids=["digits", "x"],
             density=0.3, seed=1)
    assert close(one, two)
    # surviving entries are rescaled by 1/density
    o = dl({"x": torch.zeros(1000)}, [{"x": torch.ones(1000)}], density=0.25, seed=3)["x"]
    assert set(o.unique().tolist()) <= {0.0, 4.0} and 150 < int((o != 0).sum()) < 350
    dt = get_method("dare_ties")(pre, tvs, density=1.0)
    assert close(dt, get_method("ties")(pre, tvs, density=1.0, normalize=False), atol=1e-6)


def test_breadcrumbs_count():
    x = torch.arange(1.0, 101.0)  # |values| 1..100
    mask = breadcrumbs_mask(x, density=0.9, gamma=0.05)
    assert int(mask.sum()) == 90
    assert not mask[95:].any() and mask[5:95].all()  # top 5 outliers and bottom 5 dropped
    pre = {"x": torch.zeros(100)}
    out = get_method("breadcrumbs")(pre, [{"x": x}], density=0.5, gamma=0.1)["x"]
    assert int((out != 0).sum()) == 50 and out.max() == 90 and out[out != 0].min() == 41
    with pytest.raises(ConfigError, match="gamma"):
        get_method("breadcrumbs").validate_params({"density": 0.95, "gamma": 0.1})


def test_model_stock():
    pre = {"x": torch.zeros(2)}
    a, b = {"x": torch.tensor([1.0, 0.0])}, {"x": torch.tensor([0.0, 1.0])}  # cos 0 -> t=0
    assert torch.allclose(get_method("model_stock")(pre, [a, b])["x"], torch.zeros(2))
    c = {"x": torch.tensor([2.0, 0.0])}  # cos 1 -> t=1 -> mean
    assert torch.allclose(get_method("model_stock")(pre, [a, c])["x"], torch.tensor([1.5, 0.0]))


# -- invariants over every method ---------------------------------------------------------------

LAMBDA_METHODS = ["task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs"]


@pytest.mark.parametrize("name", LAMBDA_METHODS)
def test_lambda_zero_gives_base(toy, name):
    pre, _, tvs = toy
    out = get_method(name)(pre, tvs, **{"lambda": 0.0})
    assert close(out, pre, atol=0)


# methods that reshape even one task vector (a flat spectrum, scores, a consensus of ≥ 2 tasks), need two, or
# (WUDI) start at the optimum Σ τ = τ_1 where Adam's normalised steps follow rounding noise (drift ~ iterations·lr)
RESHAPE_ONE_TASK = {"iso_c", "iso_cts", "pcb", "consensus_ta", "slerp", "wudi"}


@pytest.mark.parametrize("name", sorted(set(MERGE_METHODS) - RESHAPE_ONE_TASK))
def test_one_task_full_density_gives_finetuned(toy, name):
    pre, fts, tvs = toy
    params = {"density": 1.0} if "density" in {p.name for p in get_method(name).params} else {}
    if name == "breadcrumbs":
        params["gamma"] = 0.0
    if get_method(name).has_lambda:
        params["lambda"] = 1.0
    method = get_method(name)
    stats = None
    if method.needs_data:  # any positive-definite Gram (RegMean), any positive Fisher: one task gives τ_1 back
        g = torch.Generator().manual_seed(3)
        stats = [{k: (lambda x: x.T @ x)(torch.randn(9, v.shape[1], generator=g))
                  if v.ndim == 2 and name == "regmean" else
                  torch.rand(v.shape, generator=g) for k, v in tvs[0].items() if v.is_floating_point()}]
    out = method(pre, tvs[:1], statistics=stats, **params)
    if not method.is_static:  # task-routed: the one task's own model
        (out,) = out
    assert torch.allclose(out["w"], fts[0]["w"], atol=1e-6) and torch.allclose(out["b"], fts[0]["b"], atol=1e-6)
    assert out["steps"].item() == 7  # non-floating copied from the base


def test_linear_combination_fast_path(toy):
    pre, _, tvs = toy
    out = linear_combination(pre, tvs, [0.1, 0.2, 0.3])
    ref = get_method("task_arithmetic")(pre, tvs, weights=[0.1, 0.2, 0.3])
    assert close(out, ref, atol=1e-6)
    with pytest.raises(MergeError, match="coefficients"):
        linear_combination(pre, tvs, [0.1, float("nan"), 0.3])
    with pytest.raises(MergeError, match="2 coefficients"):
        linear_combination(pre, tvs, [0.1, 0.2])


# -- registry schema ----------------------------------------------------------------------------

def test_registry_schema():
    assert {"weight_average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
            "model_stock"} <= set(MERGE_METHODS)
    ties = get_method("ties")
    density = ties.param("density")
    assert density.kind == "float" and not density.per_model and density.low == 0 and density.low_exclusive
    assert density.high == 1 and density.step == 0.05 and density.help and density.label
    weights = ties.param("weights")
    assert weights.per_model and weights.kind == "float" and weights.mergekit_name == "weight"
    assert weights.entry_default == 1.0
    lam = ties.param("lambda")
    # each method declares its own λ grid (TIES' disjoint mean is searched up to 2.5, as by the TIES authors)
    assert lam.mergekit_name == "lambda" and lam.default == 1.0 and lam.slider_range == (0.0, 2.5)
    assert ties.lambda_grid()[0] == 0.0 and ties.lambda_grid()[-1] == 2.5 and len(ties.lambda_grid()) == 26
    ta = get_method("task_arithmetic")
    assert ta.lambda_grid() == [round(0.05 * i, 2) for i in range(21)] and ta.param("lambda").slider_range == (0.0, 2.0)
    assert get_method("weight_average").lambda_grid() == [] and get_method("model_stock").lambda_range is None
    assert ties.param("trim_scope").choices == ("tensor", "model") and ties.param("trim_scope").default == "tensor"
    assert ties.param("normalize").default is True
    assert get_method("task_arithmetic").param("normalize").default is False
    assert get_method("dare_ties").param("seed").kind == "int"
    for m in MERGE_METHODS.values():
        assert m.label and m.description and m.doc
        d = m.to_dict()
        for p in d["params"]:
            assert p["help"] and p["label"] and p["kind"] in ("float", "int", "bool", "choice")


def test_registry_errors(toy):
    pre, _, tvs = toy
    with pytest.raises(ConfigError, match="unknown merge method 'nope'.*task_arithmetic"):
        get_method("nope")
    with pytest.raises(ConfigError, match="unknown parameter 'alpha'"):
        get_method("ties")(pre, tvs, alpha=1.0)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="density"):
            get_method("ties").validate_params({"density": bad})
    assert get_method("ties").validate_params({"density": 1.0})["density"] == 1.0
    with pytest.raises(ConfigError, match="trim_scope"):
        get_method("ties").validate_params({"trim_scope": "layer"})
    with pytest.raises(ConfigError, match="weights.*3 tasks"):
        get_method("ties")(pre, tvs, weights=[1.0])


# -- bad tensors / coefficients -----------------------------------------------------------------

def test_check_compatible_messages():
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    with pytest.raises(MergeError, match=r"'w'.*\[2, 3\].*\[3, 2\]"):
        check_compatible([a, {"w": torch.zeros(3, 2), "b": torch.zeros(3)}], ["base", "ft"])
    with pytest.raises(MergeError, match="'b'.*missing from ft"):
        check_compatible([a, {"w": torch.zeros(2, 3)}], ["base", "ft"])
    with pytest.raises(MergeError, match="'c'.*extra"):
        check_compatible([a, dict(a, c=torch.zeros(1))], ["base", "ft"])
    with pytest.raises(MergeError, match="ft: tensor 'b' contains NaN"):
        check_compatible([a, {"w": torch.zeros(2, 3), "b": torch.tensor([0.0, float("nan"), 0])}], ["base", "ft"])
    with pytest.raises(MergeError, match="Inf"):
        check_compatible([a, {"w": torch.full((2, 3), float("inf")), "b": torch.zeros(3)}], ["base", "ft"])


@pytest.mark.parametrize("name", list(MERGE_METHODS))
def test_bad_inputs_every_method(toy, name):
    pre, _, tvs = toy
    m = get_method(name)
    with pytest.raises(MergeError, match="empty task set"):
        m(pre, [])
    bad = dict(tvs[0], w=torch.zeros(5, 4))
    with pytest.raises(MergeError, match=r"'w'.*\[4, 5\].*\[5, 4\]"):
        m(pre, [bad])
    nan = dict(tvs[0], b=torch.full((5,), float("nan")))
    with pytest.raises(MergeError, match="'b' contains NaN"):
        m(pre, [nan])
    if "weights" in {p.name for p in m.params}:
        with pytest.raises(MergeError, match="weights\\[0\\]"):
            m(pre, tvs[:1], weights=[float("inf")])
    if "lambda" in {p.name for p in m.params}:
        with pytest.raises(MergeError, match="lambda"):
            m(pre, tvs, **{"lambda": float("nan")})


def test_batched_trim_equals_per_tensor_trim():
    """The batched (all tasks at once, per-task densities) trim equals trim_magnitude tensor by tensor."""
    torch.manual_seed(0)
    pre = {f"l{i}": torch.randn(16, 33) for i in range(3)}
    tvs = [{k: torch.randn_like(v).round(decimals=1) for k, v in pre.items()} for _ in range(4)]  # many ties
    dens = [0.2, 0.5, 0.2, 1.0]
    out = get_method("ties")(pre, tvs, density=0.2, densities=dens, normalize=False)
    manual = []
    for tv, d in zip(tvs, dens):
        manual.append({k: trim_magnitude(v, d) for k, v in tv.items()})
    ref = get_method("ties")(pre, manual, density=1.0, normalize=False)
    assert close(out, ref, atol=0)
    assert math.isfinite(float(get_method("dare_ties")(pre, tvs, validate=False)["l0"].sum()))


def test_model_stock_ratio_is_clamped_for_vectors_pointing_apart():
    """Defect: t = T·cos/(1+(T−1)·cos) is unbounded for cos < 0 (outputs of −16 from inputs of order 1)."""
    base = {"w": torch.zeros(4)}
    v = torch.tensor([1.0, -2.0, 0.5, 1.5])
    opposite = [{"w": v}, {"w": -0.9 * v}]  # cos = −1 → unclamped t = 2·(−1)/(1 − 1) → denominator 0 → 0
    near = [{"w": v}, {"w": -0.9 * v + torch.tensor([0.3, 0.0, 0.0, 0.0])}]
    cos = float(torch.nn.functional.cosine_similarity(near[0]["w"], near[1]["w"], dim=0))
    unclamped = 2 * cos / (1 + cos)
    assert cos < 0 and abs(unclamped) > 10  # the case the clamp is for
    for tvs in (opposite, near):
        merged = get_method("model_stock")(base, tvs)
        # t = 0 (clamped): θ = θ0 exactly
        assert torch.equal(merged["w"], base["w"])
    # agreeing vectors are untouched by the clamp: t = 2c/(1+c), by hand
    same = [{"w": v}, {"w": v + torch.tensor([0.5, 0.0, 0.0, 0.0])}]
    c = float(torch.nn.functional.cosine_similarity(same[0]["w"], same[1]["w"], dim=0))
    want = (2 * c / (1 + c)) * (same[0]["w"] + same[1]["w"]) / 2
    assert torch.allclose(get_method("model_stock")(base, same)["w"], want, atol=1e-6)
