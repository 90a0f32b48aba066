"""AppTest: the whole-zoo analysis of pages 2 and 3 runs as one job of the server's shared worker.

The worker has one slot; a test job holding it (released by an Event) keeps the analysis job queued while the pages
are inspected, so the checks do not depend on how fast the analysis runs.
"""
from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGE2, PAGE3 = "pages/2_Sharpness_and_landscape.py", "pages/3_Interference.py"


@pytest.fixture
def bare_zoo(tiny_zoo, tmp_path) -> Path:
    dest = tmp_path / "tiny"
    shutil.copytree(tiny_zoo, dest, ignore=shutil.ignore_patterns("analysis"))
    return dest


def run_page(monkeypatch, zoo_dir, page: str) -> AppTest:
    monkeypatch.setenv("SAMMERGE_ZOO", str(zoo_dir))
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(str(ROOT / page), default_timeout=300).run()


def texts(at) -> list[str]:
    return [e.value for kind in ("markdown", "info", "warning", "error", "caption", "text") for e in at.get(kind)]


def assert_clean(at):
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert not any("Traceback" in t for t in texts(at))


def analysis_jobs_of(zoo_dir):
    from sammerge.jobs.worker import get_worker
    from sammerge.webapp.analysis_jobs import _zoo_prefix
    return [t for t in get_worker().tasks() if t.key.startswith(_zoo_prefix(zoo_dir))]


@pytest.fixture
def hold_worker():
    """Occupy the shared worker's slot until the test calls the returned release()."""
    from sammerge.jobs.worker import get_worker
    gate = threading.Event()
    blocker, _ = get_worker().submit(f"test-hold:{uuid.uuid4()}", lambda progress, cancel: gate.wait(120),
                                     label="test: holding the worker")
    yield gate.set
    gate.set()
    blocker.wait(120)


def test_two_sessions_share_one_analysis_job(monkeypatch, bare_zoo, hold_worker):
    from sammerge.analytics.report import load_analysis
    from sammerge.zoo import open_zoo

    zoo = open_zoo(bare_zoo)
    at = run_page(monkeypatch, bare_zoo, PAGE2)
    assert_clean(at)
    at.checkbox(key="sh_quick").check().run()
    at.select_slider(key="sh_n_images_quick").set_value(16).run()  # the image budget of the sharpness batch
    at.button(key="sh_compute").click().run()
    assert_clean(at)
    jobs = analysis_jobs_of(bare_zoo)
    assert len(jobs) == 1 and jobs[0].status == "queued"
    job = jobs[0]
    assert not [b for b in at.button if b.key == "sh_compute"]  # no second start while it runs
    assert [b for b in at.button if b.key.startswith("sh_cancel")]

    # a second session, on the other page: it shows the same job, offers no start button, starts nothing
    other = run_page(monkeypatch, bare_zoo, PAGE3)
    assert_clean(other)
    assert not [b for b in other.button if b.key == "if_compute"]
    assert [b for b in other.button if b.key == f"if_cancel-{job.id}"]
    assert analysis_jobs_of(bare_zoo) == [job]

    hold_worker()
    job.wait(600)
    assert job.status == "done"
    analysis = load_analysis(zoo)
    assert analysis is not None
    assert analysis["settings"]["n_images"] == 16 and analysis["settings"]["eig_iters"] == 8  # budget + quick
    assert all(b["n"] == 16 for b in analysis["batches"].values())
    assert all(r["n_images"] == 16 for r in analysis["sharpness"])
    at.run()  # page 2 now shows the stored analysis
    assert_clean(at)
    frame = at.dataframe[0].value.set_index("task")
    for row in analysis["sharpness"]:
        assert frame.loc[row["task"], {"plain": "plain", "sam": "SAM"}[row["variant"]]] == pytest.approx(
            row["top_eigenvalue"])
    other.run()
    assert_clean(other)
    assert any(t.startswith("**Reading:**") for t in texts(other))
    assert analysis_jobs_of(bare_zoo) == [job]


def test_cancelled_analysis_saves_nothing(monkeypatch, bare_zoo, hold_worker):
    from sammerge.analytics.report import analysis_path
    from sammerge.webapp.analysis_jobs import submit_analysis
    from sammerge.zoo import open_zoo

    # started by another browser session (AppTest gives every test session one id): this page says so
    submit_analysis(open_zoo(bare_zoo), quick=True, owner="another browser session")
    at = run_page(monkeypatch, bare_zoo, PAGE3)
    assert_clean(at)
    assert any("Another session" in i.value for i in at.info)
    (job,) = analysis_jobs_of(bare_zoo)
    at.button(key=f"if_cancel-{job.id}").click().run()
    hold_worker()
    with pytest.raises(Exception, match="cancelled"):
        job.wait(600)
    assert job.status == "cancelled"
    assert not analysis_path(open_zoo(bare_zoo)).exists()
    at.run()
    assert not at.exception and not at.error
    assert not any("Traceback" in t for t in texts(at))
    assert any("cancelled" in w.value for w in at.warning)
    assert [b for b in at.button if b.key == "if_compute"]  # it can be started again


def test_failed_analysis_shows_its_message_and_keeps_the_stored_one(monkeypatch, bare_zoo):
    from sammerge.analytics.report import analysis_path, analyze_zoo
    from sammerge.webapp.analysis_jobs import submit_analysis
    from sammerge.zoo import open_zoo

    zoo = open_zoo(bare_zoo)
    job = submit_analysis(zoo, n_images=1)  # analyze_zoo refuses a batch of one image
    with pytest.raises(Exception, match="n_images must be >= 2"):
        job.wait(600)
    at = run_page(monkeypatch, bare_zoo, PAGE2)
    assert not at.exception
    assert [e.value for e in at.error] == ["The analysis failed: analyze: n_images must be >= 2, got 1"]
    assert not any("Traceback" in t for t in texts(at))

    # with an analysis on disk, a failing job leaves its file byte for byte
    analyze_zoo(zoo, quick=True, n_images=8)
    before = analysis_path(zoo).read_bytes()
    job = submit_analysis(zoo, n_images=1)
    with pytest.raises(Exception):
        job.wait(600)
    assert job.status == "failed" and analysis_path(zoo).read_bytes() == before
