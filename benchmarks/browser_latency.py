"""Slider-to-updated-number time of the merge explorer in a real browser (Debian's Chromium).

    python benchmarks/browser_latency.py [ZOO_DIR] [--moves 20] [--rounds 2] [--json FILE]
    python benchmarks/browser_latency.py --modes default --methods task_arithmetic,tsv_m,iso_c --json FILE

Starts `streamlit run app.py` on the zoo (default: the demo zoo), focuses the global λ slider and presses
ArrowRight ``--moves`` times; each press asks for a λ never shown before (0.35, 0.40, …). A move is timed from
the key press until the result line for the new λ is on screen; after it the user looks for 400 ms. Servers:
  default       the app as it starts here: on fewer than 4 cores it merges and evaluates the next slider steps'
                own merges in the background while the user looks (SAMMERGE_PREFETCH=light), on 4 or more cores
                their all-plain / all-SAM twins too (full);
  back-to-back  the same, but the next key press comes as soon as the page is idle (no time to look);
  off           SAMMERGE_PREFETCH=off: every move merges and evaluates on demand;
  full          SAMMERGE_PREFETCH=full on this machine;
  floor         benchmarks/streamlit_floor_app.py: the same slider and result line in a fragment that does no work —
                what Streamlit and Chromium alone take per move on this machine.
``--methods``: the same moves for each merge method (the explorer opened with ``?method=NAME``), in the same run; the
report's ``by_method`` holds each method's numbers and their ratio to the first method's. Before the timed moves,
untimed ones (which, for a method merged by its direction, also compute that direction once) wait until the page says how the server evaluates: the compiled forward once
its background compile is done (SAMMERGE_COMPILE=0 keeps it eager). For comparison, the engine alone (merge +
evaluation of the same merges and their plain/SAM twins, in this process, as the app runs it, no cache) is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from sammerge.webapp.browser import LAMBDA_SLIDER, zoo_or_demo, chromium_page, open_page, streamlit_server, wait_idle

SLIDER = LAMBDA_SLIDER


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def stats(times: list[float]) -> dict:
    return {"moves": len(times), "median_ms": 1e3 * statistics.median(times), "p95_ms": 1e3 * percentile(times, 0.95),
            "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times), "times_ms": [round(1e3 * t, 1) for t in times]}


# mode: (SAMMERGE_PREFETCH for the server or None for its default, pause after each move in ms, the floor page)
MODES = {"default": (None, 400, False), "back-to-back": (None, 0, False), "off": ("off", 400, False),
         "full": ("full", 400, False), "floor": (None, 400, True)}


def browser_moves(zoo: Path, moves: int, prefetch: str | None, pause_ms: int,
                  floor: bool = False, method: str | None = None) -> tuple[list[float], list[float], str]:
    env = {"SAMMERGE_ZOO": str(zoo)} | ({"SAMMERGE_PREFETCH": prefetch} if prefetch else {})
    script = "benchmarks/streamlit_floor_app.py" if floor else "app.py"
    with streamlit_server(env, script=script) as url, chromium_page() as page:
        slider = page.locator(SLIDER)
        if floor:
            page.goto(url)
            page.get_by_text("λ = 0.3 ·").first.wait_for(timeout=120_000)
            wait_idle(page)
            engine = "none (Streamlit and Chromium only)"
        else:
            open_page(page, url, "merge_explorer", query=f"method={method}" if method else "")
            engine = wait_for_engine(page, slider)
        lam = float(slider.get_attribute("value"))
        lambdas, times = [], []
        for _ in range(moves):
            lam = round(lam + 0.05, 2)
            slider.focus()
            t0 = time.perf_counter()
            page.keyboard.press("ArrowRight")
            label = f"λ = {lam:.2f}".rstrip("0").rstrip(".") + " ·"
            page.get_by_text(label).first.wait_for(timeout=60_000)
            times.append(time.perf_counter() - t0)
            lambdas.append(lam)
            wait_idle(page)
            page.wait_for_timeout(pause_ms)  # a user looking at the result (the prefetch's window)
    return lambdas, times, engine


def wait_for_engine(page, slider, timeout_s: float = 300.0) -> str:
    """Untimed warm-up: step λ down and back up (values the timed moves never ask for) until the page says how the
    server evaluates — the compiled forward once its background compile is done, or why it stays eager."""
    import re

    t0 = time.perf_counter()
    while True:
        note = page.get_by_text(re.compile(r"Engine: ")).first.text_content()
        engine = note.split("Engine: ", 1)[1].rstrip(".")
        if "while torch.compile prepares" not in engine or time.perf_counter() - t0 > timeout_s:
            return engine
        for key in ("ArrowLeft", "ArrowRight"):
            slider.focus()
            page.keyboard.press(key)
            wait_idle(page)
        page.wait_for_timeout(1000)


def engine_times(zoo: Path, lambdas: list[float]) -> list[float]:
    """Merge + evaluate each λ's merge and its twins (what one update computes), without caches."""
    from sammerge.explorer.service import Explorer
    from sammerge.merging import LAMBDA
    from sammerge.zoo import open_zoo

    import torch

    from sammerge.evaluation.compiled import default_workers

    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))  # as the app runs it (sammerge.webapp.ui)
    ex = Explorer(open_zoo(zoo), compile=os.environ.get("SAMMERGE_COMPILE", "1") != "0", workers=default_workers())
    ex.prefetch_enabled = False
    base = ex.default_spec()
    ex.compare(base)  # references and task vectors loaded, as in the app after its first page
    if ex.evaluator.compiled is not None:
        ex.evaluator.compiled.wait(600)
    out = []
    for lam in lambdas:
        t0 = time.perf_counter()
        ex.compare(base.with_params(**{LAMBDA: lam}))
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo", nargs="?", default=None)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--modes", default=",".join(MODES), help="which servers to measure (comma-separated)")
    ap.add_argument("--no-engine", action="store_true", help="skip timing the engine alone")
    ap.add_argument("--rounds", type=int, default=2, help="measure every mode this many times, in turn (pooled)")
    ap.add_argument("--methods", default="", help="comma-separated merge methods to compare in the same run "
                                                  "(default: the explorer's default method only)")
    args = ap.parse_args()
    zoo = zoo_or_demo(args.zoo)
    report = {"zoo": str(zoo.name), "moves": args.moves, "rounds": args.rounds}
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown mode {unknown[0]!r} (known: {', '.join(MODES)})")
    pooled: dict[str, list[float]] = {m: [] for m in modes}
    rounds: dict[str, list[float]] = {m: [] for m in modes}
    methods = [m for m in args.methods.split(",") if m] or [None]
    by_method: dict[str, dict[str, list[float]]] = {str(m): {mode: [] for mode in modes} for m in methods}
    for _ in range(args.rounds):  # every mode (and method) once per round: a slow spell hits them alike
        for method in methods:
            for mode in modes:
                lambdas, times, engine = browser_moves(zoo, args.moves, *MODES[mode], method=method)
                by_method[str(method)][mode] += times
                if method == methods[0]:
                    pooled[mode] += times
                    rounds[mode].append(1e3 * statistics.median(times))
                    report[mode] = stats(pooled[mode]) | {"server_engine": engine, "round_medians_ms": rounds[mode]}
    if methods != [None]:
        first = str(methods[0])
        report["by_method"] = {m: {mode: stats(t) | {"ratio_to_" + first: statistics.median(t) /
                                                     statistics.median(by_method[first][mode])}
                                   for mode, t in per.items()} for m, per in by_method.items()}
        for m, per in report["by_method"].items():
            for mode, r in per.items():
                print(f"{m:16s} {mode:12s} median {r['median_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms, "
                      f"{r['ratio_to_' + first]:.2f}× {first}")
    if not args.no_engine:
        report["engine"] = stats(engine_times(zoo, lambdas))
        modes.append("engine")
    report["lambdas"] = lambdas
    for mode in modes:
        r = report[mode]
        print(f"{mode:12s} median {r['median_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms "
              f"(min {r['min_ms']:.0f}, max {r['max_ms']:.0f}) over {r['moves']} moves"
              + (f"; per round {', '.join(f'{m:.0f}' for m in r['round_medians_ms'])} ms" if "round_medians_ms" in r else ""))
    report["load_average_1min"] = os.getloadavg()[0]  # other work on the machine at the end
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
