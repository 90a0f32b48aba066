"""AppTest: the zoo builder page builds a zoo in the shared worker and compares two zoos."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "6_Zoo_builder.py")


def open_builder(monkeypatch, home, roots=()):
    monkeypatch.setenv("SAMMERGE_HOME", str(home))
    monkeypatch.setenv("SAMMERGE_ZOO_ROOTS", ":".join(str(r) for r in roots))
    monkeypatch.delenv("SAMMERGE_ZOO", raising=False)
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
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
