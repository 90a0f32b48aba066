"""Browser test: a server with the compiled forward (SAMMERGE_COMPILE=1) says so on the page and shows the numbers an
eager evaluation in this process gives for the same merge."""
from __future__ import annotations

import re
import time

import pytest

from sammerge.webapp.browser import (LAMBDA_SLIDER, chromium_available, chromium_page, metric_values, open_page,
                                     streamlit_server, wait_idle)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not chromium_available(), reason="Debian chromium not installed (./dev test installs it)")]


def _press(page, key: str, label: str) -> None:
    page.locator(LAMBDA_SLIDER).focus()
    page.keyboard.press(key)
    page.get_by_text(label).first.wait_for(timeout=120_000)
    wait_idle(page)


def test_compiled_server_shows_the_eager_numbers(tiny_zoo, tmp_path):
    from sammerge.evaluation.compiled import compiler_missing
    from sammerge.explorer.service import Explorer
    from sammerge.merging import LAMBDA
    from sammerge.zoo import open_zoo

    if compiler_missing():
        pytest.skip(compiler_missing())
    env = {"SAMMERGE_ZOO": str(tiny_zoo), "SAMMERGE_COMPILE": "1", "SAMMERGE_COMPILE_CACHE": str(tmp_path / "packages")}
    with streamlit_server(env) as url, chromium_page() as page:
        open_page(page, url, "merge_explorer")
        note = page.get_by_text(re.compile(r"Engine: "))
        deadline = time.monotonic() + 300
        while "compiled by AOTInductor" not in note.first.text_content():  # λ 0.25 ↔ 0.3 redraws the note
            assert "while AOTInductor compiles" in note.first.text_content(), note.first.text_content()
            assert time.monotonic() < deadline, "the compiled forward was not ready within 300 s"
            _press(page, "ArrowLeft", "λ = 0.25 ·")
            _press(page, "ArrowRight", "λ = 0.3 ·")
            page.wait_for_timeout(500)
        _press(page, "ArrowRight", "λ = 0.35 ·")  # a merge not evaluated before: through the compiled forward
        shown = metric_values(page)[:2]
    assert list((tmp_path / "packages").glob("*.pt2")), "the server's package was not built in its cache"

    ex = Explorer(open_zoo(tiny_zoo))  # eager, in this process
    look = ex.first_look(ex.default_spec().with_params(**{LAMBDA: 0.35}), allow_estimate=False)
    assert shown == [f"{look.summary.mean:.1%}", f"{look.summary.normalized:.1%}"], shown
