"""Slider-to-number time for a ViT-B/32-sized CLIP encoder (random weights) on this machine's CPU.

    python benchmarks/cpu_vit.py                    # ViT-B/32 CLIP (timm vit_base_patch32_clip_quickgelu_224)
    python benchmarks/cpu_vit.py --quick            # a tiny ViT: checks the script end to end (CI)

One "slider move" = what the explorer does when λ changes: merge θ = θ0 + λ Σ_t τ_t over T task vectors
(the registry's ``task_arithmetic``, validate=False as the explorer calls it; also timed: the same θ as one
axpy θ0 + λ·S from a cached S = Σ_t τ_t), then ``Evaluator.evaluate`` on N images per task (all tasks in one
forward pass, each task's normalized CLIP head). Measured at several image budgets N, with the 95 % Wilson
half-width an accuracy estimate from N images per task has (at 50 % accuracy, the widest case), per task
and for the mean over tasks. Also: one Hessian-vector product (the unit of λ_max / trace analytics) on a
16-image batch with timm's fused attention off (double backward needs the plain attention path).
Random weights and random images: the timings do not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import timm
import torch

from sammerge.evaluation.estimate import wilson_interval
from sammerge.evaluation.evaluator import Evaluator
from sammerge.merging import get_method
from sammerge.training.model import Head

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(model="vit_base_patch32_clip_quickgelu_224", kwargs={"num_classes": 512}, image=224, tasks=8,
            budgets=[8, 32, 64], repeats=2)
QUICK = dict(model="vit_base_patch32_clip_224", kwargs={"num_classes": 16, "img_size": 32, "patch_size": 8,
                                                          "embed_dim": 32, "depth": 2, "num_heads": 2},
             image=32, tasks=3, budgets=[4, 8], repeats=2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/cpu_vit.json; "
                                                             "--quick writes nothing unless given)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = timm.create_model(cfg["model"], pretrained=False, **cfg["kwargs"]).eval()
    theta0 = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    n_params = sum(v.numel() for v in theta0.values())
    gen = torch.Generator().manual_seed(1)
    tvs = [{k: 1e-3 * torch.randn(v.shape, generator=gen) for k, v in theta0.items()} for _ in range(cfg["tasks"])]
    dim = cfg["kwargs"]["num_classes"]
    heads = {f"t{i}": Head(torch.randn(10, dim, generator=gen), torch.zeros(10), normalize=True)
             for i in range(cfg["tasks"])}
    method = get_method("task_arithmetic")
    tau_sum = {k: torch.stack([tv[k] for tv in tvs]).sum(0) for k in theta0}
    rows = []
    for n in cfg["budgets"]:
        data = {t: (torch.randn(n, 3, cfg["image"], cfg["image"], generator=gen), torch.randint(0, 10, (n,), generator=gen))
                for t in heads}
        ev = Evaluator(encoder, heads, data, device="cpu")
        merge_s, eval_s, axpy_s = [], [], []
        for r in range(cfg["repeats"]):
            lam = 0.3 + 0.01 * r
            t0 = time.perf_counter()
            merged = method(theta0, tvs, validate=False, **{"lambda": lam})  # as the explorer merges
            t1 = time.perf_counter()
            ev.evaluate(merged)
            t2 = time.perf_counter()
            # the same θ from a cached Σ_t τ_t (task set fixed, only λ moves): one axpy per tensor
            fast = {k: torch.add(theta0[k], tau_sum[k], alpha=lam) for k in theta0}
            t3 = time.perf_counter()
            merge_s.append(t1 - t0)
            eval_s.append(t2 - t1)
            axpy_s.append(t3 - t2)
            assert max(float((fast[k] - merged[k]).abs().max()) for k in theta0) < 1e-5
        images = n * cfg["tasks"]
        total = statistics.median(m + e for m, e in zip(merge_s, eval_s))
        rows.append({"images_per_task": n, "images": images, "merge_s": statistics.median(merge_s), "merge_cached_sum_s": statistics.median(axpy_s),
                     "evaluate_s": statistics.median(eval_s), "slider_to_number_s": total,
                     "images_per_s": images / statistics.median(eval_s),
                     "ci95_half_width_task": wilson_interval(n // 2, n).half_width,
                     "ci95_half_width_mean": wilson_interval(images // 2, images).half_width})
        print(f"N = {n:4d}/task ({images:5d} images): merge {rows[-1]['merge_s']:.2f} s "
              f"(cached Σ τ: {rows[-1]['merge_cached_sum_s']:.2f} s) + evaluate "
              f"{rows[-1]['evaluate_s']:.2f} s = {total:.2f} s  ({rows[-1]['images_per_s']:.1f} img/s); "
              f"95% CI ± {100 * rows[-1]['ci95_half_width_task']:.1f} pts per task, "
              f"± {100 * rows[-1]['ci95_half_width_mean']:.1f} pts on the mean", flush=True)

    # one Hessian-vector product on 16 images (fused attention off for double backward)
    from sammerge.analytics.sharpness import hvp, task_loss_fn
    timm.layers.set_fused_attn(False)
    hv_encoder = timm.create_model(cfg["model"], pretrained=False, **cfg["kwargs"]).eval()
    x = torch.randn(16, 3, cfg["image"], cfg["image"], generator=gen)
    y = torch.randint(0, 10, (16,), generator=gen)
    loss_fn = task_loss_fn(hv_encoder, heads["t0"], x, y)
    v = {k: torch.randn(t.shape, generator=gen) for k, t in theta0.items() if t.is_floating_point()}
    t0 = time.perf_counter()
    hvp(loss_fn, theta0, v)
    hvp_s = time.perf_counter() - t0
    print(f"one Hessian-vector product on 16 images: {hvp_s:.2f} s", flush=True)

    report = {"model": cfg["model"], "kwargs": cfg["kwargs"], "parameters": n_params, "image_size": cfg["image"],
              "tasks": cfg["tasks"], "repeats": cfg["repeats"], "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "load_average_1min_at_end": os.getloadavg()[0], "torch": torch.__version__, "seed": 0,
              "rows": rows, "hvp_16_images_s": hvp_s, "quick": args.quick}
    out = args.json or (None if args.quick else ROOT / "benchmarks" / "results" / "cpu_vit.json")
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
