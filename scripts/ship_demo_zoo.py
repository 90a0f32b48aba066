"""Build the shipped demo zoo (``assets/demo_zoo``) with everything its pages show at first open.

    python scripts/ship_demo_zoo.py                 # build the demo preset (seed 0), analyse, ship
    python scripts/ship_demo_zoo.py --from ZOO      # ship an already built demo-preset zoo
    python scripts/ship_demo_zoo.py --check         # rebuild and compare every checkpoint's sha256 with the shipped one
    python scripts/ship_demo_zoo.py --attach-study benchmarks/results/demo_regime.json   # ship the 3-seed study too

What ships: the zoo (θ0, heads, every fine-tuned checkpoint, zoo.json with the recipe, hashes, torch version and
device), its analysis (``sammerge analyze`` defaults), the cached 1-D curve, task plane and random plane the
Sharpness page opens with, the paper table, the explorer's default λ sweeps and the regime diagnostics.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from sammerge.data import load_benchmark
from sammerge.explorer.warm import warm_caches
from sammerge.shipped import SHIPPED_PRESET, copy_verified, shipped_zoo_dir
from sammerge.training.build import build_zoo
from sammerge.models.presets import get_preset
from sammerge.zoo import data_sha256, open_zoo


def check(shipped: Path) -> int:
    """Rebuild the preset and compare every checkpoint hash with the shipped manifest."""
    shipped_zoo = open_zoo(shipped)
    want = shipped_zoo.checkpoint_hashes()
    import torch
    if shipped_zoo.manifest.threads:  # float sums (and so the bytes) depend on the torch thread count
        torch.set_num_threads(int(shipped_zoo.manifest.threads))
    with tempfile.TemporaryDirectory() as tmp:
        rebuilt = build_zoo(get_preset(SHIPPED_PRESET), Path(tmp) / "zoo")
        got = rebuilt.checkpoint_hashes()
    bad = [f for f in want if got.get(f) != want[f]]
    for f in bad:
        print(f"differs: {f} shipped {want[f][:12]}… rebuilt {str(got.get(f))[:12]}…")
    print(f"{len(want) - len(bad)}/{len(want)} files reproduce the shipped sha256")
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", type=Path, default=None, help="an already built demo-preset zoo")
    ap.add_argument("--out", type=Path, default=shipped_zoo_dir())
    ap.add_argument("--check", action="store_true", help="rebuild and compare hashes with the shipped zoo")
    ap.add_argument("--attach-study", type=Path, default=None,
                    help="only attach this seed study to the already shipped zoo (see --seed-study)")
    ap.add_argument("--seed-study", type=Path, default=None,
                    help="a benchmarks/demo_regime.py --json result of this recipe over several seeds: shipped with "
                         "the zoo so the app shows the seed spread (refused unless it is this zoo's recipe)")
    args = ap.parse_args()
    if args.check:
        return check(args.out)
    if args.attach_study is not None:
        from sammerge.analytics.seed_study import attach_study
        path = attach_study(open_zoo(args.out), json.loads(args.attach_study.read_text()))
        path.chmod(0o644)
        print(f"seed study: {path}")
        return 0
    recipe = get_preset(SHIPPED_PRESET)
    fingerprint = recipe.fingerprint(data_sha256(load_benchmark()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "zoo"
        if args.source is None:
            print(f"building the {SHIPPED_PRESET} preset …", flush=True)
            build_zoo(recipe, work)
        else:
            shutil.copytree(args.source, work)
        zoo = open_zoo(work, verify=True)
        if zoo.manifest.recipe_fingerprint != fingerprint:
            sys.exit(f"{args.source}: not built from the current '{SHIPPED_PRESET}' recipe "
                     f"(fingerprint {zoo.manifest.recipe_fingerprint[:12]}…, expected {fingerprint[:12]}…)")
        warm_caches(zoo)
        if args.seed_study is not None:
            from sammerge.analytics.seed_study import attach_study
            print(f"seed study: {attach_study(zoo, json.loads(args.seed_study.read_text()))}", flush=True)
        copy_verified(work, args.out)  # atomically, every file hash-checked in the copy
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"shipped {args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
