"""The exact preview of a linearized zoo: f(θ0) + Σ c J τ equals evaluating the merged linearized model."""
from __future__ import annotations

import pytest

from sammerge.evaluation.evaluator import Evaluator
from sammerge.explorer.service import Explorer
from sammerge.merging import LAMBDA, MergeSpec, merge_zoo
from sammerge.zoo import open_zoo


def exact(zoo, spec, n=48):
    """The merged weights evaluated through the linearized model (an independent, ordinary path)."""
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=n, seed=0)
    assert ev.linearize_at is not None
    return ev.evaluate(merge_zoo(zoo, spec))


@pytest.mark.parametrize("method, params, weights", [
    ("task_arithmetic", {LAMBDA: 0.45}, None),
    ("task_arithmetic", {LAMBDA: 0.8, "normalize": True}, {"digits": 0.5, "latin_upper": 1.5, "symbols": 1.0}),
    ("weight_average", {}, {"digits": 2.0, "latin_upper": 1.0, "symbols": 0.25}),
    ("ties", {LAMBDA: 1.3, "density": 0.3}, None),
    ("dare_linear", {LAMBDA: 0.7, "density": 0.5, "seed": 3}, None),
])
def test_preview_equals_exact_linearized_evaluation(linear_zoo, method, params, weights):
    ex = Explorer(linear_zoo, n_per_task=48)
    assert ex.instant.wait(300) is not None, ex.instant.describe()  # f(θ0), J τ_t: a background job, then on disk
    spec = MergeSpec.for_zoo(linear_zoo, method, params, {"digits": "sam", "latin_upper": "plain", "symbols": "sam"},
                             weights)
    got, want = ex.evaluate(spec), exact(linear_zoo, spec)
    for t in linear_zoo.tasks:
        assert got[t].accuracy == want[t].accuracy, (t, got[t], want[t])
        assert got[t].loss == pytest.approx(want[t].loss, abs=1e-5)


def test_lambda_moves_cost_no_forward_pass(linear_zoo):
    ex = Explorer(linear_zoo, n_per_task=48)
    assert ex.instant.wait(300) is not None, ex.instant.describe()
    ex.compare(ex.default_spec())  # references; every J τ_t is precomputed
    jvps, forwards = ex.preview.jvp_count, ex.evaluator.forward_count
    assert jvps == 0
    for lam in (0.1, 0.55, 1.7):
        ex.compare(ex.default_spec().with_params(**{LAMBDA: lam}))
    assert (ex.preview.jvp_count, ex.evaluator.forward_count) == (jvps, forwards)
    ties = ex.default_spec().with_method("ties")
    ex.evaluate(ties)
    after = ex.preview.jvp_count
    ex.evaluate(ties.with_params(**{LAMBDA: 2.0}))  # same direction, another λ
    assert ex.preview.jvp_count == after == jvps + 1


def test_ordinary_zoos_have_no_preview(tiny_zoo):
    ex = Explorer(open_zoo(tiny_zoo), n_per_task=16)
    assert ex.preview is None and ex.instant is None


def test_analyses_that_would_use_the_plain_forward_refuse_linearized_zoos(linear_zoo):
    from sammerge.analytics import report as an
    from sammerge.errors import ConfigError

    with pytest.raises(ConfigError, match="linearized"):
        an.analyze_zoo(linear_zoo, quick=True)
    # the evaluator-based ones use f_lin and work
    curve = an.interpolation_for(linear_zoo, linear_zoo.tasks[0], "plain", n_per_task=16, use_cache=False)
    assert len(curve["finetuned"].loss[linear_zoo.tasks[0]]) == 11
