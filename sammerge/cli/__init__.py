"""`sammerge` command line: each sub-module registers its sub-commands on one argparse parser."""
from __future__ import annotations

import argparse
import sys

from sammerge import __version__
from sammerge.cli import (analyze_cmd, diagnose_cmd, eval_cmd, jobs_cmd, learn_cmd, merge_cmd, plan_cmd,
                          preview_cmd, sweep_cmd, table_cmd, zoo_cmd)
from sammerge.errors import SammergeError

# Sub-command modules (each defines register(subparsers) and sets func(args) -> int), in the help's order.
COMMAND_MODULES = (zoo_cmd, merge_cmd, eval_cmd, analyze_cmd, table_cmd, diagnose_cmd, sweep_cmd, jobs_cmd, learn_cmd,
                   preview_cmd, plan_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sammerge",
        description="Build model zoos (plain vs SAM fine-tuning), merge them, evaluate, analyse.")
    parser.add_argument("--version", action="version", version=f"sammerge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except SammergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
