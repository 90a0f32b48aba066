"""`sammerge eval ZOO CONFIG`: per-task accuracy and loss of a merge, as JSON or CSV."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a merge config on a zoo's tasks (accuracy and loss)")
    p.add_argument("zoo", type=Path, help="zoo directory (zoo.json, heads, data)")
    p.add_argument("config", type=Path, help="merge config: ours (.json/.yaml) or a mergekit YAML")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--n-per-task", type=int, default=None,
                   help="evaluate a fixed, seeded subset of N images per task (default: the whole split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation subset")
    p.add_argument("--all-tasks", action="store_true", help="evaluate every task of the zoo, not just the merged ones")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="encoder forward: fp32 (default, exact), bf16 autocast, or auto (bf16 on CUDA, fp32 "
                        "elsewhere); logits, loss and accuracy are fp32")
    p.add_argument("--format", default="json", choices=["json", "csv"])
    p.add_argument("--out", type=Path, default=None, help="write here (atomically) instead of stdout")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sammerge.errors import ConfigError
    from sammerge.evaluation.protocol import evaluate_spec, results_table
    from sammerge.io import atomic_write_text
    from sammerge.merging import load_any_config
    from sammerge.zoo import open_zoo

    if args.n_per_task is not None and args.n_per_task < 1:
        raise ConfigError(f"--n-per-task must be ≥ 1, got {args.n_per_task}")
    zoo = open_zoo(args.zoo)
    config = load_any_config(args.config)
    results, individual, resolved, _ = evaluate_spec(zoo, config, split=args.split, n_per_task=args.n_per_task,
                                                     tasks=zoo.tasks if args.all_tasks else None, seed=args.seed,
                                                     precision=args.precision)
    table = results_table(results, individual, resolved, args.split)
    if args.format == "csv":
        text = table.to_csv(index=False)
    else:
        text = json.dumps({
            "zoo": str(zoo.path), "config": str(args.config), "method": resolved.method, "params": resolved.params,
            "split": args.split, "n_per_task": args.n_per_task, "seed": args.seed, "precision": args.precision,
            "mean_accuracy": table.attrs["mean_accuracy"],
            "mean_normalized_accuracy": float(table["normalized"].mean()) if "normalized" in table else None,
            "per_task": table.to_dict(orient="records")}, indent=2) + "\n"
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0
