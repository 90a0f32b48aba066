"""Browser test: the real app in Debian's Chromium shows the zoo table (screenshot saved as an artifact)."""
from __future__ import annotations

import pytest

from sammerge.webapp.browser import ARTIFACTS, chromium_available, chromium_page, streamlit_server

pytestmark = pytest.mark.browser


@pytest.mark.skipif(not chromium_available(), reason="Debian chromium not installed (./dev test installs it)")
def test_home_page_in_chromium(tiny_zoo):
    with streamlit_server({"SAMMERGE_ZOO": str(tiny_zoo)}) as url, chromium_page() as page:
        page.goto(url)
        page.get_by_text("Every checkpoint").wait_for(timeout=90_000)
        page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=60_000)
        page.get_by_text("Pretrained + heads, mean test accuracy").wait_for(timeout=30_000)
        (ARTIFACTS / "screenshots").mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "screenshots" / "home.png"), full_page=True)
        assert "Traceback" not in page.content()
