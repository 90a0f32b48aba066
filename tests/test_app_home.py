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


def test_first_start_builds_the_builtin_zoo(monkeypatch, tmp_path):
    """A fresh machine: no zoo anywhere → the home page builds the preset's zoo (with progress), caches it on
    disk, and shows its table; the second start opens the cache without rebuilding."""
    monkeypatch.delenv("SAMMERGE_ZOO", raising=False)
    monkeypatch.setenv("SAMMERGE_PRESET", "tiny")
    monkeypatch.setenv("SAMMERGE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    assert not at.exception, at.exception
    assert not at.error
    built = list((tmp_path / "home" / "zoos").glob("tiny-*/zoo.json"))
    assert len(built) == 1
    assert at.status and "tiny zoo ready" in at.status[0].label
    frame = at.dataframe[0].value
    assert set(frame["task"]) == {"digits", "latin_upper", "symbols"}
    mtime = built[0].stat().st_mtime
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not again.exception and not again.status  # opened from the cache: no build
    assert built[0].stat().st_mtime == mtime
