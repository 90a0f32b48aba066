"""AppTest: the home page renders a zoo's table; bad zoo paths give a friendly error, not a traceback."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


def _home(monkeypatch, zoo_dir: str) -> AppTest:
    monkeypatch.setenv("SAMMERGE_ZOO", zoo_dir)
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    return at.run()


def test_home_shows_zoo_table(monkeypatch, tiny_zoo):
    at = _home(monkeypatch, str(tiny_zoo))
    assert not at.exception, at.exception
    assert not at.error
    frame = at.dataframe[0].value
    assert set(frame["task"]) == {"digits", "latin_upper", "symbols"}
    assert set(frame["variant"]) == {"plain", "sam"}
    from sammerge.zoo import open_zoo
    zoo = open_zoo(tiny_zoo)
    row = frame[(frame["task"] == "digits") & (frame["variant"] == "sam")].iloc[0]
    assert row["fine-tuned test"] == pytest.approx(zoo.manifest.checkpoint("digits", "sam").accuracy.test)
    labels = [m.label for m in at.metric]
    assert any("Pretrained" in label for label in labels)


def test_home_bad_directory_is_friendly(monkeypatch, tmp_path):
    at = _home(monkeypatch, str(tmp_path / "no-such-zoo"))
    assert not at.exception
    assert at.error and "not found" in at.error[0].value
