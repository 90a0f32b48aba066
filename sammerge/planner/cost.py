"""The cost side of a plan: what each fine-tuning variant cost to train (the zoo's records) and what serving the
tasks costs with separate models vs the plan's merged groups (weights and measured throughput on this machine).

Training, per variant: measured wall time summed over its tasks, optimizer steps, and forward-backward passes
(SAM and ASAM take two per step). Serving: one encoder per group; each request runs its task's encoder and head.
Throughput is measured here: N images through one encoder (any merged group serves all its tasks with one forward,
T heads after it) vs the same images through T separate encoders, one per task. With ``requests_per_day`` and
``gpu_hour_cost`` the daily cost of each option follows as requests / throughput × price.
"""
from __future__ import annotations

import time

import torch

from sammerge.planner.plan import Plan

__all__ = ["training_cost", "serving_cost"]


def training_cost(zoo) -> dict[str, dict[str, float]]:
    """variant → wall time (s), steps and forward-backward passes, summed over the zoo's tasks."""
    out = {}
    for v in zoo.variants:
        recs = [zoo.manifest.checkpoint(t, v) for t in zoo.tasks]
        steps = sum(int((r.method or {}).get("steps") or 0) for r in recs)
        sam = any((r.method or {}).get("sam") for r in recs)
        out[v] = {"wall_time_s": sum(float(r.wall_time_s or 0.0) for r in recs), "steps": steps,
                  "forward_backward_passes": steps * (2 if sam else 1)}
    return out


def _images_per_s(encoder, head_groups, images, repeats: int = 3) -> float:
    """Images per second when each image gets every task's prediction: one encoder forward per group of heads."""
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for heads in head_groups:
                feats = encoder(images)
                for head in heads:
                    head(feats)
            best = min(best, time.perf_counter() - start)
    return len(images) / best


def serving_cost(zoo, plan: Plan, n_images: int = 256, requests_per_day: float | None = None,
                 gpu_hour_cost: float | None = None) -> dict:
    """Serving every task on each image: T separate encoders (T forwards per image) vs the plan's groups (one forward
    per group) vs everything merged (one forward, T heads) — measured images per second on this machine, parameters
    and weight memory; with ``requests_per_day`` (images) and ``gpu_hour_cost`` the compute cost per day."""
    theta0 = zoo.pretrained()
    params = sum(v.numel() for v in theta0.values() if v.is_floating_point())
    nbytes = sum(v.numel() * v.element_size() for v in theta0.values())
    images = torch.cat([zoo.split(t, "test").images[: max(1, n_images // len(zoo.tasks))] for t in zoo.tasks])
    encoder = zoo.create_encoder(fused_attention=True)
    options = {"separate": [[zoo.heads[t]] for t in zoo.tasks],
               "plan": [[zoo.heads[t] for t in g.tasks] for g in plan.groups],
               "one merged model": [[zoo.heads[t] for t in zoo.tasks]]}
    out = {"parameters_per_encoder": params, "bytes_per_encoder": nbytes, "images": len(images),
           "threads": torch.get_num_threads(), "options": {}}
    for name, groups in options.items():
        rate = _images_per_s(encoder, groups, images)
        row = {"encoders": len(groups), "weights_bytes": nbytes * len(groups), "images_per_s": rate}
        if requests_per_day and gpu_hour_cost:
            row["cost_per_day"] = requests_per_day / rate / 3600 * gpu_hour_cost
        out["options"][name] = row
    return out
