"""AppTest: the merge explorer shows exactly what the library computes, for every control it offers."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "1_Merge_explorer.py")


@pytest.fixture(scope="module")
def lib(tiny_zoo):
    """The library's own view of the tiny zoo: merge functions + an evaluator on the app's images."""
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.zoo import open_zoo

    zoo = open_zoo(tiny_zoo)
    evaluator = Evaluator.from_zoo(zoo, split="val", n_per_task=256, seed=0)
    return zoo, evaluator


def expected(lib, method="task_arithmetic", variants=None, tasks=None, **params):
    """Per-task val accuracy of a merge computed directly with the library (not through the app facade)."""
    from sammerge.merging import get_method

    zoo, evaluator = lib
    tasks = tasks or zoo.tasks
    variants = variants or {t: "sam" for t in tasks}
    tvs = [zoo.task_vector(t, variants[t]) for t in tasks]
    merged = get_method(method)(zoo.pretrained(), tvs, task_ids=[f"{t}/{variants[t]}" for t in tasks], **params)
    return {t: r.accuracy for t, r in evaluator.evaluate(merged).items()}


def open_page(monkeypatch, zoo_dir, query=None) -> AppTest:
    monkeypatch.setenv("SAMMERGE_ZOO", str(zoo_dir))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["ex_view"] = "Table"  # show the per-task table (the default view is the bar chart)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def open_export(at, tab: str, config: bool = False) -> AppTest:
    """Open one of the export tabs (only the open one is drawn), and the configuration's JSON under Downloads."""
    at.session_state["ex_export_tab"] = tab
    at.session_state["ex_config_open"] = config
    return at.run()


def shown(at) -> dict[str, float]:
    frame = at.dataframe[0].value
    return dict(zip(frame["task"], frame["merged"]))


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def assert_clean(at):
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_explorer_renders_and_lambda_slider_matches_library(monkeypatch, tiny_zoo, lib):
    at = open_page(monkeypatch, tiny_zoo)
    assert_clean(at)
    # controls generated from the schema: global λ + one λ_t per task, include + variant per task
    keys = {s.key for s in at.slider}
    assert {"ex_p_task_arithmetic_lambda", "ex_w_digits", "ex_w_latin_upper", "ex_w_symbols"} <= keys
    assert at.toggle(key="ex_p_task_arithmetic_normalize").value is False
    before = shown(at)
    assert before == expected(lib, **{"lambda": 0.3})

    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.8).run()
    assert_clean(at)
    after = shown(at)
    want = expected(lib, **{"lambda": 0.8})
    assert after == want
    assert after != before
    mean = sum(want.values()) / len(want)
    assert metric(at, "Mean accuracy") == f"{mean:.1%}"
    assert at.query_params["p.lambda"] == ["0.8"] or at.query_params["p.lambda"] == "0.8"

    # a per-task coefficient
    at.slider(key="ex_w_digits").set_value(0.5).run()
    assert shown(at) == expected(lib, **{"lambda": 0.8, "weights": [0.5, 1.0, 1.0]})


def test_switching_sam_and_plain(monkeypatch, tiny_zoo, lib):
    at = open_page(monkeypatch, tiny_zoo)
    sam = shown(at)
    at.button(key="ex_all_plain").click().run()
    assert_clean(at)
    plain = shown(at)
    assert plain == expected(lib, variants={t: "plain" for t in lib[0].tasks}, **{"lambda": 0.3})
    assert plain != sam
    # the side-by-side columns do not depend on the current choice
    frame = at.dataframe[0].value
    assert list(frame["merged, all SAM"]) == list(sam.values())
    # one task back to SAM: a mixed merge
    at.radio(key="ex_var_digits").set_value("sam").run()
    mixed = {t: "plain" for t in lib[0].tasks} | {"digits": "sam"}
    assert shown(at) == expected(lib, variants=mixed, **{"lambda": 0.3})
    # excluding a task removes it from the merge (it is still measured)
    at.checkbox(key="ex_inc_symbols").uncheck().run()
    assert shown(at) == expected(lib, variants=mixed, tasks=["digits", "latin_upper"], **{"lambda": 0.3})
    assert "tasks" in at.query_params


