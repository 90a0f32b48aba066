"""The merge planner on the demo zoo: how long the measurements take, and what the plan and the predictors say.

    python benchmarks/plan_demo.py --json benchmarks/results/plan_demo.json

Times (2 cores, nothing cached): the pairwise matrix of one variant (task arithmetic and TSV-M, each at its best
validation λ), every subset for every variant, and a second open (read from the zoo's cache). Then the plan at
each tolerance, plain vs SAM vs ASAM, the greedy search's plan beside the exact one (the greedy search reads the
measured groups it asks for), and the rank correlation of each weight signal with the pairwise loss.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from sammerge.planner.compat import DEFAULT_METHODS, all_subsets, measure_groups, pairs
from sammerge.planner.greedy import greedy_plan
from sammerge.planner.plan import plan_groups
from sammerge.planner.predictors import predictor_table
from sammerge.zoo import open_zoo

TOLERANCES = (1.0, 2.0, 4.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=None, help="default: the shipped demo zoo (copied: nothing cached)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from sammerge.shipped import shipped_zoo_dir
    work = Path(tempfile.mkdtemp(prefix="plan-demo-"))
    src = args.zoo or shipped_zoo_dir()
    shutil.copytree(src, work / "zoo", ignore=shutil.ignore_patterns("analysis"))
    zoo = open_zoo(work / "zoo")
    out = {"zoo": zoo.manifest.name, "tasks": zoo.tasks, "methods": list(DEFAULT_METHODS),
           "threads": torch.get_num_threads(), "timings_s": {}, "variants": {}}
    t0 = time.perf_counter()
    measure_groups(zoo, zoo.variants[0], pairs(zoo.tasks))
    out["timings_s"]["pairs_one_variant"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = {v: measure_groups(zoo, v, all_subsets(zoo.tasks)) for v in zoo.variants}
    out["timings_s"]["every_subset_every_variant"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = {v: measure_groups(open_zoo(zoo.path), v, all_subsets(zoo.tasks)) for v in zoo.variants}
    out["timings_s"]["second_open"] = time.perf_counter() - t0
    assert all(again[v][g].merged == results[v][g].merged for v in results for g in results[v])
    for v, res in results.items():
        out["variants"][v] = {
            "plans": {str(tol): {"models": (p := plan_groups(res, zoo.tasks, tol)).n_models,
                                 "stages": [{"tasks": list(g.tasks), "method": g.method, "lambda": g.lam,
                                             "worst_loss": g.worst_loss} for g in p.stages],
                                 "separate": p.separate} for tol in TOLERANCES},
            "greedy_models": {str(tol): greedy_plan(zoo.tasks, lambda gs, res=res: {g: res[g] for g in res}, tol)[0].n_models
                              for tol in TOLERANCES},
            "pairs": {"+".join(g): {"method": r.method, "worst_loss": r.worst_loss}
                      for g, r in res.items() if len(g) == 2},
            "all_tasks": {"method": res[tuple(zoo.tasks)].method,
                          "worst_loss": res[tuple(zoo.tasks)].worst_loss},
            "predictors": predictor_table(zoo, v, res)["signals"]}
    out["load_average_1min"] = os.getloadavg()[0]
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(markdown(out))
    return 0


def markdown(r: dict) -> str:
    t = r["timings_s"]
    lines = [f"Demo zoo ({len(r['tasks'])} tasks), methods {', '.join(r['methods'])} (each at its best validation λ), "
             f"{r['threads']} torch threads: the pairwise matrix of one variant {t['pairs_one_variant']:.0f} s; every "
             f"subset ({2 ** len(r['tasks']) - len(r['tasks']) - 1}) of every variant "
             f"{t['every_subset_every_variant']:.0f} s; a second open {t['second_open']:.1f} s (from the zoo's cache); "
             f"machine load average {r.get('load_average_1min', float('nan')):.1f} at the end.",
             "", "| variant | all tasks in one model: worst loss (pts) | "
             + " | ".join(f"models needed at ≤ {tol:g} pts (greedy)" for tol in TOLERANCES) + f" | plan at ≤ {TOLERANCES[-1]:g} pts |",
             "|---|---|" + "---|" * len(TOLERANCES) + "---|"]
    shown = str(TOLERANCES[-1])
    for v, d in r["variants"].items():
        p2 = d["plans"][shown]
        stages = "; ".join(f"{'+'.join(s['tasks'])} ({s['method']}, λ {s['lambda']:g}, worst {s['worst_loss']:.1f} pts)"
                           for s in p2["stages"]) or "—"
        lines.append(f"| {v} | {d['all_tasks']['worst_loss']:.1f} | "
                     + " | ".join(f"{d['plans'][str(tol)]['models']} ({d['greedy_models'][str(tol)]})" for tol in TOLERANCES)
                     + f" | merge {stages}" + (f"; separate {', '.join(p2['separate'])}" if p2["separate"] else "")
                     + " |")
    lines += ["", "Predicting the pairwise loss from the weights (Spearman ρ over the pairs, permutation p):", "",
              "| variant | " + " | ".join(next(iter(r["variants"].values()))["predictors"]) + " |",
              "|---|" + "---|" * len(next(iter(r["variants"].values()))["predictors"])]
    for v, d in r["variants"].items():
        lines.append(f"| {v} | " + " | ".join(
            "—" if x is None or x["rho"] is None else f"ρ {x['rho']:+.2f} (p {x['p']:.2f}, {x['n']} pairs)"
            for x in (d["predictors"].get(name) for name in next(iter(r["variants"].values()))["predictors"])) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
