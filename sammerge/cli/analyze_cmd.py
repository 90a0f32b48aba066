"""`sammerge analyze ZOO [--quick] [--force] [--json]`: precompute and cache the zoo's sharpness and
interference analytics (ZOO/analysis/analysis.json)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sammerge.errors import ConfigError
from sammerge.cli._progress import progress_bar


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="sharpness (Hessian, m-sharpness) and interference analytics of a zoo",
                              description="Compute per checkpoint the top Hessian eigenvalue, Hutchinson trace, "
                                          "m-sharpness and average sharpness, task-vector cosine / sign-conflict "
                                          "matrices, per-layer norms and the disentanglement error; store them in "
                                          "ZOO/analysis/analysis.json (reused while the checkpoints are unchanged).")
    p.add_argument("zoo", type=Path, help="zoo directory")
    p.add_argument("--quick", action="store_true", help="small batches and few iterations (a preview)")
    p.add_argument("--force", action="store_true", help="recompute even if a valid analysis is stored")
    p.add_argument("--json", action="store_true", help="print the whole analysis as JSON instead of tables")
    p.add_argument("--n-images", type=int, default=None, help="images in each checkpoint's fixed batch")
    p.add_argument("--variants", nargs="+", default=None, help="variants to analyse (default: all)")
    p.add_argument("--pair", nargs=2, action="append", metavar=("TASK1", "TASK2"), default=None,
                   help="task pair for the disentanglement error (repeatable; default: the first two tasks)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: Hessian-vector products of this small model run faster "
                        "single-threaded, especially on a shared machine; 0 = torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from sammerge.analytics.report import analyze_zoo, disentanglement_summary, load_analysis, sharpness_table
    from sammerge.zoo import open_zoo

    if args.threads < 0:
        raise ConfigError(f"--threads must be >= 0, got {args.threads}")
    if args.n_images is not None and args.n_images < 2:
        raise ConfigError(f"--n-images must be >= 2, got {args.n_images}")
    if args.threads:
        torch.set_num_threads(args.threads)
    zoo = open_zoo(args.zoo)
    stored = load_analysis(zoo)
    with progress_bar(not (args.quiet or args.json)) as progress:
        result = analyze_zoo(zoo, progress=progress, n_images=args.n_images, quick=args.quick, force=args.force,
                             pairs=args.pair, variants=args.variants)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    _print_report(result, sharpness_table, disentanglement_summary)
    reused = stored is not None and not args.force and result.get("created") == stored.get("created")
    where = zoo.path / "analysis" / "analysis.json"
    print(f"\nanalysis {'(stored, reused) ' if reused else ''}at {where}")
    return 0


def _print_report(result: dict, sharpness_table, disentanglement_summary) -> None:
    import pandas as pd

    s = result["settings"]
    print(f"sharpness on {s['n_images']} {s['split']} images per task (batch seed {s['batch_seed']}); "
          f"λ_max by {s['eig_method']} (≤{s['eig_iters']} HVPs), trace by Hutchinson ({s['trace_samples']} probes), "
          f"m-sharpness m={s['m']} ρ={s['rho']}, avg σ={s['avg_sigma']}")
    rows = []
    for r in result["sharpness"]:
        rows.append({"task": r["task"], "variant": r["variant"], "λ_max": r["top_eigenvalue"],
                     "tr(H)": r["trace_mean"], "±s.e.": r["trace_se"], "m-sharp": r["m_sharpness"],
                     "m-sharp (adapt.)": r["m_sharpness_adaptive"], "avg-sharp": r["avg_sharpness"],
                     "loss": r["loss"], "acc": r["accuracy"]})
    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
        print("\nmean over tasks by variant:")
        print(df.drop(columns=["task"]).groupby("variant", sort=False).mean().to_string())
    summary = disentanglement_summary(result)
    if summary:
        pairs = {v: [f"{r['tasks'][0]}+{r['tasks'][1]}" for r in res] for v, res in result["disentanglement"].items()}
        print(f"\nmean disentanglement error ξ over the {s['disent_n']}×{s['disent_n']} grid on "
              f"[{s['disent_range'][0]}, {s['disent_range'][1]}]² (0 = none, 2 = max):")
        for variant, value in summary.items():
            print(f"  {variant:>8}: {value:.4f}  ({', '.join(pairs[variant])})")
