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

from sammerge.webapp.browser import CHROMIUM, CHROMIUM_ARGS, streamlit_server, zoo_or_demo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sessions import own_values, run_sessions  # noqa: E402  (benchmarks/sessions.py: the sessions themselves)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(url: str, sessions: int, moves: int, pid: int) -> dict:
    from playwright.async_api import async_playwright

    memory = {"before_mb": rss_mb(pid)}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        work = asyncio.create_task(run_sessions(browser, url, sessions, moves))
        t0 = time.perf_counter()
        peak = memory["before_mb"]
        while not work.done():
            peak = max(peak, rss_mb(pid))
            await asyncio.sleep(0.25)
        out = work.result()
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
    for s in sessions.values():
        s["times_s"] = [m["s"] for m in s.pop("moves") if m["s"] is not None]
    times = [t for s in sessions.values() for t in s["times_s"]]
    errors = [f"session {i}: {e}" for i, s in sessions.items() for e in s["errors"]]
    own = [i for i, s in sessions.items() if own_values(s)]
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
