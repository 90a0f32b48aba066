"""Browser test: the merge explorer in Debian's Chromium — move a slider, see the accuracy change, time it,
download the config, and save a screenshot of every page."""
from __future__ import annotations

import json
import statistics
import time

import pytest

from sammerge.webapp.browser import (ARTIFACTS, IDLE_JS, LAMBDA_SLIDER, PAGES, chromium_available, chromium_page, metric_values, open_page,
                     screenshot, streamlit_server, wait_idle)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not chromium_available(), reason="Debian chromium not installed (./dev test installs it)")]


def _lambda_slider(page):
    return page.locator(LAMBDA_SLIDER)


# The global λ slider's value and the λ of the "Showing: …" line, once that line describes the slider's value and the
# run that drew it has ended (checked in one go in the page, so nothing can change between the reads).
SETTLED_JS = f"""() => {{
  const el = document.querySelector('{LAMBDA_SLIDER}');
  if (!el) return null;
  const slider = el.getAttribute('value');
  const line = Array.from(document.querySelectorAll('[data-testid=stCaptionContainer]'), e => e.innerText)
      .find(t => t.startsWith('Showing:'));
  const described = line && line.match(/λ = ([0-9.]+) ·/);
  if (!described || Math.abs(parseFloat(described[1]) - parseFloat(slider)) > 1e-9 || !({IDLE_JS})) return null;
  return {{slider: parseFloat(slider), described: parseFloat(described[1]), line}};
}}"""


def _settled(page) -> dict:
    """Wait until the results on screen are those of the slider's value and nothing is being redrawn."""
    return page.wait_for_function(SETTLED_JS, timeout=120_000).json_value()


def _download_config(page) -> dict:
    page.get_by_role("tab", name="Downloads").click()
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name="Config (JSON)").click()
    return json.loads(open(info.value.path()).read())


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

        # the config download parses and records the λ on screen
        shown = _settled(page)
        cfg = _download_config(page)
        assert cfg["method"] == "task_arithmetic"
        assert shown["slider"] == pytest.approx(1.7) and cfg["params"]["lambda"] == pytest.approx(1.7), (shown, cfg)
        assert {t["task"] for t in cfg["tasks"]} == {"digits", "latin_upper", "symbols"}

        # six quick moves, no waiting between them: each key press reruns the fragment and cuts the run before it
        # short; once the page has settled, the slider, the "Showing" line and the downloaded config agree
        _lambda_slider(page).focus()
        for _ in range(6):
            page.keyboard.press("ArrowLeft")
        shown = _settled(page)
        cfg = _download_config(page)
        assert shown["slider"] == pytest.approx(1.4), shown
        assert cfg["params"]["lambda"] == pytest.approx(shown["slider"]), (shown, cfg["params"])
        assert "Traceback" not in page.content()
        screenshot(page, shots, "merge_explorer")

        # every other page renders without a traceback
        for name in PAGES:
            if name == "merge_explorer":
                continue
            open_page(page, url, name)
            assert "Traceback" not in page.content()
            screenshot(page, shots, name)
