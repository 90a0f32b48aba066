"""README screenshots of every page of the explorer, taken in Debian's Chromium.

    python scripts/screenshots.py [ZOO_DIR | --demo] [--out assets/screenshots] [--no-analyze] [--skip-paper-table]

Uses ZOO_DIR, else the zoo the app opens by default (the shipped EfficientNet-Lite0 zoo, installed into
~/.cache/sammerge/zoos or $SAMMERGE_HOME/zoos on first use); ``--demo``: the glyph demo zoo (installed likewise).
Computes the zoo's analysis first if it is missing (so the sharpness and interference pages have content),
starts `streamlit run app.py`, clicks the on-demand "Compute" buttons and saves one PNG per page.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from sammerge.webapp.browser import chromium_available, chromium_page, open_page, screenshot, streamlit_server, wait_idle


def find_zoo(arg: str | None, demo: bool) -> Path:
    from sammerge.shipped import ensure_lite0_zoo, lite0_shipped
    from sammerge.training.build import default_zoo_dir, ensure_zoo

    if arg:
        return Path(arg)
    if demo or not lite0_shipped():
        return Path(ensure_zoo("demo").path)
    return Path(ensure_lite0_zoo(default_zoo_dir()).path)


CHARTS = "document.querySelectorAll('[data-testid=stPlotlyChart]').length"


def click(page, name: str, timeout_ms: int = 600_000, new_chart: bool = True, wait_text: str | None = None) -> None:
    """Click a button and wait until its result is on screen (one more chart, or ``wait_text``), then until idle."""
    button = page.get_by_role("button", name=name)
    try:
        button.first.wait_for(timeout=30_000)
    except Exception:  # noqa: BLE001 - not on this page (e.g. already computed)
        return
    before = page.evaluate(f"() => {CHARTS}")
    button.first.click()
    if wait_text:
        page.get_by_text(wait_text).first.wait_for(timeout=timeout_ms)
    elif new_chart:
        page.wait_for_function(f"() => {CHARTS} > {before}", timeout=timeout_ms)
    else:
        time.sleep(1.0)
    wait_idle(page, timeout_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", nargs="?", help="zoo directory (default: the app's default zoo)")
    ap.add_argument("--demo", action="store_true", help="the glyph demo zoo instead of the app's default")
    ap.add_argument("--out", default=str(ROOT / "assets" / "screenshots"))
    ap.add_argument("--no-analyze", action="store_true", help="do not compute a missing analysis first")
    ap.add_argument("--skip-paper-table", action="store_true", help="do not compute the paper table")
    args = ap.parse_args()
    if not chromium_available():
        sys.exit("Debian's chromium is not installed (apt-get install chromium)")
    zoo_dir = find_zoo(args.zoo, args.demo)
    out = Path(args.out)
    print(f"zoo: {zoo_dir}")
    if not args.no_analyze:
        from sammerge.analytics.report import analyze_zoo, load_analysis
        from sammerge.zoo import open_zoo

        zoo = open_zoo(zoo_dir)
        if load_analysis(zoo) is None:
            print("computing the analysis (once; stored next to the zoo)…")
            analyze_zoo(zoo, progress=lambda done, total, stage="": print(f"  {stage} {done}/{total}", flush=True))

    with streamlit_server({"SAMMERGE_ZOO": str(zoo_dir)}, timeout=300) as url, \
            chromium_page(viewport=(1440, 1000)) as page:
        open_page(page, url, "home")
        print(screenshot(page, out, "home"))

        open_page(page, url, "merge_explorer")
        click(page, "Compute the λ sweep", wait_text="Best shared λ on validation —")
        print(screenshot(page, out, "merge_explorer"))

        open_page(page, url, "sharpness_and_landscape")
        click(page, "Compute the curves")
        click(page, "Compute the planes", wait_text="where task-arithmetic merges lie")
        print(screenshot(page, out, "sharpness_and_landscape"))

        open_page(page, url, "interference")
        print(screenshot(page, out, "interference"))

        open_page(page, url, "paper_table")
        if not args.skip_paper_table:
            click(page, "Compute the table", timeout_ms=1_800_000, wait_text="Protocol:")
        print(screenshot(page, out, "paper_table"))


if __name__ == "__main__":
    main()
