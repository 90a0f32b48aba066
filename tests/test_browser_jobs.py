"""Browser test: the first-start build runs in the server's shared worker — a page change and a closed tab do not
stop or restart it, and a second session attaches to the same job."""
from __future__ import annotations

import pytest

from sammerge.jobs import list_records
from sammerge.webapp.browser import chromium_available, chromium_page, streamlit_server

pytestmark = pytest.mark.browser


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium not installed (./dev test installs it)")
def test_demo_build_survives_page_change_and_closed_tab(tmp_path):
    home = tmp_path / "home"
    env = {"SAMMERGE_PRESET": "tiny", "SAMMERGE_HOME": str(home), "SAMMERGE_ZOO": "", "OMP_NUM_THREADS": "1"}
    with streamlit_server(env) as url:
        with chromium_page() as first:
            first.goto(url)
            first.get_by_text("Building the tiny zoo").first.wait_for(timeout=90_000)
            first.goto(f"{url}/Merge_explorer")  # another page while the build runs
            first.get_by_text("Building the tiny zoo").first.wait_for(timeout=90_000)
        # the first tab is closed now; a new session opens the app
        with chromium_page() as second:
            second.goto(url)
            second.locator("[data-testid='stDataFrame']").first.wait_for(timeout=400_000)
            assert "Traceback" not in second.content()
    zoos = home / "zoos"
    built = [p for p in zoos.glob("tiny-*") if (p / "zoo.json").is_file()]
    assert len(built) == 1
    tasks = list_records(zoos)  # the worker's task records: one build for all sessions
    assert [t.status for t in tasks if t.kind == "task"] == ["done"]
    jobs = list_records(built[0])
    assert len(jobs) == 19 and all(j.attempts == 1 and j.runs == 1 for j in jobs)  # nothing restarted
