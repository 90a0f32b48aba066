"""Time the background build of an EfficientNet-Lite0 zoo (what the zoo builder page runs), 4 real tasks by default.

    python benchmarks/lite0_build.py --out /tmp/lite0-real4 --json benchmarks/results/lite0_build.json \\
        [--compare-study /work/regime_save/real4-tail3-adamw-lr1e-5]

Runs :func:`sammerge.training.lite0_background.build_lite0_zoo` with the default recipe and two lanes, and records
the wall time of each stage (loading + heads, fine-tuning, writing), each fine-tune's own seconds (one torch thread
each), the load average when it started, and the individual accuracies the zoo records. The baseline in the same
run: the sum of the fine-tunes' seconds, i.e. the same units one after another on one core. ``--compare-study``:
a benchmarks/lite0_regime.py ``--save`` directory of the same recipe; every task vector of the build is compared
with the study's (max |difference|), so the study's seed-0 merge numbers are this zoo's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from sammerge.io import load_state_dict
from sammerge.training.lite0_background import build_lite0_zoo
from sammerge.training.lite0_zoo import Lite0ZooRecipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="where the zoo is written (replaced)")
    ap.add_argument("--tasks", nargs="+", default=["mnist", "fashion_mnist", "sklearn_digits", "textures"])
    ap.add_argument("--variants", nargs="+", default=["plain", "sam"])
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--compare-study", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    recipe = Lite0ZooRecipe(tasks=tuple(args.tasks), variants=tuple(args.variants))
    marks: dict[str, float] = {}
    load = os.getloadavg()
    t0 = time.perf_counter()

    def progress(done, total, stage):
        marks.setdefault(stage.split(":")[0].split(" on ")[0], time.perf_counter() - t0)
    build_lite0_zoo(recipe, args.out, lanes=args.lanes, progress=progress)
    wall = time.perf_counter() - t0
    manifest = json.loads((args.out / "zoo.json").read_text())
    units = {f"{c['task']}/{c['variant']}": c["wall_time_s"] for c in manifest["checkpoints"]}
    individual = {v: statistics.mean(c["accuracy"]["test"] for c in manifest["checkpoints"] if c["variant"] == v)
                  for v in recipe.variants}
    pretrained = statistics.mean(c["pretrained_accuracy"]["test"] for c in manifest["checkpoints"]
                                 if c["variant"] == recipe.variants[0])
    fine_tuning_start, write_start = marks.get("fine-tuning", wall), marks.get("writing the zoo", wall)
    row = {"recipe": recipe.model_dump(mode="json"), "lanes": args.lanes, "cpus": os.cpu_count(),
           "load_average_at_start": load, "wall_s": wall, "setup_s": fine_tuning_start,
           "fine_tuning_s": write_start - fine_tuning_start, "write_s": wall - write_start,
           "unit_s": units, "units_sum_s": sum(units.values()), "pretrained_test": pretrained,
           "individual_test": individual, "torch": torch.__version__, "python": platform.python_version()}
    if args.compare_study:
        diffs = {}
        for c in manifest["checkpoints"]:
            ours = load_state_dict(args.out / c["file"])
            theirs = load_state_dict(args.compare_study / f"task_vector-{c['task']}-{c['variant']}.safetensors")
            diffs[f"{c['task']}/{c['variant']}"] = max(float((ours[k].float() - theirs[k].half().float()).abs().max())
                                                       for k in ours)
        row["study"] = {"dir": str(args.compare_study), "max_abs_diff_fp16": diffs}
    print(json.dumps(row, indent=1))
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