def test_method_controls_come_from_the_schema(monkeypatch, tiny_zoo, lib):
    at = open_page(monkeypatch, tiny_zoo)
    at.selectbox(key="ex_method").set_value("ties").run()
    assert_clean(at)
    assert at.slider(key="ex_p_ties_density").value == pytest.approx(0.2)
    assert at.slider(key="ex_p_ties_lambda").value == pytest.approx(0.3)  # λ carried over
    assert at.radio(key="ex_p_ties_trim_scope").value == "tensor"
    at.slider(key="ex_p_ties_density").set_value(0.5).run()
    assert shown(at) == expected(lib, "ties", density=0.5, **{"lambda": 0.3})
    # optional per-task densities (the schema's per-model `densities`)
    at.toggle(key="ex_dens_on").set_value(True).run()
    at.slider(key="ex_d_digits").set_value(0.9).run()
    assert_clean(at)
    assert shown(at) == expected(lib, "ties", density=0.5, densities=[0.9, 0.5, 0.5], **{"lambda": 0.3})
    assert "densities" in at.query_params
    at.selectbox(key="ex_method").set_value("model_stock").run()
    assert_clean(at)
    assert not [s for s in at.slider if s.key.startswith("ex_p_")]
    assert shown(at) == expected(lib, "model_stock")


def test_export_reimports_to_same_state(monkeypatch, tiny_zoo, lib):
    import json

    at = open_page(monkeypatch, tiny_zoo)
    at.selectbox(key="ex_method").set_value("dare_ties").run()
    at.slider(key="ex_p_dare_ties_density").set_value(0.7).run()
    at.radio(key="ex_var_latin_upper").set_value("plain").run()
    at.slider(key="ex_w_symbols").set_value(1.5).run()
    at.checkbox(key="ex_inc_digits").uncheck().run()
    assert_clean(at)
    exported = shown(at)
    assert not [c for c in at.code if c.language == "json"] and not at.download_button  # closed tabs are not drawn
    open_export(at, "Downloads", config=True)
    assert {b.key for b in at.download_button} >= {"ex_dl_json", "ex_dl_yaml", "ex_dl_st", "ex_dl_card"}
    text = next(c.value for c in at.code if c.language == "json")
    cfg = json.loads(text)
    assert cfg["method"] == "dare_ties" and cfg["params"]["density"] == 0.7
    assert [t["task"] for t in cfg["tasks"]] == ["latin_upper", "symbols"]
    assert cfg["results"]["symbols"]["val_accuracy"] == pytest.approx(exported["symbols"], abs=1e-6)
    assert all(len(t["sha256"]) == 64 for t in cfg["tasks"])

    # disturb the controls, then import the saved config
    at.selectbox(key="ex_method").set_value("task_arithmetic").run()
    at.button(key="ex_all_sam").click().run()
    at.checkbox(key="ex_inc_digits").check().run()
    assert shown(at) != exported
    open_export(at, "Import a configuration")
    at.text_area(key="ex_import_text").input(text).run()
    at.button(key="ex_import").click().run()
    assert_clean(at)
    assert at.selectbox(key="ex_method").value == "dare_ties"
    assert at.slider(key="ex_p_dare_ties_density").value == pytest.approx(0.7)
    assert at.slider(key="ex_w_symbols").value == pytest.approx(1.5)
    assert at.radio(key="ex_var_latin_upper").value == "plain"
    assert at.checkbox(key="ex_inc_digits").value is False
    assert shown(at) == exported
    open_export(at, "Downloads", config=True)
    assert json.loads(next(c.value for c in at.code if c.language == "json"))["tasks"] == cfg["tasks"]


def test_open_export_tab_survives_streamlit_forgetting_it(monkeypatch, tiny_zoo):
    """The soak once saw the Downloads tab selected in the browser but empty: the server had lost the tab set's
    state and drew the first tab's content. A run that finds the tab set's key gone restores the last tab chosen."""
    at = open_page(monkeypatch, tiny_zoo)
    at.session_state["ex_export_tab_v"] = "Downloads"  # what the tab set's on_change recorded when it was clicked
    at.session_state["ex_config_open_v"] = True
    for key in ("ex_export_tab", "ex_config_open"):
        if key in at.session_state:
            del at.session_state[key]
    at.run()
    assert_clean(at)
    assert {b.key for b in at.download_button} >= {"ex_dl_json", "ex_dl_yaml"}
    assert [c for c in at.code if c.language == "json"]  # the expander was restored open too


def test_bad_import_is_a_friendly_error(monkeypatch, tiny_zoo):
    at = open_export(open_page(monkeypatch, tiny_zoo), "Import a configuration")
    at.text_area(key="ex_import_text").input('{"method": "nope", "tasks": []}').run()
    at.button(key="ex_import").click().run()
    assert not at.exception
    assert at.error and "import" in at.error[0].value


