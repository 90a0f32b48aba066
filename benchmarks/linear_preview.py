"""The exact preview of a linearized zoo against evaluating each merged model.

    python benchmarks/linear_preview.py ZOO_DIR [--updates 20] [--threads N] [--json FILE]
    python benchmarks/linear_preview.py --build PRESET --out DIR   # build PRESET with finetune.linearized first

For a linearized zoo (recipe ``finetune.linearized``) the explorer scores a merge as f(θ0) + Σ_t c_t J τ_t from
precomputed f(θ0) and J τ_t (``sammerge.evaluation.linear_preview``), stored with the zoo
(``sammerge.evaluation.preview_cache``). Measured on the explorer's images: the one-off precomputation from cold
(the zoo's stored preview removed first; what the background job or ``sammerge preview`` does), loading it from the
disk cache into an explorer, one slider update (task arithmetic with a new λ and
new per-task λ_t) through the preview and through the exact path (merge the weights, evaluate the linearized
model), and their agreement.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from sammerge.evaluation.evaluator import Evaluator
from sammerge.evaluation.preview_cache import preview_path, precompute_preview
from sammerge.explorer.instant_preview import InstantPreview
from sammerge.evaluation.subset import EvalSubset
from sammerge.explorer.service import Explorer
from sammerge.merging import LAMBDA, MergeSpec, merge_zoo
from sammerge.zoo import open_zoo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("zoo", nargs="?", type=Path)
    ap.add_argument("--build", default=None, help="build this preset with finetune.linearized into --out first")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.build:
        from sammerge.training.build import build_zoo
        from sammerge.models.presets import get_preset
        recipe = get_preset(args.build)
        recipe = recipe.model_copy(update={"finetune": recipe.finetune.model_copy(update={"linearized": True})})
        zoo = build_zoo(type(recipe).model_validate(recipe.model_dump()), args.out, overwrite=True)
    else:
        zoo = open_zoo(args.zoo)
    if not zoo.manifest.linearized:
        sys.exit(f"{zoo.path}: not a linearized zoo (build one with --build PRESET --out DIR)")
    subset = EvalSubset()  # the explorer's images
    preview_path(zoo, subset).unlink(missing_ok=True)
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    # cold (a fresh process): the evaluation images, f(θ0) and one J τ_t per checkpoint, written to the zoo's cache
    precompute_preview(zoo, subset, progress=lambda done, total, stage="": stages.setdefault(stage, time.perf_counter()))
    precompute = time.perf_counter() - t0
    marks = list(stages.values())
    images_s, jvp_s = marks[1] - marks[0], marks[-1] - marks[1]  # loading images; f(θ0) and the J τ_t
    ex = Explorer(zoo)  # a new explorer finds the stored preview: no job
    if ex.preview is None or ex.instant.task is not None:
        sys.exit(f"{zoo.path}: the explorer did not load the stored preview ({ex.instant.describe()})")
    ex.prefetch_enabled = False
    loads = []
    for _ in range(5):
        t0 = time.perf_counter()
        InstantPreview(zoo, ex.evaluator, subset, background=False).get()
        loads.append(time.perf_counter() - t0)
    exact_ev = Evaluator.from_zoo(zoo, split=ex.split, n_per_task=ex.n_per_task, seed=ex.seed)
    gen = torch.Generator().manual_seed(0)
    variants = {t: zoo.variants[i % len(zoo.variants)] for i, t in enumerate(zoo.tasks)}
    specs = [MergeSpec.for_zoo(zoo, "task_arithmetic", {LAMBDA: round(float(torch.rand(1, generator=gen)), 3)},
                               variants, {t: round(0.5 + float(torch.rand(1, generator=gen)), 3) for t in zoo.tasks})
             for _ in range(args.updates)]
    preview_t, exact_t, same, loss_diff = [], [], 0, 0.0
    for spec in specs:
        t0 = time.perf_counter()
        got = ex.evaluate(spec)
        preview_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        want = exact_ev.evaluate(merge_zoo(zoo, spec))
        exact_t.append(time.perf_counter() - t0)
        same += all(got[t].accuracy == want[t].accuracy for t in zoo.tasks)
        loss_diff = max(loss_diff, max(abs(got[t].loss - want[t].loss) for t in zoo.tasks))
    assert ex.preview.jvp_count == 0 and ex.evaluator.forward_count == 0, "an update recomputed a JVP or a forward"
    n = len(specs)
    report = {"zoo": zoo.path.name, "tasks": len(zoo.tasks), "images_per_task": ex.n_per_task, "updates": n,
              "jvps": len(zoo.tasks) * len(zoo.variants), "precompute_cold_s": precompute,
              "precompute_images_s": images_s, "precompute_forward_and_jvps_s": jvp_s,
              "cache_bytes": preview_path(zoo, subset).stat().st_size,
              "load_ms": 1e3 * statistics.median(loads),
              "preview_update_ms": 1e3 * statistics.median(preview_t), "exact_update_ms": 1e3 * statistics.median(exact_t),
              "updates_with_identical_accuracy": same, "max_abs_loss_difference": loss_diff,
              "threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2),
              "cpus": os.cpu_count()}
    print(f"{zoo.path.name}: precompute (cold) {precompute:.2f} s: images {images_s:.2f} s, f(θ0) and "
          f"{report['jvps']} J·τ {jvp_s:.2f} s ({report['cache_bytes'] / 2**20:.1f} MiB on disk); load from the disk cache {report['load_ms']:.1f} ms "
          f"(read, checked, handed to the explorer's evaluator); one update: preview {report['preview_update_ms']:.1f} ms vs "
          f"exact {report['exact_update_ms']:.1f} ms (median of {n}); identical per-task accuracy in {same}/{n} "
          f"updates, max |Δloss| {loss_diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
