"""Build a zoo and time the merge/evaluation engine and the analytics on one device (CUDA or CPU).

    python benchmarks/gpu.py                       # demo zoo on CUDA when available; writes benchmarks/results/gpu.json
    python benchmarks/gpu.py --device cpu --short  # tiny zoo, few repeats: the CI check (well under a minute)

Rows: the zoo build (job graph, local backend) and its stages; one slider update (merge θ0 + λ Σ τ_t, then
evaluate every task's validation subset) with ``Evaluator(precision="fp32")`` and ``precision="bf16"`` (bf16
autocast of the encoder forward; the share of images whose prediction agrees with fp32 and the largest per-task
accuracy difference, so it is clear whether bf16 is safe for the numbers shown); fine-tuning steps with
``FinetuneRecipe.precision`` fp32 and bf16; a 21-point shared-λ grid (``Evaluator.evaluate_many``, loop and vmap
strategies); the top Hessian eigenvalue (Lanczos) of one checkpoint; a task plane. Times are medians over ``--repeats``; CUDA work is synchronized before each clock.
Every number printed is measured in this run; nothing is extrapolated.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one warm-up call), and its last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def predictions(ev, params) -> torch.Tensor:
    """Predicted class of every evaluation image (task order), from the evaluator's own forward pass."""
    with torch.inference_mode():
        feats = ev.features(params)
        return torch.cat([ev.heads[t](feats[ev.slices[t]]).argmax(1) for t in ev.tasks]).cpu()


def finetune_seconds(zoo, task: str, precision: str, steps: int, device: torch.device) -> float:
    """Wall time of ``steps`` fine-tuning steps (plain AdamW, the zoo's batch size) of θ0 on ``task``."""
    from sammerge.models.presets import VariantSpec
    from sammerge.training.train import finetune

    recipe = zoo.manifest.recipe.finetune.model_copy(update={"steps": steps, "precision": precision})
    data = zoo.split(task, "train")
    warm = recipe.model_copy(update={"steps": 2})  # one untimed warm-up run (kernels, allocator)
    finetune(zoo.create_encoder().to(device), zoo.heads[task], data, warm, VariantSpec(name="plain"),
             torch.Generator().manual_seed(0))
    encoder = zoo.create_encoder().to(device)
    _sync(device)
    t0 = time.perf_counter()
    finetune(encoder, zoo.heads[task], data, recipe, VariantSpec(name="plain"), torch.Generator().manual_seed(0))
    _sync(device)
    return time.perf_counter() - t0




