"""``sammerge plan ZOO --tolerance 2 --out plan.html``: which tasks can share one merged model, the fewest groups
within the tolerance, per variant (plain vs SAM side by side), as JSON and a self-contained HTML report."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sammerge.cli._progress import progress_bar


def run_plan(args: argparse.Namespace) -> int:
    from sammerge.io import atomic_write_text
    from sammerge.planner import run as planner
    from sammerge.planner.report import fmt
    from sammerge.zoo import open_zoo

    zoo = open_zoo(args.zoo)
    settings = planner.PlanSettings(args.tolerance, tuple(args.methods), tuple(args.variants) if args.variants else None,
                                    args.pairs_only, args.requests_per_day, args.gpu_hour_cost,
                                    parse_floors(args.floor), args.search)
    with progress_bar(not args.quiet) as progress:
        result = planner.run_plan(zoo, settings, progress, backend=args.backend, address=args.address)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result.data, indent=1))
    if args.out:
        atomic_write_text(Path(args.out), result.html)
    for v, p in result.plans.items():
        stages = "; ".join(f"{'+'.join(g.tasks)} ({g.method}, λ {g.lam:g}, worst {g.worst_loss:.1f} pts)"
                           for g in p.stages) or "none"
        print(f"{v}: {p.n_models} model(s) for {len(zoo.tasks)} tasks at ≤ {args.tolerance:g} points — merge: {stages}"
              + (f"; separate: {', '.join(p.separate)}" if p.separate else "")
              + (f" ({p.search} search)" if p.search != "exact" else ""))
        if p.below_floor:
            print(f"    below its floor already as its own model: {', '.join(p.below_floor)}")
        signals = result.data["variants"][v]["predictors"]["signals"]
        print("    predicting the pairwise loss from the weights (Spearman ρ, permutation p): " + "; ".join(
            f"{name} {fmt(r['rho'], '+.2f')} (p {fmt(r['p'], '.2f')})" for name, r in signals.items()))
    return 0


def parse_floors(items: list[str] | None) -> tuple[tuple[str, float], ...]:
    """``TASK=ACC`` items → ((task, acc), ...); ConfigError naming every malformed one."""
    from sammerge.errors import ConfigError
    out, bad = [], []
    for item in items or []:
        task, _, value = item.partition("=")
        try:
            out.append((task.strip(), float(value)))
        except ValueError:
            bad.append(item)
        if not task.strip():
            bad.append(item)
    if bad:
        raise ConfigError("--floor takes TASK=ACCURACY (percent, e.g. mnist=90), not: " + ", ".join(dict.fromkeys(bad)))
    return tuple(out)


def register(subparsers) -> None:
    p = subparsers.add_parser("plan", help="which tasks can share one merged model within a tolerance (a report)",
                              description="Measure every pair (and every subset up to 8 tasks) of a zoo's tasks "
                                          "merged, and plan the fewest merged models that keep every task within "
                                          "--tolerance points of its own fine-tuned model, per variant.")
    p.add_argument("zoo", type=Path)
    p.add_argument("--tolerance", type=float, default=2.0, help="largest loss of any task, in accuracy points (2)")
    p.add_argument("--methods", nargs="+", default=["task_arithmetic", "tsv_m"],
                   help="methods tried for every group, each at its best validation λ (default task_arithmetic tsv_m)")
    p.add_argument("--variants", nargs="+", default=None, help="variants to plan (default: every variant)")
    p.add_argument("--pairs-only", action="store_true", help="measure pairs only (groups of at most two)")
    p.add_argument("--floor", action="append", metavar="TASK=ACC",
                   help="a task's least test accuracy in %% after merging (repeatable), besides --tolerance")
    p.add_argument("--search", choices=("auto", "exact", "greedy"), default="auto",
                   help="exact: every subset (up to 8 tasks); greedy: pairs, then groups grown one task at a time; "
                        "auto (default): exact up to 8 tasks, else greedy")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="where the merges run (local)")
    p.add_argument("--address", default=None, help="Ray cluster address (with --backend ray; default: a local Ray)")
    p.add_argument("--json", default=None, help="write every number as JSON")
    p.add_argument("--out", default=None, help="write the self-contained HTML report")
    p.add_argument("--requests-per-day", type=float, default=None, help="images a day, every task predicted on each")
    p.add_argument("--gpu-hour-cost", type=float, default=None, help="price of one hour of the serving device")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run_plan)