def test_link_reopens_the_same_merge(monkeypatch, tiny_zoo, lib):
    at = open_page(monkeypatch, tiny_zoo)
    at.selectbox(key="ex_method").set_value("ties").run()
    at.slider(key="ex_p_ties_lambda").set_value(0.65).run()
    at.radio(key="ex_var_symbols").set_value("plain").run()
    query = {k: (v[0] if isinstance(v, list) else v) for k, v in dict(at.query_params).items()}
    state = shown(at)

    fresh = open_page(monkeypatch, tiny_zoo, query)
    assert_clean(fresh)
    assert fresh.selectbox(key="ex_method").value == "ties"
    assert fresh.slider(key="ex_p_ties_lambda").value == pytest.approx(0.65)
    assert fresh.radio(key="ex_var_symbols").value == "plain"
    assert shown(fresh) == state

    bad = open_page(monkeypatch, tiny_zoo, {"method": "ties", "p.density": "7", "variants": "digits:xyz"})
    assert_clean(bad)
    assert len(bad.warning) >= 2
    assert bad.slider(key="ex_p_ties_density").value == pytest.approx(0.2)


def test_best_lambda_button(monkeypatch, tiny_zoo, lib):
    from sammerge.evaluation.search import sweep_shared_lambda

    zoo, evaluator = lib
    at = open_page(monkeypatch, tiny_zoo)
    at.button(key="ex_best").click().run()
    assert_clean(at)
    tvs = [zoo.task_vector(t, "sam") for t in zoo.tasks]
    sweep = sweep_shared_lambda(evaluator, "task_arithmetic", zoo.pretrained(), tvs, {"normalize": False},
                                task_ids=[f"{t}/sam" for t in zoo.tasks])
    assert at.slider(key="ex_p_task_arithmetic_lambda").value == pytest.approx(sweep.best_lambda)
    assert shown(at) == expected(lib, **{"lambda": sweep.best_lambda})
    assert any("best shared λ" in s.value for s in at.success)


def test_state_survives_a_visit_to_another_page(monkeypatch, tiny_zoo, lib):
    monkeypatch.setenv("SAMMERGE_ZOO", str(tiny_zoo))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/1_Merge_explorer.py").run()
    assert_clean(at)
    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.6).run()
    at.radio(key="ex_var_digits").set_value("plain").run()
    at.switch_page("pages/3_Interference.py").run()
    assert not at.exception
    at.switch_page("pages/1_Merge_explorer.py").run()
    assert_clean(at)
    assert at.slider(key="ex_p_task_arithmetic_lambda").value == pytest.approx(0.6)
    assert at.radio(key="ex_var_digits").value == "plain"


def test_a_full_run_redraws_the_controls_of_the_merge_it_shows(monkeypatch, tiny_zoo, lib):
    """The lost sessions of benchmarks/soak.py, deterministically: Streamlit dropped a session's widget values while
    its refinement poll (a run_every fragment) reran, and the full run the poll asked for drew the controls at their
    defaults (λ at its minimum, every task unticked) beside the merge still in the session. Here the session keeps
    its merge and page but no widget value (a fresh client sends none): the controls must come back as that merge."""
    at = open_page(monkeypatch, tiny_zoo)
    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.7).run()
    at.radio(key="ex_var_digits").set_value("plain").run()
    assert_clean(at)
    kept = {k: at.session_state[k] for k in ("_page", "ex_zoo", "ex_state", "ex_view", "ex_budget_v", "ex_exact_v")}
    assert kept["ex_state"].lam == pytest.approx(0.7)

    dropped = AppTest.from_file(PAGE, default_timeout=120)
    for k, v in kept.items():
        dropped.session_state[k] = v
    dropped.run()
    assert_clean(dropped)
    assert dropped.slider(key="ex_p_task_arithmetic_lambda").value == pytest.approx(0.7)
    assert dropped.radio(key="ex_var_digits").value == "plain"
    assert all(dropped.checkbox(key=f"ex_inc_{t}").value for t in ("digits", "latin_upper", "symbols"))
    variants = {"digits": "plain", "latin_upper": "sam", "symbols": "sam"}
    assert shown(dropped) == expected(lib, variants=variants, **{"lambda": 0.7})
    # and the slider answers a key press from there (a session stuck at the minimum could not move left)
    dropped.slider(key="ex_p_task_arithmetic_lambda").set_value(0.65).run()
    assert shown(dropped) == expected(lib, variants=variants, **{"lambda": 0.65})


