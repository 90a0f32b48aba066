"""`sammerge sweep ZOO`: shared-λ sweeps as jobs (local or Ray), cached in the zoo for the explorer."""
from __future__ import annotations

import argparse
from pathlib import Path

from sammerge.cli._progress import progress_bar
from sammerge.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="precompute the explorer's λ sweeps (one job per method, variant set, "
                                            "chunk of λ), cached in ZOO/analysis/sweeps")
    p.add_argument("zoo", type=Path)
    p.add_argument("--method", nargs="+", default=None,
                   help="merge methods (default: every static method that merges the zoo's task count; "
                        "RegMean and Fisher where the zoo stores training images), each with its default parameters")
    p.add_argument("--variants", nargs="+", default=None,
                   help="variant sets: a variant for every task ('sam') or task:variant pairs "
                        "('digits:sam,symbols:plain'); default: each zoo variant")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a global parameter of the method(s) other than λ, e.g. density=0.2 (repeatable); "
                        "every method given must have it")
    p.add_argument("--chunk", type=int, default=7, help="λ values per job (default 7)")
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None, help="Ray address: auto, ray://host:10001 (default: a local Ray)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per job (default 1)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="evaluation precision: fp32 (default, the explorer's) or bf16 autocast (cached separately)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_sweep)


def parse_variant_set(text: str, zoo) -> str | dict[str, str]:
    """'sam' → every task on sam; 'digits:sam,symbols:plain' → those tasks on those variants."""
    if ":" not in text:
        if text not in zoo.variants:
            raise ConfigError(f"--variants: unknown variant '{text}' (zoo has: {', '.join(zoo.variants)})")
        return text
    pairs, problems = {}, []
    for item in filter(None, (s.strip() for s in text.split(","))):
        task, _, variant = item.partition(":")
        if task not in zoo.tasks:
            problems.append(f"unknown task '{task}' (zoo has: {', '.join(zoo.tasks)})")
        elif variant not in zoo.variants:
            problems.append(f"unknown variant '{variant}' for task '{task}' (zoo has: {', '.join(zoo.variants)})")
        pairs[task] = variant
    if problems:
        raise ConfigError("--variants: " + "; ".join(problems))
    return pairs


def parse_params(items: list[str], method: str) -> dict:
    """NAME=VALUE pairs → typed global parameters of ``method`` (ConfigError listing every problem)."""
    from sammerge.merging import LAMBDA, get_method
    from sammerge.merging.schema import parse

    schema = {p.name: p for p in get_method(method).global_params}
    out, problems = {}, []
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep:
            problems.append(f"'{item}' is not NAME=VALUE")
        elif name == LAMBDA:
            problems.append("λ is what a sweep varies; it cannot be fixed")
        elif name not in schema:
            problems.append(f"method '{method}' has no global parameter '{name}' (it has: {', '.join(schema) or 'none'})")
        else:
            try:
                out[name] = parse(raw, schema[name])
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    if problems:
        raise ConfigError("--param: " + "; ".join(problems))
    return out


def _sweep(args: argparse.Namespace) -> int:
    from sammerge.jobs.sweeps import evaluation_settings, run_sweeps, sweep_key, sweeps_dir
    from sammerge.merging import MergeSpec
    from sammerge.merging.statistics import zoo_table_methods
    from sammerge.zoo import open_zoo

    zoo = open_zoo(args.zoo)
    methods = args.method or zoo_table_methods(zoo, routed=False)
    sets = [parse_variant_set(v, zoo) for v in (args.variants or zoo.variants)]
    specs = [MergeSpec.for_zoo(zoo, m, parse_params(args.param, m), v) for m in methods for v in sets]
    with progress_bar(not args.quiet) as progress:
        results = run_sweeps(zoo, specs, backend=args.backend, address=args.address, chunk_size=args.chunk,
                             progress=progress, threads=args.threads, precision=args.precision)
    print(f"{'method':<22} {'variants':<28} {'points':>6} {'best λ':>7} {'val mean':>9}")
    for spec in specs:
        r = results[sweep_key(zoo, spec, evaluation_settings(args.precision))]
        variants = spec.uniform_variant() or ",".join(f"{t.task}:{t.variant}" for t in spec.tasks)
        lam = "—" if r.best_lambda is None else f"{r.best_lambda:g}"
        print(f"{spec.method:<22} {variants[:28]:<28} {len(r.val_mean):>6} {lam:>7} {r.best_val_mean:>9.4f}")
    print(f"cached in {sweeps_dir(zoo)} " + ("(the explorer shows them at once)" if args.precision == "fp32" else
                                             f"({args.precision}: kept apart from the explorer's fp32 sweeps)"))
    return 0
