"""Browser test: the merge explorer in Debian's Chromium — move a slider, see the accuracy change, time it,
download the config, and save a screenshot of every page."""
from __future__ import annotations

import json
import statistics
import time

import pytest

from browser import (ARTIFACTS, PAGES, chromium_available, chromium_page, metric_values, open_page, screenshot,
                     streamlit_server, wait_idle)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not chromium_available(), reason="Debian chromium not installed (./dev test installs it)")]


def _lambda_slider(page):
    return page.locator("[data-testid=stSlider] input[type=range]").first


def _move(page, key: str, expect_text: str) -> float:
    """Press a key on the global λ slider; seconds until the results for the new λ are on screen."""
    slider = _lambda_slider(page)
    slider.focus()
    start = time.perf_counter()
    page.keyboard.press(key)
    page.get_by_text(expect_text).first.wait_for(timeout=60_000)
    return time.perf_counter() - start


def test_explorer_in_chromium(tiny_zoo):
    shots = ARTIFACTS / "screenshots"
    with streamlit_server({"SAMMERGE_ZOO": str(tiny_zoo)}) as url, chromium_page() as page:
        open_page(page, url, "merge_explorer")
        assert _lambda_slider(page).get_attribute("value") == "0.3"
        before = metric_values(page)

        # slider → accuracy: End moves λ to the top of its range
        _move(page, "End", "λ = 2 ·")
        wait_idle(page)
        after = metric_values(page)
        assert after != before, (before, after)
        assert "p.lambda=2" in page.url

        # slider-to-updated-number time, median over several single steps
        times = []
        for i in range(6):
            times.append(_move(page, "ArrowLeft", f"λ = {2 - 0.05 * (i + 1):.2f}".rstrip("0").rstrip(".") + " ·"))
            wait_idle(page)
        median = statistics.median(times)
        print(f"slider-to-updated-number: median {median * 1000:.0f} ms over {len(times)} moves "
              f"({', '.join(f'{t * 1000:.0f}' for t in times)} ms)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "browser_timing.json").write_text(json.dumps({
            "what": "merge explorer: ArrowLeft on the global λ slider → merged results for the new λ on screen",
            "zoo": "tiny", "moves": len(times), "median_s": round(median, 4),
            "times_s": [round(t, 4) for t in times]}, indent=2))
        assert median < 10

        # the config download parses and records the current λ
        page.get_by_role("tab", name="Downloads").click()
        with page.expect_download(timeout=60_000) as info:
            page.get_by_role("button", name="Config (JSON)").click()
        cfg = json.loads(open(info.value.path()).read())
        assert cfg["method"] == "task_arithmetic"
        assert cfg["params"]["lambda"] == pytest.approx(1.7)
        assert {t["task"] for t in cfg["tasks"]} == {"digits", "latin_upper", "symbols"}
        assert "Traceback" not in page.content()
        screenshot(page, shots, "merge_explorer")

        # every other page renders without a traceback
        for name in PAGES:
            if name == "merge_explorer":
                continue
            open_page(page, url, name)
            assert "Traceback" not in page.content()
            screenshot(page, shots, name)
