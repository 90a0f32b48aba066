"""`sammerge learn ZOO OUT`: learn merge coefficients (AdaMerging) and write the resulting merge spec.

Settings are flags made from the learner's schema (``sammerge learn --help`` lists them with ranges); the output is
an ordinary spec (JSON or YAML by suffix) that ``sammerge merge``/``eval`` and the app read like a hand-set merge.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sammerge.cli._progress import progress_bar
from sammerge.cli.table_cmd import _typed

LEARNER = "adamerging"


def register(subparsers) -> None:
    from sammerge.evaluation.learners import get_learner

    learner = get_learner(LEARNER)
    p = subparsers.add_parser("learn", help="learn merge coefficients with AdaMerging; writes a merge spec",
                              description=learner.description + " Unlabeled inputs: the validation images of each "
                                          "task (labels never read).")
    p.add_argument("zoo", type=Path)
    p.add_argument("out", type=Path, help="the learned merge spec (.json, .yaml or .yml)")
    p.add_argument("--variant", default=None, help="fine-tuning variant for every task (default: the zoo's first)")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to merge (default: all)")
    for spec in learner.global_params:
        extra = {"choices": list(spec.choices)} if spec.choices else {}
        p.add_argument(f"--{spec.name.replace('_', '-')}", dest=f"set_{spec.name}", type=_typed(spec), default=None,
                       help=f"{spec.label} {spec.range_text()} (default {spec.default}): {spec.help}", **extra)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sammerge.errors import ConfigError
    from sammerge.evaluation.learners import get_learner
    from sammerge.zoo import open_zoo

    if args.out.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"{args.out}: unsupported suffix '{args.out.suffix}' (use .json, .yaml or .yml)")
    learner = get_learner(LEARNER)
    settings = {s.name: getattr(args, f"set_{s.name}") for s in learner.global_params
                if getattr(args, f"set_{s.name}", None) is not None}
    learner.validate_params(settings)
    zoo = open_zoo(args.zoo)
    with progress_bar(not args.quiet) as progress:
        result = learner(zoo, args.variant or zoo.variants[0], args.tasks, progress=progress, **settings)
    result.spec.save(args.out)
    tasks, groups, matrix = result.matrix()
    width = max(len(t) for t in tasks)
    lines = [f"{result.spec.notes}", f"{'task':<{width}}  " + "  ".join(f"{g:>8}" for g in groups)]
    lines += [f"{t:<{width}}  " + "  ".join(f"{v:8.3f}" for v in row) for t, row in zip(tasks, matrix)]
    sys.stdout.write("\n".join(lines) + f"\nwrote {args.out}\n")
    return 0
