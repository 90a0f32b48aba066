"""Soak: N sessions × M λ moves × K runs on one Streamlit server, optionally with CPU hogs beside it.

    python benchmarks/soak.py [ZOO_DIR] [--sessions 4] [--moves 6] [--runs 20] [--hogs 1] [--json FILE]
    python benchmarks/soak.py --startup 5 --hogs 2 --json FILE     # server start under load only
    python benchmarks/soak.py --startup 3 --fresh --json FILE      # a first start on a fresh machine: no zoo
                                                                    # installed, the app's default zoo

Every run starts the hogs (``while True: pass`` processes), then a fresh `streamlit run app.py` whose SIGUSR1
dumps all its threads to its log (faulthandler), then drives the sessions of benchmarks/sessions.py. For every
move it records the time to its result, what the page showed while waiting (slider value, running indicator,
estimate note, errors) and, once a move passes ``--slow-s``, the server's thread dump (at most one per
``--dump-every-s``: sessions stalled together share it). ``--startup K``: K launches, each timing the health
check and opening the explorer at once, recording what the page says until it is ready; with ``--fresh`` each
launch gets an empty ``SAMMERGE_HOME`` and no ``SAMMERGE_ZOO``, so it times what a new user waits for: installing
and opening the app's default zoo.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sammerge.webapp.browser import CHROMIUM, CHROMIUM_ARGS, PAGES, free_port, streamlit_server, zoo_or_demo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sessions import POLL_MS, own_values, run_sessions  # noqa: E402


@contextlib.contextmanager
def cpu_hogs(n: int):
    """``n`` busy processes (one core each) for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


class ThreadDumps:
    """SIGUSR1 to the server, its faulthandler output cut from the log; one dump per ``every_s`` (shared)."""

    def __init__(self, pid: int, log: Path, every_s: float) -> None:
        self.pid, self.log, self.every_s = pid, log, every_s
        self.dumps: list[dict] = []
        self._last = -1e9
        self._lock = asyncio.Lock()

    async def __call__(self) -> int | None:
        async with self._lock:
            if time.monotonic() - self._last < self.every_s and self.dumps:
                return len(self.dumps) - 1
            offset = self.log.stat().st_size
            try:
                os.kill(self.pid, signal.SIGUSR1)
            except ProcessLookupError:
                return None
            self._last = time.monotonic()
            await asyncio.sleep(1.0)
            text = self.log.read_bytes()[offset:].decode("utf-8", "replace")
            # the report keeps the busy threads' innermost frames; the whole dump stays beside the server's log
            raw = self.log.with_name(f"{self.log.stem}-dump{len(self.dumps) + 1}.txt")
            raw.write_text(text)
            self.dumps.append({"at": time.time(), "threads": [t for t in summarize_dump(text) if not idle(t)],
                               "file": str(raw)})
            return len(self.dumps) - 1


def summarize_dump(text: str, frames: int = 8) -> list[dict]:
    """Each thread of a faulthandler dump: its id and its innermost frames as ``file:line function``."""
    threads = []
    for block in re.split(r"\n(?=(?:Current thread|Thread) 0x)", text):
        head = re.match(r"(Current thread|Thread) (0x[0-9a-f]+)", block.strip())
        if not head:
            continue
        stack = [f"{Path(f).name}:{line} {fn}" for f, line, fn in
                 re.findall(r'File "([^"]+)", line (\d+) in (\S+)', block)]
        threads.append({"thread": head.group(2), "current": head.group(1).startswith("Current"),
                        "frames": stack[:frames]})
    return threads


IDLE_FRAMES = ("queue.py:", "selectors.py:", "_monitor.py:", "polling_path_watcher.py:", "thread.py:81 _worker")


