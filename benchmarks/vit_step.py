"""Measure one CLIP-ViT-B/32-sized fine-tuning step (plain AdamW and SAM) and cost a paper-scale zoo from it.

    python benchmarks/vit_step.py                      # this machine's CPU; writes benchmarks/results/vit_step.json
    python benchmarks/vit_step.py --device cuda        # a GPU, when one is available

The model is timm's ``vit_base_patch32_224`` (the image tower of CLIP ViT-B/32: 12 layers, width 768,
patch 32, 224² input; random weights, nothing downloaded) with a 512-d projection and a frozen linear head,
trained in fp32. Forward FLOPs are counted by ``torch.utils.flop_counter`` (not assumed). A SAM step is two
forward/backward passes. The zoo cost multiplies the measured time per image by the work of the recipe; the
GPU line is an *estimate* from the counted FLOPs (training ≈ 3× forward) at an assumed utilization of a
stated peak, because no GPU was measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

# the paper-scale recipe costed below (a zoo of 8 tasks × {plain, SAM, ASAM} × 3 seeds)
RECIPE = {"tasks": 8, "variants": {"plain": 1, "sam": 2, "asam": 2}, "seeds": 3, "steps": 2000, "batch_size": 128}
# assumed GPU figure: dense bf16 peak and model-FLOP utilization (an estimate, not a measurement)
GPU_ASSUMPTION = {"name": "NVIDIA A100 80GB", "peak_tflops_bf16": 312.0, "mfu": 0.35}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "vit_step.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    from sammerge.training.sam import SAM

    device = torch.device(args.device)
    torch.manual_seed(0)
    encoder = timm.create_model("vit_base_patch32_224", pretrained=False, num_classes=512).to(device)  # 512-d projection
    head = torch.nn.Linear(512, 10).to(device).requires_grad_(False)
    n_params = sum(p.numel() for p in encoder.parameters())
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def loss_fn():
        return F.cross_entropy(head(encoder(x)), y)

    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            encoder(x)
    fwd_flops_per_image = counter.get_total_flops() / args.batch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = {}
    for name in ("plain", "sam"):
        params = list(encoder.parameters())
        opt = (SAM(params, torch.optim.AdamW, rho=0.05, lr=1e-5) if name == "sam"
               else torch.optim.AdamW(params, lr=1e-5))

        def step():
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if name == "sam":
                opt.first_step(zero_grad=True)
                loss_fn().backward()
                opt.second_step(zero_grad=True)
            else:
                opt.step()

        step()  # warm-up
        times = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        results[name] = {"step_s": statistics.median(times), "times_s": times,
                         "s_per_image": statistics.median(times) / args.batch}
        print(f"{name:>5}: {statistics.median(times):.3f} s per step of {args.batch} images "
              f"({results[name]['s_per_image'] * 1000:.0f} ms per image)")

    train_flops = 3 * fwd_flops_per_image  # forward + backward ≈ 3 forwards
    achieved = train_flops / results["plain"]["s_per_image"] / 1e9
    images = RECIPE["steps"] * RECIPE["batch_size"]
    passes = sum(RECIPE["variants"].values()) * RECIPE["tasks"] * RECIPE["seeds"]  # forward/backward passes per image
    jobs = len(RECIPE["variants"]) * RECIPE["tasks"] * RECIPE["seeds"]
    total_image_passes = images * passes
    cpu_hours = total_image_passes * results["plain"]["s_per_image"] / 3600
    gpu = GPU_ASSUMPTION
    gpu_hours = total_image_passes * train_flops / (gpu["peak_tflops_bf16"] * 1e12 * gpu["mfu"]) / 3600
    report = {"device": str(device), "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "load_average": os.getloadavg()[0], "torch": torch.__version__, "timm": timm.__version__,
              "model": "vit_base_patch32_224 (+512-d projection), fp32", "n_params": n_params, "batch": args.batch,
              "repeats": args.repeats, "forward_gflops_per_image": fwd_flops_per_image / 1e9,
              "achieved_train_gflops_per_s": achieved, "steps": results, "recipe": RECIPE,
              "cost": {"finetune_jobs": jobs, "image_passes": total_image_passes, "cpu_hours_this_machine": cpu_hours,
                       "gpu_assumption": gpu, "gpu_hours_estimate": gpu_hours,
                       "gpu_s_per_plain_step_estimate": RECIPE["batch_size"] * train_flops
                       / (gpu["peak_tflops_bf16"] * 1e12 * gpu["mfu"])}}
    print(f"forward {fwd_flops_per_image / 1e9:.2f} GFLOP per image (counted); {achieved:.0f} GFLOP/s achieved in training; "
          f"zoo of {jobs} fine-tuning jobs: {cpu_hours:,.0f} CPU-hours here, ≈ {gpu_hours:,.1f} GPU-hours estimated")
    Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
