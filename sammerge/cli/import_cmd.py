"""`sammerge zoo import SPEC --out DIR`: convert a user's checkpoints and image folders into a zoo."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(zsub) -> None:
    p = zsub.add_parser("import", help="convert your own checkpoints (timm, task_vectors / SAFT-Merge, HF CLIP) into a zoo",
                        description="Check every file the spec names (reporting every problem at once), then convert "
                                    "them into a zoo directory. Nothing is written when anything is wrong.")
    p.add_argument("spec", type=Path, help="import spec (YAML or JSON; see README 'Import your own checkpoints')")
    p.add_argument("--out", required=True, type=Path, help="output zoo directory")
    p.add_argument("--max-images-per-split", type=int, default=None,
                   help="store a seeded random subset of at most N images per task and split (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset")
    p.add_argument("--device", default="cpu", help="device for measuring the checkpoints' accuracies (cpu, cuda, auto)")
    p.add_argument("--max-file-bytes", type=int, default=None,
                   help="refuse checkpoint files larger than this (default 16 GiB, or $SAMMERGE_MAX_FILE_BYTES)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sammerge.cli._progress import progress_bar
    from sammerge.importing import import_zoo, load_import_spec
    from sammerge.io import MAX_BYTES_ENV

    spec = load_import_spec(args.spec)
    if args.max_file_bytes is not None:
        os.environ[MAX_BYTES_ENV] = str(args.max_file_bytes)
    with progress_bar(not args.quiet) as progress:
        zoo = import_zoo(spec, args.out, max_images_per_split=args.max_images_per_split, seed=args.seed,
                         overwrite=args.overwrite, device=args.device, spec_file=args.spec, progress=progress)
    m = zoo.manifest
    print(f"imported {len(m.checkpoints)} checkpoints of {len(zoo.tasks)} tasks ({m.source['format']} → timm "
          f"{m.encoder.model}) into {zoo.path} in {m.build_wall_time_s:.1f} s")
    for r in m.checkpoints:
        print(f"  {r.task:>16} {r.variant:<10} val {r.accuracy.val:.3f}  test {r.accuracy.test:.3f}  "
              f"(pretrained test {r.pretrained_accuracy.test:.3f})  ← {r.source.original}")
    return 0
