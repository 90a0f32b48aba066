"""Browser sessions that move the merge explorer's λ slider at the same time (shared by load.py and soak.py).

Session i opens the explorer in its own browser context (its own Streamlit session), walks to its own starting λ
(i % 5 presses of ArrowLeft), waits for every other session, then makes ``moves`` moves (odd sessions press twice
per move, so sessions interleave differently). A move is timed from the key press until the page's "Showing: …"
line describes the new λ; while it waits, what the page shows (slider value, running indicator, estimate note,
errors, spinners) is sampled every second, and past ``slow_s`` the ``on_slow`` callback runs once (the soak
harness dumps the server's threads there). Afterwards the session reads its λ from its address and from its
downloaded config (a session must end with its own values).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Awaitable, Callable

from sammerge.webapp.browser import IDLE_JS, LAMBDA_SLIDER, PAGES

# What the page shows right now, read in one go (nothing changes between the reads).
STATE_JS = f"""() => {{
  const texts = sel => Array.from(document.querySelectorAll(sel), e => e.innerText.slice(0, 160));
  const slider = document.querySelector('{LAMBDA_SLIDER}');
  const captions = texts('[data-testid=stCaptionContainer]');
  const showing = captions.find(t => t.startsWith('Showing:'));
  const m = showing && showing.match(/λ = (-?[0-9.]+) ·/);
  return {{slider: slider ? parseFloat(slider.getAttribute('value')) : null, showing: m ? parseFloat(m[1]) : null,
          idle: {IDLE_JS}, status_widget: !!document.querySelector('[data-testid=stStatusWidget]'),
          estimate: captions.some(t => t.includes('refining')),
          errors: texts('[data-testid=stException], [data-testid=stAlertContentError]'),
          spinners: texts('[data-testid=stSpinner], [data-testid=stProgress], [data-testid=stStatus]')}};
}}"""

# The harness reads the page every POLL_MS, with textContent (no layout). Polling every animation frame with
# innerText (each read forces a layout) in four pages at once cost the browsers CPU that the app then lacked on the
# same 2 cores; a real user's browser does neither. Resolution: a move is seen ≤ POLL_MS after it is drawn.
POLL_MS = 50

SHOWS_JS = """(lam) => Array.from(document.querySelectorAll('[data-testid=stCaptionContainer]'), e => e.textContent)
  .some(t => t.startsWith('Showing:') && (t.match(/λ = (-?[0-9.]+) ·/) || [])[1] !== undefined
             && Math.abs(parseFloat(t.match(/λ = (-?[0-9.]+) ·/)[1]) - lam) < 1e-9)"""


def label(lam: float) -> str:
    return f"λ = {lam:.2f}".rstrip("0").rstrip(".") + " ·"


async def page_state(page, index: int) -> dict:
    """What the page showed when a session failed: its address, visible text and a screenshot (for diagnosis)."""
    state: dict = {"url": page.url}
    try:
        state["text"] = (await page.inner_text("body", timeout=5_000))[-3000:]
        shot = Path(os.environ.get("SAMMERGE_LOAD_SHOTS", "/tmp")) / f"load-session-{index}.png"
        await page.screenshot(path=str(shot), full_page=True, timeout=10_000)
        state["screenshot"] = str(shot)
    except Exception as exc:  # noqa: BLE001
        state["unavailable"] = f"{type(exc).__name__}: {exc}"
    return state


async def wait_shown(page, lam: float, timeout_s: float, slow_s: float,
                     on_slow: Callable[[], Awaitable[str | None]] | None) -> dict:
    """Wait until the page shows ``lam``; the move's record: seconds (None: not within ``timeout_s``), the distinct
    page states seen while waiting (each with when it was first seen) and the thread dump taken past ``slow_s``."""
    t0 = time.perf_counter()
    seen: list[dict] = []
    record: dict = {"lambda": lam, "s": None, "seen": seen}
    while True:
        left = timeout_s - (time.perf_counter() - t0)
        if left <= 0:
            break
        try:
            await page.wait_for_function(SHOWS_JS, arg=lam, timeout=min(1000.0, 1e3 * left), polling=POLL_MS)
            record["s"] = time.perf_counter() - t0
            break
        except Exception:  # noqa: BLE001 - not yet: note what the page shows instead
            pass
        try:
            state = await page.evaluate(STATE_JS)
        except Exception as exc:  # noqa: BLE001 - a page mid-navigation
            state = {"unreadable": type(exc).__name__}
        if not seen or {k: v for k, v in seen[-1].items() if k != "at_s"} != state:
            seen.append({"at_s": round(time.perf_counter() - t0, 2), **state})
        if on_slow is not None and "dump" not in record and time.perf_counter() - t0 > slow_s:
            record["dump"] = await on_slow()
    return record


async def slider_value(slider) -> float | None:
    """The λ slider's value in the browser (None: unreadable, e.g. while it re-mounts)."""
    try:
        return float(await slider.get_attribute("value", timeout=2_000))
    except Exception:  # noqa: BLE001
        return None