def test_a_run_cut_short_in_the_results_has_drawn_every_control(monkeypatch, tiny_zoo, lib):
    """A run that a newer move ends early (give_way, inside the results) must already have drawn the controls: a run
    that ended without them let Streamlit forget their values, and the browser sent them back at their defaults
    (another method, λ at its minimum, every task unticked — benchmarks/soak.py)."""
    import streamlit as st

    import sammerge.webapp.explorer_panels as panels_module

    at = open_page(monkeypatch, tiny_zoo)
    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.7).run()
    monkeypatch.setattr(panels_module, "give_way", st.stop)  # every run ends at the results' first give_way
    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.75).run()
    assert not at.exception
    assert at.slider(key="ex_p_task_arithmetic_lambda").value == pytest.approx(0.75)
    assert at.selectbox(key="ex_method").value == "task_arithmetic"
    assert all(at.checkbox(key=f"ex_inc_{t}").value for t in ("digits", "latin_upper", "symbols"))
    assert at.query_params["p.lambda"] in (["0.75"], "0.75")  # the address too
    assert metric(at, "Mean accuracy") == f"{sum(expected(lib, **{'lambda': 0.75}).values()) / 3:.1%}"


# -- the facade without Streamlit ----------------------------------------------------------------------------

def test_spec_round_trips_for_every_method(tiny_zoo):
    from sammerge.explorer.service import method_choices
    from sammerge.merging import MergeSpec
    from sammerge.zoo import open_zoo

    zoo = open_zoo(tiny_zoo)
    for method in method_choices():
        state = MergeSpec.default_for_zoo(zoo).with_method(method).with_variants("plain", zoo)
        weights = {"digits": 0.45} if state.has_weights else None
        state = MergeSpec.for_zoo(zoo, method, state.params, {"digits": "plain", "symbols": "sam"}, weights)
        back, warnings = MergeSpec.from_query(state.to_query(), zoo)
        assert not warnings, method
        assert back.key() == state.key()
        restored, warnings = MergeSpec.from_json(state.to_json()).rebased(zoo)
        assert not warnings
        assert restored.method_kwargs == state.method_kwargs
        assert restored.task_names == ["digits", "symbols"]
        assert restored.variants == {"digits": "plain", "symbols": "sam"}


def test_sam_vs_plain_sentence_follows_the_numbers():
    from sammerge.explorer.figures import sam_vs_plain_sentence

    worse = sam_vs_plain_sentence({"plain": {"normalized": 0.80, "mean": 0.7}, "sam": {"normalized": 0.75, "mean": 0.65}})
    assert "does **not** beat" in worse and "5.0 points" in worse
    better = sam_vs_plain_sentence({"plain": {"normalized": 0.70, "mean": 0.6}, "sam": {"normalized": 0.78, "mean": 0.7}})
    assert "merges better" in better and "8.0 points" in better
    # the shipped demo's case: more normalized accuracy from weaker individual models, less absolute accuracy
    mixed = sam_vs_plain_sentence({"plain": {"normalized": 0.842, "mean": 0.352}, "sam": {"normalized": 0.850, "mean": 0.320}})
    assert "merges better" not in mixed and "**lower** in absolute accuracy" in mixed and "3.2 points" in mixed


def test_png_export_when_kaleido_is_installed():
    from sammerge.explorer.exports import figure_png, png_available

    if not png_available():
        pytest.skip("kaleido not installed: charts export as HTML (and PNG from the browser's chart toolbar)")
    import plotly.graph_objects as go

    assert figure_png(go.Figure(go.Bar(x=[1, 2], y=[3, 4])))[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_evaluation_error_keeps_the_controls(monkeypatch, tiny_zoo, lib):
    """An error while evaluating (soak: a NameError from a compile racing a forward) is shown in place of the
    numbers; the λ slider stays, so the next move recovers without reloading the page."""
    from sammerge.explorer.service import Explorer

    at = open_page(monkeypatch, tiny_zoo)
    assert_clean(at)
    real = Explorer.first_look

    def failing(self, *a, **k):
        raise NameError("module is not installed as a submodule")

    monkeypatch.setattr(Explorer, "first_look", failing)
    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.6).run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["merge: unexpected error (NameError: module is not installed as a submodule)"]
    assert "ex_p_task_arithmetic_lambda" in {s.key for s in at.slider}
    monkeypatch.setattr(Explorer, "first_look", real)
    at.slider(key="ex_p_task_arithmetic_lambda").set_value(0.7).run()
    assert_clean(at)
    assert shown(at) == expected(lib, **{"lambda": 0.7})