def idle(thread: dict) -> bool:
    """A thread parked in a queue, a selector, a watcher or an idle pool worker (nothing of the server's work)."""
    top = thread["frames"][:2]
    return bool(top) and any(mark in frame for frame in top for mark in IDLE_FRAMES) and not thread["current"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def one_run(zoo: Path, args) -> dict:
    from playwright.async_api import async_playwright

    info: dict = {}
    with cpu_hogs(args.hogs), streamlit_server({"SAMMERGE_ZOO": str(zoo)}, info=info, thread_dumps=True,
                                               timeout=args.start_timeout_s) as url:
        dumps = ThreadDumps(info["pid"], Path(info["log"]), args.dump_every_s)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            t0 = time.perf_counter()
            sessions = await run_sessions(browser, url, args.sessions, args.moves, on_slow=dumps,
                                          slow_s=args.slow_s, move_timeout_s=args.timeout_s)
            wall = time.perf_counter() - t0
            await browser.close()
    return {"health_s": info.get("health_s"), "wall_s": wall, "load_average_1min": os.getloadavg()[0], "sessions": sessions, "dumps": dumps.dumps,
            "log": str(info["log"])}


def run_summary(run: dict, slow_s: float, timeout_s: float) -> dict:
    moves = [m for s in run["sessions"].values() for m in s["moves"]]
    times = [m["s"] if m["s"] is not None else timeout_s for m in moves]
    errors = [f"session {i}: {e}" for i, s in run["sessions"].items() for e in s["errors"]]
    return {"moves": len(moves), "median_s": statistics.median(times) if times else None,
            "p95_s": percentile(times, 0.95) if times else None, "max_s": max(times) if times else None,
            "over_slow": sum(t > slow_s for t in times), "not_shown": sum(m["s"] is None for m in moves),
            "wrong_values": sum(not own_values(s) for s in run["sessions"].values()), "errors": errors,
            "health_s": run["health_s"], "times_s": [round(t, 3) for t in times]}


async def startup_probe(zoo: Path | None, hogs: int, timeout_s: float) -> dict:
    """Launch under ``hogs``; time the health check; open the explorer as soon as the port answers and record what
    the page says (distinct texts, with when) until the explorer has rendered. ``zoo`` None: a fresh machine (an
    empty SAMMERGE_HOME, no SAMMERGE_ZOO or SAMMERGE_PRESET: the app opens its default zoo)."""
    import tempfile

    from playwright.async_api import async_playwright

    port = free_port()
    out: dict = {"hogs": hogs, "page": [], "fresh": zoo is None}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    fresh_home = None
    if zoo is None:
        fresh_home = tempfile.TemporaryDirectory(prefix="sammerge-fresh-")
        env = {k: v for k, v in env.items() if k not in ("SAMMERGE_ZOO", "SAMMERGE_PRESET")}
        env["SAMMERGE_HOME"] = fresh_home.name
    else:
        env["SAMMERGE_ZOO"] = str(zoo)
    root = Path(__file__).resolve().parents[1]
    with cpu_hogs(hogs):
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.address", "127.0.0.1", "--server.port", str(port),
                                 "--server.fileWatcherType", "none"], cwd=root, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import urllib.request
            url = f"http://127.0.0.1:{port}"
            while time.monotonic() - t0 < timeout_s:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            out["health_s"] = time.monotonic() - t0
                            break
                except OSError:
                    await asyncio.sleep(0.1)
            if "health_s" not in out:
                return out
            path, marker = PAGES["merge_explorer"]
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = await browser.new_page()
                await page.goto(f"{url}/{path}")
                while time.monotonic() - t0 < timeout_s:
                    main = page.locator("[data-testid=stMain]")  # the page's own area (not the sidebar's links)
                    text = (await (main.first.inner_text() if await main.count() else page.inner_text("body")))
                    text = text[:300].replace("\n", " ")
                    if not out["page"] or out["page"][-1]["text"] != text:
                        out["page"].append({"at_s": round(time.monotonic() - t0, 2), "text": text})
                    if re.search(marker, await page.inner_text("body")):
                        out["explorer_s"] = time.monotonic() - t0
                        break
                    await asyncio.sleep(0.5)
                await browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
            if fresh_home is not None:
                fresh_home.cleanup()
    return out