def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1")
    ap.add_argument("--short", action="store_true", help="tiny preset, small analytics, 3 repeats (CI on CPU)")
    ap.add_argument("--preset", default=None, help="zoo preset (default: demo; tiny with --short)")
    ap.add_argument("--zoo", default=None, help="time an existing zoo instead of building one")
    ap.add_argument("--out", default=None, help="where to build the zoo (default: a temporary directory)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="results file (default: benchmarks/results/gpu.json unless --short)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sammerge.analytics.landscape import grid, task_plane
    from sammerge.analytics.sharpness import task_loss_fn, top_eigenvalues
    from sammerge.evaluation.evaluator import Evaluator, mean_accuracy
    from sammerge.evaluation.search import lambda_grid, merged_direction, scaled
    from sammerge.merging import linear_combination
    from sammerge.training.build import build_zoo
    from sammerge.models.model import pick_device
    from sammerge.models.presets import get_preset
    from sammerge.zoo import open_zoo

    device = pick_device(args.device)
    preset = args.preset or ("tiny" if args.short else "demo")
    repeats = args.repeats or (3 if args.short else 10)
    rows: list[dict] = []

    def row(name: str, seconds: float, note: str = "") -> None:
        rows.append({"name": name, "seconds": seconds, "note": note})
        print(f"{name:<58} {seconds * 1000:>11.1f} ms  {note}")

    tmp = None
    if args.zoo:
        zoo = open_zoo(args.zoo)
    else:
        out = Path(args.out) if args.out else Path(tmp := tempfile.mkdtemp(prefix="sammerge-gpu-")) / preset
        t0 = time.perf_counter()
        zoo = build_zoo(get_preset(preset), out, device=str(device), overwrite=True)
        row(f"build the {preset} zoo (job graph, local backend)", time.perf_counter() - t0,
            ", ".join(f"{k} {v:.1f} s" for k, v in zoo.manifest.stage_times_s.items() if "/" not in k)
            + f", fine-tuning {sum(v for k, v in zoo.manifest.stage_times_s.items() if '/' in k):.1f} s")

    variant = "sam" if "sam" in zoo.variants else zoo.variants[0]
    n_per_task = 64 if args.short else 256
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=n_per_task, seed=0, device=device)
    theta0 = zoo.pretrained()
    tvs = [zoo.task_vector(t, variant) for t in zoo.tasks]
    lam = 0.3
    n_images = ev.images.shape[0]

    counter = iter(range(10 ** 9))
    t_merge, merged = timed(lambda: linear_combination(theta0, tvs, [lam] * len(tvs)), repeats, device)
    row("merge: θ0 + λ Σ τ_t", t_merge, f"{len(tvs)} task vectors")
    # the evaluator caches results by content: a new key per call makes every call compute
    t_eval, res = timed(lambda: ev.evaluate(merged, key=f"bench-{next(counter)}"), repeats, device)
    row("evaluate the merged model, fp32", t_eval, f"{n_images} images, {n_images / t_eval:,.0f} images/s")
    t_update, _ = timed(lambda: ev.evaluate(linear_combination(theta0, tvs, [lam] * len(tvs)),
                                            key=f"bench-{next(counter)}"), repeats, device)
    row("one slider update: merge + evaluate, fp32", t_update, f"mean accuracy {mean_accuracy(res):.4f}")
    bf16_report = None
    if zoo.manifest.linearized:  # f(θ0) + J Δ is evaluated and fine-tuned in fp32 only
        print("(bf16 and fine-tuning rows skipped: a linearized zoo is evaluated and fine-tuned in fp32)")
    else:
        bf16 = Evaluator.from_zoo(zoo, split="val", n_per_task=n_per_task, seed=0, device=device, precision="bf16")
        t_bf16, res_bf16 = timed(lambda: bf16.evaluate(merged, key=f"bench-{next(counter)}"), repeats, device)
        agreement = float((predictions(bf16, merged) == predictions(ev, merged)).float().mean())
        diff = max(abs(res[t].accuracy - res_bf16[t].accuracy) for t in res)
        row("evaluate the merged model, bf16 autocast", t_bf16,
            f"{n_images / t_bf16:,.0f} images/s; predictions agree with fp32 on {100 * agreement:.2f} % of images, "
            f"max per-task accuracy difference {100 * diff:.2f} points")
        bf16_report = {"prediction_agreement": agreement, "mean_accuracy": mean_accuracy(res_bf16),
                       "per_task_accuracy": {t: r.accuracy for t, r in res_bf16.items()}}
    if zoo.manifest.recipe is not None and not zoo.manifest.linearized:  # an imported zoo has no recipe
        steps = 5 if args.short else 50
        for precision in ("fp32", "bf16"):
            seconds = finetune_seconds(zoo, zoo.tasks[0], precision, steps, device)
            row(f"fine-tune {steps} steps, {precision}", seconds,
                f"{steps / seconds:.1f} steps/s, batch {zoo.manifest.recipe.finetune.batch_size}")

    lambdas = lambda_grid("task_arithmetic")
    direction = merged_direction("task_arithmetic", theta0, tvs)
    for strategy in ("loop", "vmap"):
        # a grid shifted by 1e-6·i per call: new content (no cache hits), the same work
        t_grid, _ = timed(lambda: ev.evaluate_many([scaled(theta0, direction, x + 1e-6 * next(counter)) for x in lambdas],
                                                   strategy=strategy), max(1, repeats // 3), device)
        row(f"{len(lambdas)}-point shared-λ grid, {strategy}", t_grid, f"{len(lambdas) * n_images / t_grid:,.0f} images/s")

    task = zoo.tasks[0]
    batch = zoo.split(task, "val").subset(64 if args.short else 256, 0)
    encoder = zoo.create_encoder().to(device)
    head = zoo.heads[task]
    from sammerge.models.model import Head
    head = Head(head.weight.to(device), head.bias.to(device))
    loss = task_loss_fn(encoder, head, batch.images.to(device), batch.labels.to(device))
    params = {k: v.to(device) for k, v in zoo.finetuned(task, variant).items()}
    iters = 5 if args.short else 20
    _sync(device)
    t0 = time.perf_counter()
    eig = top_eigenvalues(loss, params, k=1, iters=iters, tol=1e-2, method="lanczos")
    _sync(device)
    row(f"top Hessian eigenvalue (Lanczos ≤ {iters} HVPs), {len(batch.labels)} images", time.perf_counter() - t0,
        f"λ_max = {eig.eigenvalues[0]:.4g} after {eig.iterations} HVPs")
    if len(zoo.tasks) >= 2:
        n = 5 if args.short else 11
        ev2 = Evaluator.from_zoo(zoo, split="val", n_per_task=n_per_task, seed=0, tasks=zoo.tasks[:2], device=device)
        xs = grid(-0.5, 1.5, n)
        _sync(device)
        t0 = time.perf_counter()
        task_plane(ev2, theta0, tvs[0], tvs[1], xs, xs)
        _sync(device)
        row(f"{n}×{n} task plane, 2 tasks × {n_per_task} images", time.perf_counter() - t0)

    report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "preset": preset, "short": args.short, "repeats": repeats,
              "zoo": str(zoo.path), "variant": variant, "lambda": lam, "n_images": n_images,
              "mean_accuracy": mean_accuracy(res), "per_task_accuracy": {t: r.accuracy for t, r in res.items()},
              "bf16": bf16_report, "rows": rows}
    path = args.json or (None if args.short else str(ROOT / "benchmarks" / "results" / "gpu.json"))
    if path:
        Path(path).write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"results written to {path}")
    if tmp and not args.out:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
