"""`sammerge preview ZOO`: precompute a linearized zoo's instant preview (f(θ0) and one J·τ per checkpoint on the
explorer's evaluation images), cached in ZOO/analysis/cache for the explorer."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from sammerge.cli._progress import progress_bar
from sammerge.errors import ConfigError


def register(subparsers) -> None:
    from sammerge.evaluation.subset import EvalSubset

    default = EvalSubset()
    p = subparsers.add_parser("preview", help="precompute a linearized zoo's instant preview (f(θ0) and each J·τ), "
                                              "cached in ZOO/analysis/cache",
                              description="For a linearized zoo (recipe finetune.linearized) every merge θ0 + Σ c τ "
                                          "scores exactly as f(θ0) + Σ c J τ: compute f(θ0) and one J·τ per "
                                          "checkpoint on the explorer's evaluation images once, so the explorer "
                                          "answers every slider position from them (reused while the zoo's files, "
                                          "the images and the library version are unchanged).")
    p.add_argument("zoo", type=Path, help="zoo directory")
    p.add_argument("--split", default=default.split, choices=["train", "val", "test"],
                   help=f"evaluation split (default {default.split}, the explorer's)")
    p.add_argument("--n-per-task", type=int, default=default.n_per_task,
                   help=f"images per task (default {default.n_per_task}, the explorer's)")
    p.add_argument("--seed", type=int, default=default.seed, help=f"subset seed (default {default.seed})")
    p.add_argument("--force", action="store_true", help="recompute even if a valid preview is stored")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from sammerge.evaluation.preview_cache import load_preview, precompute_preview
    from sammerge.evaluation.subset import EvalSubset
    from sammerge.zoo import open_zoo

    problems = []
    if args.n_per_task < 1:
        problems.append(f"--n-per-task must be >= 1, got {args.n_per_task}")
    if args.threads < 0:
        problems.append(f"--threads must be >= 0, got {args.threads}")
    if problems:
        raise ConfigError("; ".join(problems))
    if args.threads:
        torch.set_num_threads(args.threads)
    zoo = open_zoo(args.zoo)
    subset = EvalSubset(args.split, args.n_per_task, args.seed)
    stored = not args.force and zoo.manifest.linearized and load_preview(zoo, subset) is not None
    t0 = time.perf_counter()
    with progress_bar(not (args.quiet or stored)) as progress:
        path = precompute_preview(zoo, subset, progress=progress, device=args.device, force=args.force)
    took = time.perf_counter() - t0
    n = len(zoo.tasks) * len(zoo.variants)
    print(f"instant preview {'(stored, reused) ' if stored else ''}at {path}: f(θ0) and {n} J·τ on "
          f"{args.split}, {args.n_per_task} images per task, seed {args.seed} ({took:.1f} s)")
    return 0
