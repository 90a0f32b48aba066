"""`sammerge diagnose ZOO`: is this zoo in a regime where merging works? Task-vector sizes and cosines, the
task-arithmetic curve (best λ, λ = 1/T, 0.3, 0.5, gap closed) and per-task own-gain / damage curves, per variant."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sammerge.errors import ConfigError
from sammerge.cli._progress import progress_bar


def register(subparsers) -> None:
    p = subparsers.add_parser("diagnose", help="regime diagnostics of a zoo (gap closed, best λ, own gain vs damage)",
                              description=__doc__)
    p.add_argument("zoo", type=Path, help="zoo directory")
    p.add_argument("--split", choices=("train", "val", "test"), default="val", help="evaluation split (default val)")
    p.add_argument("--n-images", type=int, default=256, help="images per task (default 256)")
    p.add_argument("--variants", nargs="+", default=None, help="variants (default: all)")
    p.add_argument("--quick", action="store_true", help="64 images per task, a coarse λ / α grid")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write ZOO/analysis/cache")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import pandas as pd

    from sammerge.analytics.diagnostics import default_settings, diagnose_zoo
    from sammerge.explorer.diagnostics_view import per_task_table, reading, summary_table
    from sammerge.zoo import open_zoo

    if args.n_images < 1:
        raise ConfigError(f"--n-images must be >= 1, got {args.n_images}")
    settings = default_settings(quick=args.quick)
    settings["split"] = args.split
    if not args.quick:
        settings["n_per_task"] = args.n_images
    zoo = open_zoo(args.zoo)
    with progress_bar(not (args.quiet or args.json)) as progress:
        diag = diagnose_zoo(zoo, variants=args.variants, settings=settings, use_cache=not args.no_cache,
                            progress=progress)
    if args.json:
        print(json.dumps(diag, indent=1))
        return 0
    s = diag["settings"]
    print(f"{zoo.path.name}: {len(diag['tasks'])} tasks, {s['n_per_task']} {s['split']} images per task"
          f"{' (linearized zoo: f(θ0) + J(θ − θ0))' if diag['linearized'] else ''}")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3g}".format):
        print(summary_table(diag).set_index("variant").T.to_string())
        print()
        print(per_task_table(diag).to_string(index=False))
    print()
    print(reading(diag))
    return 0
