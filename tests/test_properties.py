"""Property-based tests (hypothesis): any merge spec, link or uploaded config gives a valid merge or a clean
validation error (SammergeError) — never another exception — and valid specs round-trip exactly."""
from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from sammerge.errors import ConfigError, SammergeError
from sammerge.merging import (MergeSpec, from_mergekit_yaml, get_method, is_mergekit_config, list_methods,
                              merge_zoo)
from sammerge.zoo import open_zoo

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


@pytest.fixture(scope="module")
def zoo(tiny_zoo):
    return open_zoo(tiny_zoo)


def _value_for(p):
    """A strategy of valid values for one global parameter of a method's schema."""
    if p.kind == "bool":
        return st.booleans()
    if p.kind == "choice":
        return st.sampled_from(list(p.choices))
    lo, hi = p.slider_range
    lo = 0.0 if lo is None else lo
    hi = lo + 3.0 if hi is None else hi
    if p.kind == "int":
        return st.integers(int(math.ceil(lo)), int(min(hi, 10_000)))
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(lambda v: round(v, 4)).filter(
        lambda v: (v > lo if p.low_exclusive else v >= lo) and (v < hi if p.high_exclusive else v <= hi))


@st.composite
def specs(draw, zoo):
    method = draw(st.sampled_from([m.name for m in list_methods()]))
    schema = get_method(method)
    params = {p.name: draw(_value_for(p)) for p in schema.global_params}
    if schema.needs_data:  # statistics on a few images keep each example fast
        params["images_per_task"] = min(params["images_per_task"], 12)
    tasks = draw(st.lists(st.sampled_from(zoo.tasks), min_size=1, max_size=len(zoo.tasks), unique=True))
    variants = {t: draw(st.sampled_from(zoo.variants)) for t in tasks}
    names = {p.name for p in schema.per_model_params}
    weights = ({t: draw(st.floats(0, 2).map(lambda v: round(v, 3))) for t in tasks} if "weights" in names else None)
    densities = ({t: draw(st.one_of(st.none(), st.floats(0.05, 1).map(lambda v: round(v, 3)))) for t in tasks}
                 if "densities" in names else None)
    try:  # cross-parameter rules (e.g. breadcrumbs: gamma + density ≤ 1) belong to the spec's validation
        return MergeSpec.for_zoo(zoo, method, params, variants, weights, densities, tasks=tasks)
    except ConfigError:
        reject()


def test_valid_specs_round_trip_and_merge_to_finite_weights(zoo):
    @SETTINGS
    @given(specs(zoo))
    def check(spec):
        again, warnings = MergeSpec.from_query(spec.to_query(), zoo)
        assert not warnings and again.key() == spec.key()
        assert MergeSpec.from_json(spec.to_json()).key() == spec.key()
        assert MergeSpec.from_yaml(spec.to_yaml()).key() == spec.key()
        merged = merge_zoo(zoo, spec)
        models = merged if not spec.spec.is_static else [merged]  # task-routed (EMR): one model per task
        assert len(models) == (len(spec.tasks) if not spec.spec.is_static else 1)
        for model in models:
            assert set(model) == set(zoo.pretrained())
            assert all(torch.isfinite(v).all() for v in model.values())

    check()


QUERY_KEYS = ["method", "p.lambda", "p.density", "p.normalize", "p.seed", "p.trim_scope", "p.ratio", "tasks",
              "variants", "weights", "densities", "p.unknown"]
NASTY = st.one_of(st.text(max_size=40), st.sampled_from(
    ["nan", "inf", "-inf", "1e309", "-0", "0", "1e9", "-1", "true", "yes", "digits", "digits:sam", "digits:nan",
     "digits:1e400", ",,,", "digits:sam:extra", "symbols:plain,digits:xyz", "ties", "task_arithmetic", "-"]))


def test_any_link_gives_a_valid_merge_with_warnings(zoo):
    @SETTINGS
    @given(st.dictionaries(st.sampled_from(QUERY_KEYS), NASTY, max_size=8))
    def check(query):
        spec, warnings = MergeSpec.from_query(query, zoo)  # never raises
        assert all(isinstance(w, str) and w for w in warnings)
        assert spec.tasks and all(t.task in zoo.tasks and t.variant in zoo.variants for t in spec.tasks)
        for value in spec.params.values():
            if isinstance(value, float):
                assert math.isfinite(value)
        assert MergeSpec.from_query(spec.to_query(), zoo)[0].key() == spec.key()

    check()


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=12)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(
                                   ["method", "merge_method", "params", "parameters", "tasks", "models", "model",
                                    "base_model", "task", "variant", "checkpoint", "weight", "density", "lambda",
                                    "sha256", "dtype", "x"]), children, max_size=5)),
    max_leaves=20)


def _upload(data, zoo):
    """What the explorer's import does with an uploaded document."""
    cfg = from_mergekit_yaml(data) if is_mergekit_config(data) else MergeSpec.from_dict(data)
    return cfg.rebased(zoo)


def test_any_uploaded_document_is_a_spec_or_a_clean_error(zoo):
    base = json.loads(MergeSpec.default_for_zoo(zoo).to_json())

    @SETTINGS
    @given(st.one_of(JSONISH, st.fixed_dictionaries({}, optional={k: JSONISH for k in base}).map(
        lambda extra: {**base, **extra})))
    def check(data):
        try:
            spec, _ = _upload(data, zoo)
        except SammergeError as exc:
            assert str(exc)
            return
        assert all(t.task in zoo.tasks for t in spec.tasks)
        merged = merge_zoo(zoo, spec)
        assert all(torch.isfinite(v).all() for v in merged.values())

    check()
