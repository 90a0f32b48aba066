"""Browser test: on a slow encoder the merge explorer first shows an estimate with its interval ("≈ … — refining…"),
then replaces it by the exact number on its own (the page polls only while a refinement is pending).

The refinement is held back in the server until the test has seen the estimate (tests/server_gate): without the gate a
tiny zoo's refinement can finish before the browser paints the estimate, and the test waited for a state the page had
already left (a CI failure on a loaded machine)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from sammerge.evaluation.estimate import wilson_interval
from sammerge.merging import MergeSpec, merge_zoo
from sammerge.webapp.browser import chromium_available, chromium_page, metric_values, open_page, streamlit_server
from test_estimate_explorer import K, plain_counts, subset, vit_zoo  # noqa: F401 — vit_zoo is a fixture

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not chromium_available(), reason="Debian chromium not installed (./dev test installs it)")]


GATE_DIR = Path(__file__).resolve().parent / "server_gate"


def test_estimate_is_refined_without_a_click(vit_zoo, tmp_path):
    zoo = vit_zoo
    spec = MergeSpec.default_for_zoo(zoo)
    merged = merge_zoo(zoo, spec)
    counts = plain_counts(zoo, merged, subset(zoo, K))
    iv = wilson_interval(sum(counts.values()), K * len(counts))
    full = plain_counts(zoo, merged, subset(zoo))
    exact = f"{sum(full.values()) / (24 * len(full)):.1%}"
    gate = tmp_path / "refine"  # the server's refinement waits for this file (tests/server_gate/sitecustomize.py)
    env = {"SAMMERGE_ZOO": str(zoo.path), "SAMMERGE_LATENCY_TARGET_S": "0", "SAMMERGE_ESTIMATE_N": str(K),
           "SAMMERGE_TEST_REFINE_GATE": str(gate),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(GATE_DIR), os.environ.get("PYTHONPATH")]))}
    with streamlit_server(env) as url, chromium_page() as page:
        sent: list[float] = []  # the browser's messages to the server (a fragment's timed rerun is one)
        page.on("websocket", lambda ws: ws.on("framesent", lambda _frame: sent.append(time.monotonic())))
        page.goto(f"{url}/Merge_explorer")
        estimate = f"Mean accuracy ≈ {iv.estimate:.1%} [{iv.low:.1%}, {iv.high:.1%}] ({K} images/task, 95% CI) — refining…"
        page.get_by_text(estimate, exact=False).first.wait_for(timeout=180_000)
        page.wait_for_timeout(1000)  # the gate holds: still the estimate a second later
        assert page.get_by_text(estimate, exact=False).count() > 0
        gate.touch()
        # no click, no key: the polling fragment redraws the page once the background evaluation is done
        page.get_by_text(re.compile("refining…")).first.wait_for(state="detached", timeout=180_000)
        page.wait_for_function("() => !document.querySelector('[data-stale=true]')", timeout=60_000)
        values = metric_values(page)
        assert values[0] == exact, values
        assert not any(v.startswith("≈") for v in values), values
        # polling stops with the estimate: nothing more asked of the server while the page is left alone
        quiet_from = time.monotonic()
        page.wait_for_timeout(3500)
        assert not [t for t in sent if t > quiet_from], len(sent)
        open_page(page, url, "merge_explorer")  # the whole page is there and clean
        assert page.locator("[data-testid=stException]").count() == 0
        assert page.get_by_text("refining…").count() == 0
