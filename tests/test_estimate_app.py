"""AppTest: on a slow encoder the merge explorer shows an estimate with its interval first ("≈ … — refining…"),
then the exact number; the image budget and the exact override are on the page."""
from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from sammerge.evaluation.estimate import wilson_interval
from sammerge.evaluation.evaluator import Evaluator
from sammerge.merging import MergeSpec, merge_zoo
from test_app_explorer import open_export
from test_estimate_explorer import K, gate, plain_counts, subset, vit_zoo  # noqa: F401 — fixtures

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "1_Merge_explorer.py")


def open_page(monkeypatch, zoo) -> AppTest:
    monkeypatch.setenv("SAMMERGE_ZOO", str(zoo.path))
    monkeypatch.setenv("SAMMERGE_LATENCY_TARGET_S", "0")  # every exact evaluation counts as slow
    monkeypatch.setenv("SAMMERGE_ESTIMATE_N", str(K))
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(PAGE, default_timeout=120).run()


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def refining(at) -> list[str]:
    return [c.value for c in at.caption if "refining…" in c.value]


def assert_clean(at):
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def until_refined(at, timeout: float = 300) -> AppTest:
    """Rerun the page (as its polling fragment does) until no estimate is left on it."""
    deadline = time.monotonic() + timeout
    while refining(at) and time.monotonic() < deadline:
        time.sleep(0.3)
        at.run()
    return at


def test_estimate_then_exact_number(monkeypatch, vit_zoo, gate):
    zoo = vit_zoo
    spec = MergeSpec.default_for_zoo(zoo)
    merged = merge_zoo(zoo, spec)
    counts = plain_counts(zoo, merged, subset(zoo, K))
    iv = wilson_interval(sum(counts.values()), K * len(counts))

    at = open_page(monkeypatch, zoo)
    assert_clean(at)
    note = refining(at)
    assert note, [c.value for c in at.caption]
    assert note[0].startswith(f"Mean accuracy ≈ {iv.estimate:.1%} [{iv.low:.1%}, {iv.high:.1%}] "
                              f"({K} images/task, 95% CI) — refining…")
    assert "ESTIMATE" in note[0]
    assert metric(at, "Mean accuracy") == f"≈ {iv.estimate:.1%}"
    assert all(m.value.startswith("≈ ") for m in at.metric), [m.value for m in at.metric]
    assert not [m.value for m in at.markdown if m.value.startswith("**Reading:**")]  # no verdict from an estimate
    open_export(at, "Downloads", config=True)
    config = next(c.value for c in at.code if '"notes"' in c.value)  # "Show the configuration": the export
    assert "ESTIMATE" in config and "val_accuracy_ci95_low" in config

    gate.set()  # the background refinement may go on
    at = until_refined(at)
    assert_clean(at)
    assert not refining(at)
    full = plain_counts(zoo, merged, subset(zoo))
    assert metric(at, "Mean accuracy") == f"{sum(full.values()) / (24 * len(full)):.1%}"
    assert [m.value for m in at.markdown if m.value.startswith("**Reading:**")]
    config = next(c.value for c in at.code if '"notes"' in c.value)  # (the tab and the JSON stay open)
    assert "ESTIMATE" not in config and "ci95" not in config and '"val_n": 24.0' in config


def test_budget_and_exact_override(monkeypatch, vit_zoo):
    zoo = vit_zoo
    at = open_page(monkeypatch, zoo)
    at.toggle(key="ex_exact").set_value(True).run()  # always exact: no estimate step
    assert_clean(at)
    assert not refining(at)
    spec = MergeSpec.default_for_zoo(zoo)
    merged = merge_zoo(zoo, spec)
    full = plain_counts(zoo, merged, subset(zoo))
    assert metric(at, "Mean accuracy") == f"{sum(full.values()) / (24 * len(full)):.1%}"

    at.number_input(key="ex_budget").set_value(12).run()  # a 12-image budget per task, evaluated exactly
    assert_clean(at)
    want = Evaluator.from_zoo(zoo, split="val", n_per_task=12, seed=0, device="cpu").evaluate(merged)
    assert metric(at, "Mean accuracy") == f"{sum(r.accuracy for r in want.values()) / len(want):.1%}"
    assert any("12 images per task" in c.value for c in at.caption)
