"""Slider-to-updated-number time of the merge explorer in a real browser (Debian's Chromium).

    python benchmarks/browser_latency.py [ZOO_DIR] [--moves 10]

Starts `streamlit run app.py` on the zoo (default: the cached demo zoo), focuses the global λ slider,
presses ArrowLeft and times until the results for the new λ are on screen; prints the median.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from sammerge.webapp.browser import chromium_page, open_page, streamlit_server, wait_idle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo", nargs="?", default=None)
    ap.add_argument("--moves", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.zoo is None:
        from sammerge.training.build import default_zoo_dir
        demos = sorted(default_zoo_dir().glob("demo-*/zoo.json"), key=lambda p: p.stat().st_mtime)
        if not demos:
            sys.exit("no demo zoo built yet: run ./dev app once, or pass a zoo directory")
        zoo = demos[-1].parent
    else:
        zoo = Path(args.zoo)
    with streamlit_server({"SAMMERGE_ZOO": str(zoo)}) as url, chromium_page() as page:
        open_page(page, url, "merge_explorer")
        slider = page.locator("[data-testid=stSlider] input[type=range]").first
        lam = float(slider.get_attribute("value"))
        times = []
        for _ in range(args.moves):
            lam = round(lam - 0.05, 2) if lam > 0.05 else round(lam + 0.05, 2)
            slider.focus()
            t0 = time.perf_counter()
            page.keyboard.press("ArrowLeft" if float(slider.get_attribute("value")) > lam else "ArrowRight")
            label = f"λ = {lam:.2f}".rstrip("0").rstrip(".") + " ·"
            page.get_by_text(label).first.wait_for(timeout=60_000)
            times.append(time.perf_counter() - t0)
            wait_idle(page)
    median = statistics.median(times)
    report = {"zoo": str(zoo), "moves": len(times), "median_s": median, "times_s": times}
    print(f"slider-to-updated-number on {zoo.name}: median {1000 * median:.0f} ms over {len(times)} moves "
          f"(min {1000 * min(times):.0f}, max {1000 * max(times):.0f})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
