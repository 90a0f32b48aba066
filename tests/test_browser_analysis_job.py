"""Browser test: the whole-zoo analysis runs in the server's shared worker; the page that started it shows the result
when it ends, without a reload (the progress fragment polls only while the job runs), and the other page reads it."""
from __future__ import annotations

import shutil

import pytest

from sammerge.webapp.browser import chromium_available, chromium_page, open_page, streamlit_server

pytestmark = pytest.mark.browser


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium not installed (./dev test installs it)")
def test_analysis_job_result_appears_without_a_reload(tiny_zoo, tmp_path):
    from sammerge.analytics.report import load_analysis
    from sammerge.zoo import open_zoo

    zoo_dir = tmp_path / "tiny"
    shutil.copytree(tiny_zoo, zoo_dir, ignore=shutil.ignore_patterns("analysis"))
    env = {"SAMMERGE_ZOO": str(zoo_dir), "SAMMERGE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    with streamlit_server(env) as url, chromium_page() as page:
        open_page(page, url, "sharpness_and_landscape")
        page.get_by_text("Quick preview").first.click()
        page.get_by_role("button", name="Compute the analysis").click()
        page.get_by_role("button", name="Cancel").first.wait_for(timeout=60_000)  # drawn while the job runs
        # no reload: the progress fragment polls while the job runs, then reruns the page, which draws the analysis
        page.get_by_text("Reading:").first.wait_for(timeout=300_000)
        assert page.get_by_role("button", name="Cancel").count() == 0
        assert "Traceback" not in page.content()
        open_page(page, url, "interference")  # the other page reads the same stored analysis
        page.get_by_text("Reading:").first.wait_for(timeout=60_000)
        assert page.get_by_role("button", name="Compute the analysis").count() == 0
        assert "Traceback" not in page.content()
    analysis = load_analysis(open_zoo(zoo_dir))
    assert analysis is not None and analysis["settings"]["eig_iters"] == 8  # the quick settings chosen on page 2
