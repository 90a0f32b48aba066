"""Many users on one server: N Chromium sessions move their own λ sliders at the same time.

    python benchmarks/load.py [ZOO_DIR] [--sessions 8] [--moves 6] [--json FILE]

One `streamlit run app.py` on 127.0.0.1; N browser contexts (separate Streamlit sessions) open the merge
explorer, then all at once each presses ArrowRight on its global λ slider ``--moves`` times (session i starts
with i presses of ArrowLeft first, so every session walks its own λ values). Reported: errors (exceptions on
a page, timeouts), slider-to-number latency over all moves (median, p95), whether each session ends with its
own λ in its address and in its downloaded config, and the server's resident memory before, at the peak of,
and after the sessions (closed sessions must not keep memory growing).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

from sammerge.webapp.browser import LAMBDA_SLIDER, zoo_or_demo, CHROMIUM, CHROMIUM_ARGS, IDLE_JS, PAGES, streamlit_server

SLIDER = LAMBDA_SLIDER


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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


async def session(browser, url: str, index: int, moves: int, loaded: asyncio.Queue, start: asyncio.Event,
                  out: dict) -> None:
    import re

    context = await browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = await context.new_page()
    errors, times = [], []
    try:
        path, marker = PAGES["merge_explorer"]
        await page.goto(f"{url}/{path}")
        await page.get_by_text(re.compile(marker)).first.wait_for(timeout=300_000)
        await page.wait_for_function(f"() => {IDLE_JS}", timeout=300_000)
        slider = page.locator(SLIDER)
        # λ as the page shows it: under load the slider's value attribute can briefly read its minimum (0) while
        # the widget mounts (seen with 8 sessions on 2 cores), so read the result line instead
        shown = await page.get_by_text(re.compile(r"λ = -?[0-9.]+ ·")).first.text_content()
        lam = float(re.search(r"λ = (-?[0-9.]+) ·", shown).group(1))
        for _ in range(index % 5):  # a different starting λ per session (0.3, 0.25, …, 0.1)
            lam = round(lam - 0.05, 2)
            await slider.focus()
            await page.keyboard.press("ArrowLeft")
            await page.get_by_text(label(lam)).first.wait_for(timeout=120_000)
        await page.wait_for_function(f"() => {IDLE_JS}", timeout=120_000)
        loaded.put_nowait(index)
        await start.wait()
        for _ in range(moves):
            lam = round(lam + 0.05 * (1 + index % 2), 2)  # odd sessions take two steps per move
            await slider.focus()
            t0 = time.perf_counter()
            await page.keyboard.press("ArrowRight")
            if index % 2:
                await page.keyboard.press("ArrowRight")
            try:
                await page.get_by_text(label(lam)).first.wait_for(timeout=120_000)
                times.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"timeout waiting for {label(lam)}: {type(exc).__name__}")
            await page.wait_for_function(f"() => {IDLE_JS}", timeout=120_000)
        if await page.locator("[data-testid=stException]").count():
            errors.append("exception shown on the page")
        url_lambda = float(re.search(r"p\.lambda=([0-9.]+)", page.url).group(1))
        await page.get_by_role("tab", name="Downloads").click()
        async with page.expect_download(timeout=120_000) as info:
            await page.get_by_role("button", name="Config (JSON)").click()
        download = await info.value
        config = json.loads(Path(await download.path()).read_text())
        out[index] = {"expected_lambda": lam, "url_lambda": url_lambda, "export_lambda": config["params"]["lambda"],
                      "times_s": times, "errors": errors}
    except Exception as exc:  # noqa: BLE001
        out[index] = {"expected_lambda": None, "times_s": times, "errors": errors + [f"{type(exc).__name__}: {exc}"],
                      "page_at_failure": await page_state(page, index)}
        loaded.put_nowait(index)  # a session that failed to load does not hold the others back
    finally:
        await context.close()


async def run(url: str, sessions: int, moves: int, pid: int) -> dict:
    from playwright.async_api import async_playwright

    out: dict = {}
    memory = {"before_mb": rss_mb(pid)}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        start, loaded = asyncio.Event(), asyncio.Queue()
        tasks = [asyncio.create_task(session(browser, url, i, moves, loaded, start, out)) for i in range(sessions)]
        for _ in range(sessions):  # all sessions start moving together, once every page has loaded
            await loaded.get()
        start.set()
        t0 = time.perf_counter()
        peak = memory["before_mb"]
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.25)
        memory["peak_mb"] = peak
        memory["wall_s"] = time.perf_counter() - t0
        await browser.close()
    await asyncio.sleep(5)
    memory["after_mb"] = rss_mb(pid)
    return {"sessions": out, "memory": memory}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo", nargs="?", default=None)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--moves", type=int, default=6)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    zoo = zoo_or_demo(args.zoo)
    info: dict = {}
    with streamlit_server({"SAMMERGE_ZOO": str(zoo)}, info=info) as url:
        result = asyncio.run(run(url, args.sessions, args.moves, info["pid"]))
    sessions = result["sessions"]
    times = [t for s in sessions.values() for t in s["times_s"]]
    errors = [f"session {i}: {e}" for i, s in sessions.items() for e in s["errors"]]
    own = [i for i, s in sessions.items() if s.get("expected_lambda") is not None
           and abs(s["url_lambda"] - s["expected_lambda"]) < 1e-9 and abs(s["export_lambda"] - s["expected_lambda"]) < 1e-9]
    report = {"zoo": zoo.name, "sessions": args.sessions, "moves_per_session": args.moves, "errors": errors,
              "sessions_with_own_values": len(own), "latency": {
                  "moves": len(times), "median_ms": 1e3 * statistics.median(times) if times else None,
                  "p95_ms": 1e3 * sorted(times)[round(0.95 * (len(times) - 1))] if times else None},
              "memory": result["memory"], "per_session": sessions}
    m, lat = report["memory"], report["latency"]
    print(f"{args.sessions} sessions × {args.moves} moves on {zoo.name}: {len(errors)} errors; "
          f"{len(own)}/{args.sessions} ended with their own λ in the address and the export; "
          f"latency median {lat['median_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms over {lat['moves']} moves; "
          f"server memory {m['before_mb']:.0f} MB → peak {m['peak_mb']:.0f} MB → {m['after_mb']:.0f} MB after")
    for e in errors:
        print("  " + e)
    report["load_average_1min"] = os.getloadavg()[0]  # other work on the machine at the end
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if errors or len(own) != args.sessions else 0


if __name__ == "__main__":
    sys.exit(main())
