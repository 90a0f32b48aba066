"""Bad input in the merge explorer: a clear message on the page, the last good state kept, never a traceback."""
from __future__ import annotations

import json

import pytest

from test_app_explorer import assert_clean, lib, metric, open_export, open_page, shown  # noqa: F401 (lib is a fixture)


def warnings_of(at) -> list[str]:
    return [w.value for w in at.warning]


@pytest.mark.parametrize("query, expect", [
    ({"method": "no_such_method"}, "unknown merge method"),
    ({"method": "task_arithmetic", "p.lambda": "nan"}, "must be finite"),
    ({"method": "task_arithmetic", "p.lambda": "inf"}, "must be finite"),
    ({"method": "task_arithmetic", "tasks": "digits,not_a_task"}, "unknown task"),
    ({"method": "ties", "p.density": "0"}, "outside (0, 1]"),
    ({"method": "ties", "tasks": "digits", "weights": "digits:nan"}, "must be finite"),
    ({"method": "dare_ties", "p.seed": "abc"}, "seed"),
])
def test_bad_link_is_named_and_the_page_still_works(monkeypatch, tiny_zoo, query, expect):
    at = open_page(monkeypatch, tiny_zoo, query)
    assert_clean(at)
    assert any(expect in w for w in warnings_of(at)), warnings_of(at)
    assert shown(at)  # results for a valid merge are on screen
    assert "%" in metric(at, "Mean accuracy")


def test_huge_lambda_in_a_link_is_clamped_and_says_so(monkeypatch, tiny_zoo, lib):
    from test_app_explorer import expected

    at = open_page(monkeypatch, tiny_zoo, {"method": "task_arithmetic", "p.lambda": "1e9"})
    assert_clean(at)
    slider = at.slider(key="ex_p_task_arithmetic_lambda")
    assert any("1e+09 is outside" in w and f"set to {slider.max:g}" in w for w in warnings_of(at)), warnings_of(at)
    # what is on screen is what was computed, and what the address and the export carry
    assert shown(at) == pytest.approx(expected(lib, "task_arithmetic", **{"lambda": slider.max}))
    q = at.query_params["p.lambda"]
    assert float(q[0] if isinstance(q, list) else q) == pytest.approx(slider.max)


def test_bad_config_uploads_keep_the_last_good_state(monkeypatch, tiny_zoo):
    at = open_page(monkeypatch, tiny_zoo)
    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.6).run()
    before = shown(at)
    open_export(at, "Import a configuration")
    bad_inputs = [
        "method: [unclosed",                                   # not YAML
        '{"method": "task_arithmetic", "params": {"lambda": NaN}, "tasks": [{"task": "digits", "variant": "sam"}]}',
        json.dumps({"method": "ties", "params": {"density": 0}, "tasks": [{"task": "digits", "variant": "sam"}]}),
        json.dumps({"method": "task_arithmetic", "tasks": [{"task": "nope", "variant": "sam"}]}),
        json.dumps(["not", "a", "mapping"]),
        "merge_method: ties\nmodels: 7\n",                      # mergekit-looking, malformed
    ]
    for text in bad_inputs:
        at.text_area(key="ex_import_text").input(text).run()
        at.button(key="ex_import").click().run()
        assert not at.exception, (text, at.exception)
        errors = [e.value for e in at.error]
        assert errors and errors[0].startswith("import:"), (text, errors)
        assert at.slider(key="ex_p_task_arithmetic_lambda").value == pytest.approx(0.6)
        assert shown(at) == before


def test_imported_lambda_outside_the_slider_is_not_silently_changed(monkeypatch, tiny_zoo):
    from sammerge.merging import MergeSpec
    from sammerge.zoo import open_zoo

    at = open_page(monkeypatch, tiny_zoo)
    cfg = MergeSpec.default_for_zoo(open_zoo(tiny_zoo)).with_params(**{"lambda": 1.5}).to_json()
    open_export(at, "Import a configuration")
    at.text_area(key="ex_import_text").input(cfg).run()
    at.button(key="ex_import").click().run()
    assert_clean(at)
    slider = at.slider(key="ex_p_task_arithmetic_lambda")
    if slider.max >= 1.5:
        assert slider.value == pytest.approx(1.5)
    else:
        assert any("1.5 is outside" in w for w in warnings_of(at)), warnings_of(at)


def test_a_directory_that_is_not_a_zoo(monkeypatch, tmp_path):
    (tmp_path / "zoo.json").write_text("{not json")
    at = open_page(monkeypatch, tmp_path)
    assert not at.exception
    assert at.error and "zoo.json" in at.error[0].value


def test_controls_that_make_no_valid_merge_say_why_and_stay_usable(monkeypatch, tiny_zoo):
    at = open_page(monkeypatch, tiny_zoo)
    at.selectbox(key="ex_method").set_value("weight_average").run()
    for t in ("digits", "latin_upper", "symbols"):
        at.slider(key=f"ex_w_{t}").set_value(0.0).run()
    assert not at.exception
    assert at.error and "sum to 0" in at.error[0].value
    at.slider(key="ex_w_digits").set_value(1.0).run()  # the controls are still there: fix it
    assert_clean(at)
    assert shown(at)


def test_per_layer_coefficients_from_a_link_are_kept_and_can_be_dropped(monkeypatch, tiny_zoo, lib):
    from sammerge.merging import MergeSpec, merge_zoo
    from sammerge.zoo import open_zoo

    zoo, evaluator = lib
    spec = MergeSpec.default_for_zoo(open_zoo(tiny_zoo))
    groups = ["stem", "layer1.0"]
    with_layers = spec.evolve(tasks=[t.model_copy(update={"layer_weights": {g: 0.5 for g in groups}}) if i == 0 else t
                                     for i, t in enumerate(spec.tasks)])
    at = open_page(monkeypatch, tiny_zoo, with_layers.to_query())
    assert_clean(at)
    want = {t: r.accuracy for t, r in evaluator.evaluate(merge_zoo(zoo, with_layers)).items()}
    assert shown(at) == want
    assert any("per-layer" in i.value for i in at.info)
    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.5).run()  # another control: the layers stay
    assert shown(at) == {t: r.accuracy for t, r in
                         evaluator.evaluate(merge_zoo(zoo, with_layers.with_params(**{"lambda": 0.5}))).items()}
    at.button(key="ex_drop_layers_btn").click().run()
    assert_clean(at)
    assert not any("per-layer" in i.value for i in at.info)
    assert shown(at) == {t: r.accuracy for t, r in
                         evaluator.evaluate(merge_zoo(zoo, spec.with_params(**{"lambda": 0.5}))).items()}
