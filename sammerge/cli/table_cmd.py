"""`sammerge table ZOO`: the paper's table — merge methods × tasks, plain vs SAM, at the best shared λ on val;
optionally AdaMerging rows (``--adamerging task layer``; settings ``--ada-<name>`` from the learner's schema)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sammerge.cli._progress import progress_bar

_ADA_SKIP = {"granularity"}  # given by --adamerging


def _learner():
    from sammerge.evaluation.learners import get_learner
    return get_learner("adamerging")


def _typed(spec):
    from sammerge.merging.schema import parse

    def convert(raw: str):
        try:
            return parse(raw, spec)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def register(subparsers) -> None:
    p = subparsers.add_parser("table", help="paper-style table: every merge method at its best shared λ, plain vs SAM")
    p.add_argument("zoo", type=Path)
    p.add_argument("--methods", nargs="+", default=None, help="merge methods (default: every static method, those reading images where the zoo has training images: `sammerge methods`)")
    p.add_argument("--n-val", type=int, default=None, help="validation images per task (default: whole split)")
    p.add_argument("--n-test", type=int, default=None, help="test images per task (default: whole split)")
    p.add_argument("--format", default="markdown", choices=["markdown", "csv", "latex"])
    p.add_argument("--out", type=Path, default=None, help="write here (atomically) instead of stdout")
    p.add_argument("--adamerging", nargs="+", default=(), choices=["task", "layer"],
                   help="add AdaMerging rows (task-wise and/or layer-wise; entropy minimization on unlabeled "
                        "validation images)")
    p.add_argument("--learned-out", type=Path, default=None,
                   help="write the learned AdaMerging merge specs (JSON: row → spec) here")
    for spec in _learner().global_params:
        if spec.name in _ADA_SKIP:
            continue
        extra = {"choices": list(spec.choices)} if spec.choices else {}
        p.add_argument(f"--ada-{spec.name.replace('_', '-')}", dest=f"ada_{spec.name}", type=_typed(spec),
                       default=None, help=f"AdaMerging {spec.label} {spec.range_text()} (default {spec.default}): "
                                          f"{spec.help}", **extra)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sammerge.io import atomic_write_text
    from sammerge.merging import get_method
    from sammerge.evaluation.protocol import paper_table
    from sammerge.merging.statistics import zoo_table_methods
    from sammerge.zoo import open_zoo

    zoo = open_zoo(args.zoo)
    methods = args.methods or zoo_table_methods(zoo)
    for name in methods:
        get_method(name)  # unknown → ConfigError listing the known ones
    settings = {s.name: getattr(args, f"ada_{s.name}") for s in _learner().global_params
                if s.name not in _ADA_SKIP and getattr(args, f"ada_{s.name}", None) is not None}
    if settings:
        _learner().validate_params(settings)  # ConfigError naming the setting before any work
    default = args.methods is None and args.n_val is None and args.n_test is None and not args.adamerging
    with progress_bar(not args.quiet) as progress:
        if default:  # the app's table: read from (or computed once into) the zoo's analysis cache
            from sammerge.explorer.service import Explorer
            table = Explorer(zoo).paper_table(progress=progress)
        else:
            table = paper_table(zoo, methods=methods, n_val=args.n_val, n_test=args.n_test,
                                progress=progress, adamerging=tuple(args.adamerging), adamerging_settings=settings)
    shown = table.drop(columns=[c for c in ("method_id", "val mean", "learn s") if c in table.columns])
    pct = [c for c in shown.columns if c not in ("variant", "method", "best λ")]
    shown[pct] = shown[pct] * 100
    if args.format == "csv":
        text = shown.to_csv(index=False, float_format="%.2f")
    elif args.format == "latex":
        text = shown.to_latex(index=False, float_format="%.1f", na_rep="--")
    else:
        header = "| " + " | ".join(shown.columns) + " |\n|" + "---|" * len(shown.columns) + "\n"
        rows = []
        for _, row in shown.iterrows():
            cells = [f"{v:.1f}" if isinstance(v, float) and k in pct else
                     ("—" if v is None or (isinstance(v, float) and v != v) else f"{v:g}" if isinstance(v, float)
                      else str(v)) for k, v in row.items()]
            rows.append("| " + " | ".join(cells) + " |")
        counts = [min(len(zoo.split(t, "test").labels), args.n_test or 10**12) for t in zoo.tasks]
        images = (f"{counts[0]} images per task" if len(set(counts)) == 1 else
                  " / ".join(map(str, counts)) + f" images ({' / '.join(zoo.tasks)})")
        text = (f"{table.attrs['protocol']}; test accuracy (%) on {images}; "
                f"normalized = merged / individual fine-tuned.\n\n" + header + "\n".join(rows) + "\n")
    if args.learned_out:
        atomic_write_text(args.learned_out, json.dumps(table.attrs.get("learned", {}), indent=2) + "\n")
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0
