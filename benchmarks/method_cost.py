"""Cost of each merge method's merged direction τ_merged (what a parameter change costs in the explorer; a λ move
then only rescales it), on the demo zoo and on ViT-B/32-sized random task vectors.

    python benchmarks/method_cost.py --json benchmarks/results/method_cost.json            # 8 tasks, 1 ViT block
    python benchmarks/method_cost.py --blocks 12 --json ...                                 # the whole encoder
    python benchmarks/method_cost.py --quick                                                # CI smoke run

ViT-B/32 shapes (timm ``vit_base_patch32_224``): patch embedding [768, 3, 32, 32], position embedding [1, 50, 768],
per block qkv [2304, 768], proj [768, 768], fc1 [3072, 768], fc2 [768, 3072] with biases and two LayerNorms. With
``--blocks`` below 12 the whole-encoder time is extrapolated (embeddings measured once, blocks × 12 / blocks) and
labelled as such. WUDI is also timed against its naive form (FusionBench's: autograd through the T products
(τ − τ_t) τ_tᵀ each step) on one fc1 layer, same iterations, same machine, same run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from sammerge.merging import get_method, table_methods

WIDTH, MLP, PATCH = 768, 3072, 32


def vit_b32_shapes(blocks: int) -> dict[str, tuple[int, ...]]:
    shapes = {"patch_embed.proj.weight": (WIDTH, 3, PATCH, PATCH), "patch_embed.proj.bias": (WIDTH,),
              "cls_token": (1, 1, WIDTH), "pos_embed": (1, 50, WIDTH), "norm.weight": (WIDTH,), "norm.bias": (WIDTH,)}
    for b in range(blocks):
        p = f"blocks.{b}."
        shapes.update({p + "norm1.weight": (WIDTH,), p + "norm1.bias": (WIDTH,),
                       p + "attn.qkv.weight": (3 * WIDTH, WIDTH), p + "attn.qkv.bias": (3 * WIDTH,),
                       p + "attn.proj.weight": (WIDTH, WIDTH), p + "attn.proj.bias": (WIDTH,),
                       p + "norm2.weight": (WIDTH,), p + "norm2.bias": (WIDTH,),
                       p + "mlp.fc1.weight": (MLP, WIDTH), p + "mlp.fc1.bias": (MLP,),
                       p + "mlp.fc2.weight": (WIDTH, MLP), p + "mlp.fc2.bias": (WIDTH,)})
    return shapes


def random_zoo(shapes, tasks: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    theta0 = {k: 0.02 * torch.randn(s, generator=g) for k, s in shapes.items()}
    tvs = [{k: 1e-3 * torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(tasks)]
    return theta0, tvs


def time_direction(name: str, theta0, tvs, task_ids, params=None, statistics=None) -> float:
    method = get_method(name)
    t0 = time.perf_counter()
    if method.lambda_is_scale:
        method.direction(theta0, tvs, task_ids=task_ids, statistics=statistics, **(params or {}))
    else:
        method(theta0, tvs, task_ids=task_ids, validate=False, statistics=statistics, **(params or {}))
    return time.perf_counter() - t0


def synthetic_statistics(name: str, theta0, tasks: int) -> list[dict] | None:
    """Random statistics of the right shapes for the ViT-sized timing (RegMean: an input Gram per weight matrix,
    Fisher: a positive value per entry); None for methods that read no data."""
    if not get_method(name).needs_data:
        return None
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(tasks):
        if name == "regmean":
            grams = {}
            for k, v in theta0.items():
                if v.ndim in (2, 4):
                    d = v[0].numel()
                    x = torch.randn(2 * d, d, generator=g)
                    grams[k] = x.T @ x / (2 * d)
            out.append(grams)
        else:
            out.append({k: torch.rand(v.shape, generator=g) for k, v in theta0.items()})
    return out


def wudi_naive_vs_closed_form(iterations: int, tasks: int) -> dict:
    """One fc1 layer: FusionBench's autograd loop against sammerge's closed-form gradient."""
    from sammerge.merging.modern.wudi import wudi_matrix
    g = torch.Generator().manual_seed(1)
    mats = [1e-3 * torch.randn(MLP, WIDTH, generator=g) for _ in range(tasks)]
    t0 = time.perf_counter()
    ours = wudi_matrix(mats, iterations, 1e-5)
    closed = time.perf_counter() - t0
    tvs = torch.stack(mats)
    tau = torch.nn.Parameter(tvs.sum(0))
    opt = torch.optim.Adam([tau], lr=1e-5, weight_decay=0)
    norms = tvs.reshape(tasks, -1).norm(dim=-1).square()
    t0 = time.perf_counter()
    for _ in range(iterations):
        loss = ((torch.matmul(tau.unsqueeze(0) - tvs, tvs.transpose(1, 2))).square() / norms.view(-1, 1, 1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    naive = time.perf_counter() - t0
    return {"layer": [MLP, WIDTH], "iterations": iterations, "tasks": tasks, "closed_form_s": closed,
            "naive_autograd_s": naive, "speedup": naive / closed,
            "max_abs_diff": float((ours - tau.detach()).abs().max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--blocks", type=int, default=1, help="ViT blocks measured (12 = the whole encoder)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few iterations (CI smoke run)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--zoo", type=Path, default=None, help="the zoo to time (default: the shipped demo zoo)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from sammerge.shipped import shipped_zoo_dir
    from sammerge.zoo import open_zoo

    out = {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "load_average": os.getloadavg()[0], "quick": args.quick, "demo": {}, "vit": {}}
    # -- the demo zoo, or --zoo (its SAM checkpoints, every task)
    zoo = open_zoo(args.zoo or shipped_zoo_dir())
    variant = "sam" if "sam" in zoo.variants else zoo.variants[-1]
    theta0 = zoo.pretrained()
    tvs = [zoo.task_vector(t, variant) for t in zoo.tasks]
    ids = [f"{t}/{variant}" for t in zoo.tasks]
    out["demo"]["zoo"] = zoo.manifest.name
    out["demo"]["tasks"] = len(tvs)
    out["demo"]["parameters"] = sum(v.numel() for v in theta0.values() if v.is_floating_point())
    for name in table_methods(len(tvs)):
        params = {"iterations": 20} if (args.quick and name == "wudi") else None
        out["demo"][name] = time_direction(name, theta0, tvs, ids, params)
    out["demo_statistics"] = {}
    splits = getattr(zoo.manifest.images, "splits", None)  # a zoo that stores only val / test images
    data_params = {"image_split": "val"} if splits and "train" not in splits else {}
    out["demo_statistics_split"] = data_params.get("image_split", "train")
    for name in [m for m in table_methods(len(tvs), with_data=True) if get_method(m).needs_data]:
        t0 = time.perf_counter()  # computing the statistics: forward (and, Fisher, backward) passes of each model
        stats = [get_method(name).statistics(zoo, t, variant, get_method(name).validate_params(data_params))
                 for t in zoo.tasks]
        out["demo_statistics"][name] = time.perf_counter() - t0
        out["demo"][name] = time_direction(name, theta0, tvs, ids, None, stats)
    # -- ViT-B/32-sized random task vectors
    blocks = 1 if args.quick else args.blocks
    shapes = vit_b32_shapes(blocks)
    if args.quick:
        shapes = {k: tuple(max(1, d // 8) for d in s) for k, s in shapes.items()}
    theta0, tvs = random_zoo(shapes, args.tasks)
    ids = [str(i) for i in range(args.tasks)]
    embed = {k: s for k, s in shapes.items() if not k.startswith("blocks.")}
    e0, etv = {k: theta0[k] for k in embed}, [{k: tv[k] for k in embed} for tv in tvs]
    out["vit"].update(tasks=args.tasks, blocks=blocks,
                      parameters=sum(v.numel() for v in theta0.values()),
                      parameters_full=sum(int(torch.Size(s).numel()) for s in vit_b32_shapes(12).values()))
    methods = {}
    for name in table_methods(args.tasks, with_data=True):
        params = {"iterations": 20} if (args.quick and name == "wudi") else None
        stats = synthetic_statistics(name, theta0, args.tasks)
        total = time_direction(name, theta0, tvs, ids, params, stats)
        estats = None if stats is None else [{k: s[k] for k in embed if k in s} for s in stats]
        embed_s = time_direction(name, e0, etv, ids, params, estats) if blocks < 12 else 0.0
        methods[name] = {"measured_s": total, "encoder_s": (embed_s + (total - embed_s) * 12 / blocks
                                                            if blocks < 12 else total),
                         "extrapolated": blocks < 12}
        print(f"{name:<16} {total:8.2f} s measured ({blocks} block(s)); encoder ≈ {methods[name]['encoder_s']:.1f} s",
              flush=True)
    out["vit"]["methods"] = methods
    out["wudi_gradient"] = wudi_naive_vs_closed_form(5 if args.quick else 10, args.tasks)
    print(json.dumps(out["wudi_gradient"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


def markdown(r: dict) -> str:
    demo, vit = r["demo"], r["vit"]
    names = list(vit["methods"])
    label = "demo zoo" if demo.get("zoo", "demo").startswith("demo") else f"zoo `{demo['zoo']}`"
    lines = [f"{r['threads']} torch thread(s), machine load average {r['load_average']:.1f}; {label}: {demo['tasks']} "
             f"tasks × {demo['parameters']:,} parameters; ViT-B/32-sized: {vit['tasks']} random task vectors, "
             f"{vit['blocks']} of 12 blocks measured ({vit['parameters']:,} of {vit['parameters_full']:,} parameters)"
             + (", the whole encoder extrapolated (embeddings + blocks × 12 / measured blocks)." if vit['blocks'] < 12
                else "."), "",
             f"| method | {label} (s) | ViT-B/32 sizes, measured (s) | whole encoder (s) |", "|---|---|---|---|"]
    for name in names:
        m = vit["methods"][name]
        lines.append(f"| `{name}` | {demo.get(name, float('nan')):.3f} | {m['measured_s']:.2f} | "
                     f"{'≈ ' if m['extrapolated'] else ''}{m['encoder_s']:.1f} |")
    stats = r.get("demo_statistics", {})
    if stats:
        lines += ["", f"Data methods: the {label}'s unlabeled-image statistics (once per variant, then kept in memory) "
                  "took " + ", ".join(f"`{k}` {v:.1f} s" for k, v in stats.items()) + " for its "
                  f"{demo['tasks']} tasks (256 {r.get('demo_statistics_split', 'train')} images each, forward passes; "
                  "Fisher also backward). The ViT-sized "
                  "rows time the merge with random statistics of the right shapes; computing real ones there needs "
                  "256 forward passes per task."]
    w = r["wudi_gradient"]
    lines += ["", f"WUDI's closed-form gradient vs its naive autograd form (FusionBench's) on one "
              f"{w['layer'][0]}×{w['layer'][1]} layer, {w['tasks']} tasks, {w['iterations']} Adam steps: "
              f"{w['closed_form_s']:.2f} s vs {w['naive_autograd_s']:.2f} s ({w['speedup']:.1f}×), "
              f"max |difference| {w['max_abs_diff']:.1e}."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
