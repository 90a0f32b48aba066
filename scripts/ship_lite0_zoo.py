"""Build the shipped EfficientNet-Lite0 zoo (``assets/lite0_zoo``) with everything its pages show at first open.

    python scripts/ship_lite0_zoo.py --work DIR          # train what DIR lacks, write the zoo, warm its caches, ship
    python scripts/ship_lite0_zoo.py --work DIR --no-warm
    python scripts/ship_lite0_zoo.py --from ZOO          # ship a zoo this builder wrote (warming what it lacks)

Training is resumable and can be split over processes (one core each), e.g.
``python -m sammerge.training.lite0_zoo --work DIR --train`` (heads only), then ``--train plain`` and
``--train sam`` side by side, then this script. Needs the build extra (``pip install -e '.[lite]'``) and Debian's
``dataset-fashion-mnist``; the app needs neither.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from sammerge.explorer.warm import warm_caches
from sammerge.shipped import copy_verified, shipped_lite0_dir
from sammerge.training.lite0_zoo import Lite0Build, Lite0ZooRecipe
from sammerge.zoo import open_zoo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="heads and float32 task vectors (resumable)")
    ap.add_argument("--from", dest="source", type=Path, default=None, help="a Lite0 zoo written by this builder")
    ap.add_argument("--out", type=Path, default=shipped_lite0_dir())
    ap.add_argument("--no-warm", action="store_true", help="ship without the precomputed analyses")
    args = ap.parse_args()
    if (args.work is None) == (args.source is None):
        ap.error("give --work (build) or --from (ship a built zoo)")
    with tempfile.TemporaryDirectory() as tmp:
        if args.source is None:
            build = Lite0Build(Lite0ZooRecipe(), args.work)
            build.train(list(build.recipe.variants))
            zoo = open_zoo(build.write(Path(tmp) / "zoo"), verify=True)
        else:
            shutil.copytree(args.source, Path(tmp) / "zoo")
            zoo = open_zoo(Path(tmp) / "zoo", verify=True)
            if zoo.manifest.source.get("recipe") != Lite0ZooRecipe(seed=zoo.manifest.seed).model_dump(mode="json"):
                sys.exit(f"{args.source}: not written from the current Lite0ZooRecipe")
        if not args.no_warm:
            start = time.perf_counter()
            warm_caches(zoo)
            print(f"caches warmed in {time.perf_counter() - start:.0f} s", flush=True)
        copy_verified(zoo.path, args.out)  # atomically, every file hash-checked in the copy
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"shipped {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
