"""``sammerge merge CONFIG OUT_DIR`` and ``sammerge methods``.

``merge`` reads our YAML/JSON merge config or a mergekit-style YAML (detected by its keys), merges any set of
safetensors state dicts with the same keys and shapes, and writes atomically (nothing on error)::

    OUT_DIR/model.safetensors      merged state dict (a task-routed method, e.g. EMR: model-<task>.safetensors,
                                   one per task)
    OUT_DIR/merge_config.yaml      resolved config (absolute paths, sha256, all parameters, version)
    OUT_DIR/mergekit_config.yml    the same merge for mergekit-pytorch (with notes where semantics differ); not
                                   written for a method without a mergekit equivalent (the command says so)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sammerge.errors import CheckpointError
from sammerge.io import atomic_dir, save_state_dict
from sammerge.merging import MERGE_METHODS, load_any_config, resolve_and_merge, to_mergekit_yaml
from sammerge.cli._progress import delayed_progress_bar
from sammerge.merging.mergekit import mergekit_unavailable
from sammerge.progress import reporting


def run_merge(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not args.overwrite:
        raise CheckpointError(f"{out_dir}: already exists (pass --overwrite to replace it)")
    config = load_any_config(args.config)
    zoo = None
    if args.zoo is not None:
        from sammerge.zoo import open_zoo
        zoo = open_zoo(args.zoo)
    with delayed_progress_bar(not args.quiet) as progress, reporting(progress):
        # a bar on stderr once a merge takes 2 s (TSV-M, WUDI, RegMean's statistics, ...)
        merged, resolved = resolve_and_merge(config, zoo=zoo,
                                             originals=zoo.original_files() if zoo is not None else None)
    mergekit_problem = mergekit_unavailable(resolved)
    mergekit_text = to_mergekit_yaml(resolved) if mergekit_problem is None else None
    meta = {"sammerge_method": resolved.method, "sammerge_version": resolved.library_version}
    routed = not resolved.spec.is_static  # one model per task (EMR): model-<task>.safetensors each
    files = ({f"model-{t.task}.safetensors": m for t, m in zip(resolved.tasks, merged)} if routed
             else {"model.safetensors": merged})
    with atomic_dir(out_dir, overwrite=args.overwrite) as tmp:
        for name, state in files.items():
            save_state_dict(state, tmp / name, metadata=meta)
        resolved.save(tmp / "merge_config.yaml")
        if mergekit_text is not None:
            (tmp / "mergekit_config.yml").write_text(mergekit_text, encoding="utf-8")
    first = next(iter(files.values()))
    n = sum(v.numel() for v in first.values())
    if routed:
        print(f"merged {len(resolved.tasks)} model(s) with {resolved.method}, task-routed: one model per task "
              f"({', '.join(files)}; {len(first)} tensors, {n} values each) -> {out_dir}")
    else:
        print(f"merged {len(resolved.tasks)} model(s) with {resolved.method} "
              f"({len(first)} tensors, {n} values) -> {out_dir}")
    if mergekit_problem is not None:
        print(f"note: {mergekit_problem}")
    return 0


def _methods_table() -> str:
    lines = []
    for m in MERGE_METHODS.values():
        lines.append(f"{m.name}  ({m.label}; mergekit: {m.mergekit_name or '-'})")
        lines.append(f"    {m.description}")
        if not m.is_static:
            lines.append("    task-routed: one model per task (each task evaluated with its own)")
        if m.needs_data:
            lines.append("    reads unlabeled images of each task (never labels): merge it from a zoo (--zoo)")
        if not m.params:
            lines.append("    (no parameters)")
        for p in m.params:
            scope = "per task" if p.per_model else "global"
            default = p.entry_default if p.per_model else p.default
            rng = p.range_text() or "any"
            lines.append(f"    {p.name:<11} {p.kind:<6} {scope:<8} default={default!s:<7} range={rng:<16} {p.help}")
        lines.append("")
    return "\n".join(lines)


def run_methods(args: argparse.Namespace) -> int:
    if args.json:
        json.dump([m.to_dict() for m in MERGE_METHODS.values()], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_methods_table())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge", help="merge safetensors state dicts from a config (ours or mergekit YAML)",
        description="Merge safetensors state dicts described by CONFIG (sammerge YAML/JSON, or mergekit YAML "
                    "with merge_method/models/parameters) and write OUT_DIR/model.safetensors, "
                    "OUT_DIR/merge_config.yaml and OUT_DIR/mergekit_config.yml atomically.")
    p.add_argument("config", metavar="CONFIG", help="merge config (.yaml/.yml/.json) or mergekit YAML")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown once a merge takes 2 s)")
    p.add_argument("--zoo", default=None, metavar="ZOO",
                   help="the zoo whose tasks the config names: methods that read unlabeled images (regmean, "
                        "fisher) compute their statistics with its models and images")
    p.set_defaults(func=run_merge)

    q = subparsers.add_parser("methods", help="list merge methods and their parameters",
                              description="Print the merge-method registry: parameters, ranges, defaults, help.")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.set_defaults(func=run_methods)