def pooled(rows: list[dict]) -> dict:
    """The row of every move of ``rows`` (runs' summaries) together."""
    times = [t for r in rows for t in r["times_s"]]
    return {"run": "all", "moves": len(times), "median_s": statistics.median(times),
            "p95_s": percentile(times, 0.95), "max_s": max(times), "over_slow": sum(r["over_slow"] for r in rows),
            "not_shown": sum(r["not_shown"] for r in rows), "wrong_values": sum(r["wrong_values"] for r in rows),
            "health_s": max(r["health_s"] for r in rows)}


def table(rows: list[dict]) -> str:
    lines = ["| run | moves | median | p95 | max | moves > 10 s | not shown in 60 s | sessions with wrong values | health |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        lines.append(f"| {r.get('run', i + 1)} | {r['moves']} | {r['median_s']:.2f} s | {r['p95_s']:.2f} s | "
                     f"{r['max_s']:.2f} s | {r['over_slow']} | {r['not_shown']} | {r['wrong_values']} | "
                     f"{r['health_s']:.1f} s |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo", nargs="?", default=None)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--moves", type=int, default=6)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--hogs", type=int, default=1, help="busy processes beside the server (one core each)")
    ap.add_argument("--slow-s", type=float, default=10.0, help="a move slower than this gets a thread dump")
    ap.add_argument("--timeout-s", type=float, default=60.0, help="a move not shown by then counts as this long")
    ap.add_argument("--dump-every-s", type=float, default=5.0)
    ap.add_argument("--start-timeout-s", type=float, default=120.0)
    ap.add_argument("--startup", type=int, default=0, help="only time K server starts (health, first page)")
    ap.add_argument("--fresh", action="store_true", help="with --startup: no zoo installed, the app's default zoo")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--beside", default="", help="what else kept the machine busy (recorded in the report), e.g. a "
                                                 "training run used as the CPU hog")
    args = ap.parse_args()
    if min(args.sessions, args.moves, args.runs) < 1 or args.hogs < 0:
        ap.error("--sessions, --moves and --runs must be ≥ 1, --hogs ≥ 0")
    if args.fresh and not args.startup:
        ap.error("--fresh goes with --startup")
    zoo = None if args.fresh else zoo_or_demo(args.zoo)
    report: dict = {"zoo": "the app's default (fresh machine)" if zoo is None else zoo.name, "cpus": os.cpu_count(), "hogs": args.hogs,
                    "harness": f"page read every {POLL_MS} ms (textContent)"}
    if args.beside:
        report["beside"] = args.beside
    if args.startup:
        probes = [asyncio.run(startup_probe(zoo, args.hogs, args.start_timeout_s)) for _ in range(args.startup)]
        report["startup"] = probes
        for p in probes:
            print(f"{args.hogs} hogs: health {p.get('health_s', float('nan')):.1f} s, explorer drawn "
                  f"{p.get('explorer_s', float('nan')):.1f} s; page said: "
                  + " → ".join(f"[{s['at_s']:.0f} s] {s['text'][:90]}" for s in p["page"]))
    else:
        report |= {"sessions": args.sessions, "moves": args.moves, "runs": []}
        rows = []
        for k in range(args.runs):
            run = asyncio.run(one_run(zoo, args))
            row = run_summary(run, args.slow_s, args.timeout_s) | {"run": k + 1}
            rows.append(row)
            report["runs"].append(run | {"summary": row})
            print(table([row]).splitlines()[-1], flush=True)
            for e in row["errors"]:
                print("   ", e, flush=True)
            if args.json:  # after every run: a long soak leaves its numbers even when stopped
                args.json.write_text(json.dumps(report, indent=2, default=str))
        total = pooled(rows)
        report["total"] = total
        report["table"] = table(rows + [total])
        print(report["table"])
    report["load_average_1min"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