async def drive_session(browser, url: str, index: int, moves: int, loaded: asyncio.Queue, start: asyncio.Event,
                        out: dict, on_slow=None, slow_s: float = 10.0, move_timeout_s: float = 120.0) -> None:
    """One session (module doc); ``out[index]``: its moves, errors, expected λ and the λ of its address and export."""
    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = await context.new_page()
    errors, records = [], []
    setup = []  # the slider's value in the browser right after each setup press (did the browser take it?)
    t_open = time.perf_counter()
    try:
        path, marker = PAGES["merge_explorer"]
        await page.goto(f"{url}/{path}")
        await page.get_by_text(re.compile(marker)).first.wait_for(timeout=300_000)
        await page.wait_for_function(f"() => {IDLE_JS}", timeout=300_000, polling=POLL_MS)
        first_page_s = time.perf_counter() - t_open
        slider = page.locator(LAMBDA_SLIDER)
        # λ as the page shows it: under load the slider's value attribute can briefly read its minimum (0) while
        # the widget mounts (seen with 8 sessions on 2 cores), so read the result line instead
        shown = await page.get_by_text(re.compile(r"λ = -?[0-9.]+ ·")).first.text_content()
        lam = float(re.search(r"λ = (-?[0-9.]+) ·", shown).group(1))
        for _ in range(index % 5):  # a different starting λ per session (0.3, 0.25, …, 0.1)
            lam = round(lam - 0.05, 2)
            await slider.focus()
            await page.keyboard.press("ArrowLeft")
            setup.append({"lambda": lam, "slider_after_press": await slider_value(slider)})
            await page.get_by_text(label(lam)).first.wait_for(timeout=120_000)
        await page.wait_for_function(f"() => {IDLE_JS}", timeout=120_000, polling=POLL_MS)
        loaded.put_nowait(index)
        await start.wait()
        for _ in range(moves):
            lam = round(lam + 0.05 * (1 + index % 2), 2)  # odd sessions take two steps per move
            await slider.focus()
            await page.keyboard.press("ArrowRight")
            if index % 2:
                await page.keyboard.press("ArrowRight")
            after_press = await slider_value(slider)
            record = await wait_shown(page, lam, move_timeout_s, slow_s, on_slow)
            record["slider_after_press"] = after_press
            records.append(record)
            if record["s"] is None:
                errors.append(f"{label(lam)} not shown within {move_timeout_s:g} s")
            await page.wait_for_function(f"() => {IDLE_JS}", timeout=120_000, polling=POLL_MS)
        if await page.locator("[data-testid=stException]").count():
            errors.append("exception shown on the page")
        url_lambda = float(re.search(r"p\.lambda=([0-9.]+)", page.url).group(1))
        await page.get_by_role("tab", name="Downloads").click()
        async with page.expect_download(timeout=120_000) as info:
            await page.get_by_role("button", name="Config (JSON)").click()
        download = await info.value
        config = json.loads(Path(await download.path()).read_text())
        out[index] = {"expected_lambda": lam, "url_lambda": url_lambda, "export_lambda": config["params"]["lambda"],
                      "first_page_s": first_page_s, "moves": records, "errors": errors, "setup_presses": setup}
    except Exception as exc:  # noqa: BLE001
        out[index] = {"expected_lambda": None, "moves": records, "errors": errors + [f"{type(exc).__name__}: {exc}"],
                      "page_at_failure": await page_state(page, index),
                      "setup_presses": setup}
        loaded.put_nowait(index)  # a session that failed to load does not hold the others back
    finally:
        await context.close()


def own_values(session: dict) -> bool:
    """Whether a session ended with its own λ in its address and in its downloaded config."""
    lam = session.get("expected_lambda")
    return lam is not None and abs(session["url_lambda"] - lam) < 1e-9 and abs(session["export_lambda"] - lam) < 1e-9


async def run_sessions(browser, url: str, sessions: int, moves: int, **kw) -> dict:
    """Every session at once (they start moving together once every page has loaded); {index: session record}."""
    out: dict = {}
    start, loaded = asyncio.Event(), asyncio.Queue()
    tasks = [asyncio.create_task(drive_session(browser, url, i, moves, loaded, start, out, **kw))
             for i in range(sessions)]
    for _ in range(sessions):
        await loaded.get()
    start.set()
    await asyncio.gather(*tasks)
    return out
