"""Helpers for browser tests: a real `streamlit run app.py` server and Debian's Chromium via Playwright."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the source checkout (app.py, pages/)
CHROMIUM = os.environ.get("SAMMERGE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("SAMMERGE_ARTIFACTS", ROOT / "artifacts"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# `python -m streamlit` with faulthandler on SIGUSR1: `kill -USR1 PID` writes every thread's stack to the log
_STREAMLIT_WITH_DUMPS = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
                         "sys.argv[0] = 'streamlit'; from streamlit.web.cli import main; main(prog_name='streamlit')")


@contextlib.contextmanager
def streamlit_server(env_extra: dict[str, str], timeout: float = 120.0, info: dict | None = None,
                     script: str = "app.py", thread_dumps: bool = False):
    """Start `streamlit run app.py` (or another ``script``, relative to the checkout) on 127.0.0.1; yield its URL;
    stop it afterwards. ``info`` (optional) receives the server's ``pid``, ``log`` path and ``health_s`` (seconds
    from launch to its first healthy /_stcore/health); ``thread_dumps``: SIGUSR1 dumps its threads to the log."""
    port = free_port()
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    log_path = ARTIFACTS / f"streamlit-{port}.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    launch = ["-c", _STREAMLIT_WITH_DUMPS] if thread_dumps else ["-m", "streamlit"]
    with open(log_path, "w") as log:
        launched = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, *launch, "run", script, "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        if info is not None:
            info.update(pid=proc.pid, log=log_path)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                        if resp.status == 200:
                            if info is not None:
                                info["health_s"] = time.monotonic() - launched
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"streamlit did not start; log: {log_path.read_text()[-2000:]}")
                time.sleep(0.25)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def chromium_page(viewport=(1400, 1000)):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]},
                                          accept_downloads=True)
            yield context.new_page()
        finally:
            browser.close()


# The merge explorer's global λ slider, by its label: sliders mount one by one after a run's deltas arrive, so "the
# first slider on the page" can briefly be a per-task λ_t slider.
LAMBDA_SLIDER = '[data-testid=stSlider] input[type=range][aria-label^="Global λ"]'


def zoo_or_demo(path: str | None) -> Path:
    """A benchmark's zoo: the given directory, or the demo zoo (installed from the shipped one on first use)."""
    if path is None:
        from sammerge.training.build import ensure_zoo
        return ensure_zoo("demo").path
    return Path(path)


def chromium_available() -> bool:
    return Path(CHROMIUM).is_file()


# -- page helpers (shared by the browser tests and scripts/screenshots.py) ---------------------------------
PAGES = {  # screenshot name → (URL path, regex of text at the END of the page: shows it has fully rendered)
    "home": ("", r"Next:"),
    "merge_explorer": ("Merge_explorer", r"Import a configuration"),
    "sharpness_and_landscape": ("Sharpness_and_landscape", r"Around one checkpoint"),
    "interference": ("Interference", r"Weight disentanglement error|sammerge analyze"),
    "paper_table": ("Paper_table", r"Compute the table|Protocol:"),
}


# A JavaScript condition, true when no script run is under way: from a run's start until its end Streamlit marks
# every element that the run has not redrawn yet with data-stale="true". The status widget alone is no such signal:
# it shows only once a run has lasted a while (the merge explorer's fragment runs end before it ever does).
IDLE_JS = "!document.querySelector('[data-stale=true], [data-testid=stStatusWidget]')"


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished running the script: no element awaits a redraw, no status widget.

    It cannot see a rerun the browser has not requested yet (a slider sends its value a moment after a key press):
    first wait for something on the page that only the new run can draw, then for this."""
    page.wait_for_function(f"() => {IDLE_JS}", timeout=timeout_ms)


def open_page(page, url: str, name: str, timeout_ms: int = 180_000, query: str = "") -> None:
    import re

    path, marker = PAGES[name]
    page.goto(f"{url}/{path}" + (f"?{query}" if query else ""))
    page.get_by_text(re.compile(marker)).first.wait_for(timeout=timeout_ms)
    wait_idle(page, timeout_ms)


def screenshot(page, out_dir: Path, name: str, max_height: int = 9000) -> Path:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport to its height first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    size = page.viewport_size
    height = page.evaluate(
        "() => Math.max(document.body.scrollHeight, ...Array.from(document.querySelectorAll("
        "'[data-testid=stMain], [data-testid=stAppViewContainer], [data-testid=stSidebarContent]'), "
        "e => e.scrollHeight))")
    page.set_viewport_size({"width": size["width"], "height": int(min(max(height, size["height"]), max_height))})
    page.wait_for_timeout(800)  # let charts re-layout to the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
    return path


def metric_values(page) -> list[str]:
    return page.locator("[data-testid=stMetricValue]").all_inner_texts()
