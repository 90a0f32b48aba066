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

The explorer path (``--only explorer`` runs just this part and keeps the other numbers of the results file): the
same architecture imported as a zoo (``sammerge.importing``: random θ0, fine-tuned checkpoints θ0 + noise, random
image folders) and opened by the explorer's engine (``sammerge.explorer.Explorer``) with an image budget N per
task. One slider move = ``first_look`` (the first number: an estimate from the first k images per task with its 95 %
Wilson interval when the measured throughput says an exact evaluation would take longer than the latency target),
then ``compare(allow_estimate=True)`` (the page's twins and references), then the background refinement until the
exact numbers of the move are ready (``wait_prefetched``). The first move pays the one-time costs (throughput
probe, θ0 and the fine-tuned models on the estimate's images, the exact references); later moves only the merge
and its evaluations.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch

from sammerge.evaluation.estimate import wilson_interval
from sammerge.evaluation.evaluator import Evaluator
from sammerge.merging import get_method
from sammerge.models.model import Head

ROOT = Path(__file__).resolve().parents[1]
FULL = dict(model="vit_base_patch32_clip_quickgelu_224", kwargs={"num_classes": 512}, image=224, tasks=8,
            budgets=[8, 32, 64], repeats=2,
            # the explorer path, reduced to fit a shared 2-core CPU: 2 tasks × {plain, sam}, N = 32, k = 8
            explorer=dict(tasks=2, n_per_task=32, estimate_n=8, moves=[0.3, 0.35], latency_target_s=0.3))
QUICK = dict(model="vit_base_patch32_clip_224", kwargs={"num_classes": 16, "img_size": 32, "patch_size": 8,
                                                          "embed_dim": 32, "depth": 2, "num_heads": 2},
             image=32, tasks=3, budgets=[4, 8], repeats=2,
             # a tiny model is fast: a latency target of 0 takes the estimate path anyway (what CI checks)
             explorer=dict(tasks=2, n_per_task=8, estimate_n=4, moves=[0.3, 0.35], latency_target_s=0.0))


def write_user_files(root: Path, cfg: dict, ex_cfg: dict) -> Path:
    """Random θ0, fine-tuned checkpoints θ0 + 1e-3·noise ({plain, sam} per task), 10-class heads and PNG folders
    (N val and 10 test images per task) in the user layout ``sammerge zoo import`` reads; returns the spec file."""
    import numpy as np
    import yaml
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(0)
    base = timm.create_model(cfg["model"], pretrained=False, **cfg["kwargs"]).eval()
    theta0 = {k: v.detach().contiguous() for k, v in base.state_dict().items()}
    save_file(theta0, str(root / "base.safetensors"))
    gen, rng = torch.Generator().manual_seed(2), np.random.default_rng(3)
    dim, tasks = cfg["kwargs"]["num_classes"], {}
    per_class = {"val": -(-ex_cfg["n_per_task"] // 10), "test": 1}
    for i in range(ex_cfg["tasks"]):
        task = f"t{i}"
        save_file({"weight": torch.randn(10, dim, generator=gen), "bias": torch.zeros(10)},
                  str(root / f"head_{task}.safetensors"))
        ckpts = {}
        for variant in ("plain", "sam"):
            state = {k: (v + 1e-3 * torch.randn(v.shape, generator=gen)).contiguous() for k, v in theta0.items()}
            save_file(state, str(root / f"{task}_{variant}.safetensors"))
            ckpts[variant] = f"{task}_{variant}.safetensors"
        for split, n in per_class.items():
            for c in range(10):
                folder = root / "data" / task / split / f"class{c}"
                folder.mkdir(parents=True, exist_ok=True)
                for j in range(n):
                    Image.fromarray(rng.integers(0, 256, (cfg["image"], cfg["image"], 3), dtype=np.uint8)).save(
                        folder / f"{j}.png")
        tasks[task] = {"head": f"head_{task}.safetensors", "data": f"data/{task}", "checkpoints": ckpts}
    spec = {"format": "timm", "model": cfg["model"], "model_kwargs": cfg["kwargs"], "pretrained": "base.safetensors",
            "preprocess": {"size": cfg["image"], "crop": cfg["image"]}, "tasks": tasks}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return root / "spec.yaml"


def explorer_path(cfg: dict) -> dict:
    """Slider-to-number through the explorer's engine on an imported zoo: first (estimated) and refined numbers."""
    from sammerge.explorer.service import Explorer
    from sammerge.importing import import_zoo, load_import_spec
    from sammerge.merging import LAMBDA

    ex_cfg = cfg["explorer"]
    with tempfile.TemporaryDirectory(prefix="sammerge-cpu-vit-") as tmp:
        t0 = time.perf_counter()
        spec_file = write_user_files(Path(tmp), cfg, ex_cfg)
        zoo = import_zoo(load_import_spec(spec_file), Path(tmp) / "zoo")
        setup_s = time.perf_counter() - t0
        ex = Explorer(zoo, n_per_task=ex_cfg["n_per_task"], estimate_n_per_task=ex_cfg["estimate_n"],
                      latency_target_s=ex_cfg["latency_target_s"], cache_size=4)
        ex.prefetch_enabled = False  # the page's prefetch of the next steps would compete with the refinement
        moves = []
        for lam in ex_cfg["moves"]:
            spec = ex.default_spec().with_params(**{LAMBDA: lam})
            start = time.perf_counter()
            look = ex.first_look(spec)
            first_s = time.perf_counter() - start
            cmp = ex.compare(spec, allow_estimate=True)
            page_s = time.perf_counter() - start
            assert ex.wait_prefetched(timeout=3600), "the refinement did not finish within an hour"
            refined_s = time.perf_counter() - start
            exact = ex.first_look(spec)
            assert exact.exact
            iv = look.intervals["mean"]
            moves.append({"lambda": lam, "first_number_s": first_s, "estimated_page_s": page_s,
                          "refined_s": refined_s, "first_exact": look.exact, "page_exact": cmp.exact,
                          "first_text": look.text(), "first_mean": iv.estimate, "ci95": [iv.low, iv.high],
                          "exact_mean": exact.summary.mean,
                          "exact_within_ci95": iv.low <= exact.summary.mean <= iv.high})
            print(f"λ = {lam:g}: first number {first_s:.2f} s ({look.text()}), estimated page {page_s:.2f} s, "
                  f"refined {refined_s:.2f} s (exact {exact.summary.mean:.1%})", flush=True)
        return {"tasks": ex_cfg["tasks"], "variants": list(zoo.variants), "n_per_task": ex.images_per_task(),
                "estimate_n_per_task": ex.estimate_size(), "latency_target_s": ex.latency_target_s,
                "images_per_s": ex.images_per_s, "predicted_exact_s": ex.estimates.predicted_exact_s(),
                "estimating": ex.estimating(), "zoo_setup_s": setup_s, "moves": moves,
                "threads": torch.get_num_threads(), "load_average_1min_at_end": os.getloadavg()[0],
                "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["explorer"], default=None,
                    help="run only the explorer path and keep the other numbers already in the results file")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/cpu_vit.json; "
                                                             "--quick writes nothing unless given)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.json or (None if args.quick else ROOT / "benchmarks" / "results" / "cpu_vit.json")
    if args.only == "explorer":
        if out is None or not out.is_file():
            raise SystemExit(f"--only explorer updates an existing results file ({out or 'give --json'})")
        report = json.loads(out.read_text(encoding="utf-8"))
        report["explorer"] = explorer_path(cfg)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        return 0
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

    explorer = explorer_path(cfg)  # (before the HVP, which turns timm's fused attention off process-wide)

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
              "rows": rows, "hvp_16_images_s": hvp_s, "explorer": explorer, "quick": args.quick}
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
