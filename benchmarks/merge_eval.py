"""Merge + evaluation engine vs the naive way, on the same configurations and images.

    python benchmarks/merge_eval.py            # demo zoo (built/cached on first use), full figures
    python benchmarks/merge_eval.py --quick    # tiny zoo, few repeats: checks the comparison is sound

Naive baseline (the task_vectors `apply_to` way): deep-copy the pretrained model, load_state_dict of
θ0 + Σ λ_t τ_t, then evaluate each task's images with its head, task by task.
Engine: stacked task vectors → merged params by one weighted sum, functional_call on one module, all
tasks' images in one forward pass; grids batched with vmap.

(a) one slider update: merge + evaluate every task on its validation subset (8 tasks × 256 images);
(b) a 21-point shared-λ grid at equal work (same 21 configs, same images);
(c) time-to-best-λ: coarse-to-fine search on growing subsets vs the full grid; success when the found
    λ's validation accuracy (full subsets) is within 0.5 points of the grid's best.
Also: achieved images/s vs the floor set by forward FLOPs and this machine's measured matmul rate.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


from sammerge.evaluation.compiled import default_workers  # noqa: E402
from sammerge.evaluation.evaluator import Evaluator, mean_accuracy  # noqa: E402
from sammerge.merging import linear_combination  # noqa: E402
from sammerge.evaluation.search import lambda_grid, coarse_to_fine_lambda, scaled  # noqa: E402
LAMBDA_GRID = lambda_grid("task_arithmetic")
from sammerge.training.build import ensure_zoo  # noqa: E402
from sammerge.zoo import open_zoo  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


class Naive:
    """deepcopy + load_state_dict + per-task loop."""

    def __init__(self, zoo, data):
        self.model = zoo.create_encoder()
        self.model.load_state_dict(zoo.pretrained())
        self.heads = zoo.heads
        self.data = data
        self.theta0 = zoo.pretrained()

    def evaluate(self, task_vectors, coefs):
        merged = {k: v.clone() for k, v in self.theta0.items()}
        for tv, c in zip(task_vectors, coefs):
            for k in tv:  # a task vector holds the float tensors; integer buffers (BN's step count) stay θ0's
                merged[k].add_(tv[k], alpha=c)
        model = copy.deepcopy(self.model)
        model.load_state_dict(merged)
        model.eval()
        out = {}
        with torch.no_grad():
            for task, (x, y) in self.data.items():
                logits = self.heads[task](model(x))
                out[task] = (float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y)))
        return out


def matmul_gflops(seconds: float = 1.0) -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024 ** 3 * n / (time.perf_counter() - t0) / 1e9


def forward_flops(model, images) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    return float(counter.get_total_flops())


TWINS = "vmap: a merge + its 2 twins in one forward (per merge)"


def engine_options(engine: Evaluator, theta0, tvs, configs, repeats: int) -> dict:
    """(d) What the field uses to speed up small convnets on CPU, each timed against the engine as it is (one
    forward of the evaluation set for one merge), interleaved so machine noise hits all alike. Kept in the engine
    only where this shows a gain with identical predictions."""
    from torch.func import functional_call, vmap

    x = engine.images
    merged = [linear_combination(theta0, tvs, c, validate=False) for c in configs]
    enc = engine.encoder

    def chunked(f, xx, chunk=engine.chunk_size):
        return torch.cat([f(xx[i:i + chunk]) for i in range(0, len(xx), chunk)])

    def plain(p):
        with torch.inference_mode():
            return chunked(lambda xx: functional_call(enc, p, (xx,)), x)

    xcl = x.contiguous(memory_format=torch.channels_last)

    def channels_last(p):
        pcl = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for k, v in p.items()}
        with torch.inference_mode():
            return chunked(lambda xx: functional_call(enc, pcl, (xx,)), xcl)

    def bf16(p):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return chunked(lambda xx: functional_call(enc, p, (xx,)).float(), x)

    t0 = time.perf_counter()
    compiled_fwd = torch.compile(lambda p, xx: functional_call(enc, p, (xx,)), dynamic=False)
    with torch.inference_mode():
        chunked(lambda xx: compiled_fwd(merged[0], xx), x)
    compile_s = time.perf_counter() - t0

    def compiled(p):
        with torch.inference_mode():
            return chunked(lambda xx: compiled_fwd(p, xx), x)

    def vmap_twins(p):
        """The explorer's update evaluates a merge and its all-plain / all-SAM twins: all three in one forward,
        ``torch.func.vmap`` over stacked parameters (here ``p`` and the next two configurations); timed per merge."""
        i = next(j for j, m in enumerate(merged) if m is p)
        group = [merged[(i + k) % len(merged)] for k in range(3)]
        stacked = {k: torch.stack([g[k] for g in group]) for k in p}
        with torch.inference_mode():
            return chunked(lambda xx: vmap(lambda q: functional_call(enc, q, (xx,)))(stacked)[0], x)

    threads = torch.get_num_threads()

    def one_thread(p):
        torch.set_num_threads(1)
        try:
            return plain(p)
        finally:
            torch.set_num_threads(threads)

    variants = {"engine (as is)": plain, "channels_last": channels_last, "bf16 autocast": bf16,
                "torch.compile (inductor)": compiled, "1 torch thread": one_thread,
                TWINS: vmap_twins}
    per_call = {TWINS: 3}  # merges evaluated by one call
    ref = [plain(p) for p in merged[:2]]
    agreement = {}
    for name, f in variants.items():
        same = []
        for p, r in zip(merged[:2], ref):
            out = f(p)
            for t in engine.tasks:
                sl = engine.slices[t]
                same.append(float((engine.heads[t](out[sl]).argmax(1) == engine.heads[t](r[sl]).argmax(1)).float().mean()))
        agreement[name] = min(same)
    times = {n: [] for n in variants}
    for i in range(repeats):
        for name, f in variants.items():
            t1 = time.perf_counter()
            f(merged[i % len(merged)])
            times[name].append((time.perf_counter() - t1) / per_call.get(name, 1))
    base = statistics.median(times["engine (as is)"])
    out = {}
    for name in variants:
        ms = statistics.median(times[name])
        out[name] = {"ms": 1e3 * ms, "speedup": base / ms, "same predictions": f"{100 * agreement[name]:.1f} %"}
    out["torch.compile (inductor)"]["compile time"] = f"{compile_s:.0f} s"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny zoo, few repeats (CI: correctness only)")
    parser.add_argument("--zoo", type=Path, default=None, help="zoo directory (default: the demo zoo)")
    parser.add_argument("--n-per-task", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--no-compile", action="store_true",
                        help="time the eager engine only (default: the engine as the app runs it, with its forward "
                             "compiled by torch.compile; --quick never compiles)")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.zoo:
        zoo = open_zoo(args.zoo)
    else:
        zoo = ensure_zoo("tiny" if args.quick else "demo")
    repeats = args.repeats or (3 if args.quick else 15)
    n = args.n_per_task
    compile_engine = not (args.quick or args.no_compile)
    workers = default_workers() if compile_engine else 1  # as the app runs it (sammerge.webapp.ui)
    engine = Evaluator.from_zoo(zoo, split="val", n_per_task=n, compile=compile_engine, workers=workers)
    eager = Evaluator.from_zoo(zoo, split="val", n_per_task=n) if compile_engine else engine
    data = {t: (engine.images[engine.slices[t]], engine.labels[engine.slices[t]]) for t in zoo.tasks}
    naive = Naive(zoo, data)
    theta0 = zoo.pretrained()
    variant = zoo.variants[0]
    tvs = [zoo.task_vector(t, variant) for t in zoo.tasks]
    T = len(tvs)
    gen = torch.Generator().manual_seed(0)
    slider_configs = [(torch.rand(T, generator=gen) * 0.6).tolist() for _ in range(repeats)]
    report: dict = {"zoo": str(zoo.path), "tasks": T, "images_per_task": n, "threads": torch.get_num_threads(),
                    "repeats": repeats, "chunk_size": engine.chunk_size, "engine_workers": workers}
    if compile_engine and engine.compiled is None:  # the evaluator keeps some encoders eager (channels-last ones)
        report["compiled"] = {"status": "not compiled: this encoder runs eager in the app too", "compile_s": None,
                              "load_s": None, "how": "eager (the evaluator does not compile channels-last encoders)"}
        print("compiled forward: none for this encoder — the engine is eager, as in the app", flush=True)
    elif compile_engine:  # the first evaluation starts the background compile; the timings below use its result
        engine.evaluate(theta0)
        ready = engine.compiled.wait(900)
        report["compiled"] = {"status": engine.compiled.status, "compile_s": engine.compiled.compile_s,
                              "load_s": engine.compiled.load_s,
                              "how": "AOTInductor (a package built in a child process, loaded by this one)"}
        print(f"compiled forward: {engine.compiled.status}"
              + (f" in {engine.compiled.compile_s:.1f} s" if ready else " — timing the eager engine"), flush=True)

    # correctness: the engine and the naive path agree on every configuration used below
    for coefs in slider_configs[:3]:
        a = engine.evaluate(linear_combination(theta0, tvs, coefs))
        b = naive.evaluate(tvs, coefs)
        for t in zoo.tasks:
            assert a[t].accuracy == b[t][0], (t, a[t].accuracy, b[t][0])
            assert abs(a[t].loss - b[t][1]) < 1e-4, (t, a[t].loss, b[t][1])
    report["agreement"] = "engine == naive on accuracy (exact) and loss (<1e-4)"

    # (a) one slider update
    it = iter(slider_configs * 2)

    def engine_update():
        coefs = next(it)
        engine._cache.clear()
        return engine.evaluate(linear_combination(theta0, tvs, coefs, validate=False))

    def eager_update():
        coefs = next(it)
        eager._cache.clear()
        return eager.evaluate(linear_combination(theta0, tvs, coefs, validate=False))

    # interleaved rounds, so machine noise hits all three alike
    times: dict[str, list[float]] = {"engine": [], "eager": [], "naive": []}
    for r in range(repeats):
        for name, fn in (("engine", engine_update), ("eager", eager_update),
                         ("naive", lambda: naive.evaluate(tvs, next(it)))):
            it = iter([slider_configs[r]])  # the same new configuration for all three
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    t_engine, t_eager, t_naive = (statistics.median(times[k]) for k in ("engine", "eager", "naive"))
    report["a_slider_update_ms"] = {"engine": 1e3 * t_engine, "naive": 1e3 * t_naive, "speedup": t_naive / t_engine,
                                    "engine_eager": 1e3 * t_eager, "speedup_eager": t_naive / t_eager,
                                    "engine_compiled": bool(engine.compiled and engine.compiled.calls)}

    # (b) 21-point shared-λ grid at equal work
    direction = {k: sum(tv[k] for tv in tvs) for k in tvs[0]}  # the float tensors (integer buffers stay θ0)
    grid = [scaled(theta0, direction, lam) for lam in LAMBDA_GRID]

    def engine_grid():
        engine._cache.clear()
        return engine.evaluate_many(grid, chunk_size=7, strategy="vmap")

    def engine_grid_loop():
        engine._cache.clear()
        return [engine.evaluate(g) for g in grid]

    reps_grid = max(1, repeats // 5)
    t_grid, grid_results = timed(engine_grid, reps_grid)
    t_grid_loop, _ = timed(engine_grid_loop, reps_grid)
    t_grid_naive, naive_grid = timed(lambda: [naive.evaluate(tvs, [lam] * T) for lam in LAMBDA_GRID], reps_grid)
    grid_means = [mean_accuracy(r) for r in grid_results]
    for r, nr in zip(grid_results, naive_grid):
        for t in zoo.tasks:
            assert r[t].accuracy == nr[t][0]
    report["b_grid21_s"] = {"engine_vmap": t_grid, "engine_loop": t_grid_loop, "naive": t_grid_naive,
                            "speedup_vmap": t_grid_naive / t_grid, "speedup_loop": t_grid_naive / t_grid_loop}

    # (c) time-to-best-λ
    best_i = max(range(len(LAMBDA_GRID)), key=lambda i: (grid_means[i], -i))
    subsets: dict[int, Evaluator] = {}

    def factory(size: int) -> Evaluator:
        if size not in subsets:
            subsets[size] = Evaluator.from_zoo(zoo, split="val", n_per_task=min(size, n))
        subsets[size]._cache.clear()
        return subsets[size]

    for size in (32, 128):
        factory(size)  # build the subsets outside the timing (as the grid's evaluator was)
    t_smart, (lam_smart, work) = timed(lambda: coarse_to_fine_lambda(factory, "task_arithmetic", theta0, tvs), repeats)
    t_grid_best = min(t_grid, t_grid_loop)  # compare against the faster of the two full-grid engines
    smart_acc = grid_means[LAMBDA_GRID.index(round(lam_smart, 2))]
    success = grid_means[best_i] - smart_acc <= 0.005 + 1e-12
    report["c_time_to_best_lambda"] = {
        "grid_s": t_grid_best, "smart_s": t_smart, "speedup": t_grid_best / t_smart, "grid_best_lambda": LAMBDA_GRID[best_i],
        "grid_best_val_acc": grid_means[best_i], "smart_lambda": lam_smart, "smart_val_acc": smart_acc,
        "within_0.5_points": success, "image_forwards": {"grid": 21 * T * n, "smart": work}}

    # throughput vs the FLOP floor
    flops_per_image = forward_flops(engine.encoder, engine.images[:64]) / 64
    gflops = matmul_gflops(0.5 if args.quick else 2.0)
    imgs = T * n
    achieved = imgs / t_engine
    floor = gflops * 1e9 / flops_per_image
    report["throughput"] = {"forward_mflops_per_image": flops_per_image / 1e6, "matmul_gflops": gflops,
                            "achieved_images_per_s": achieved, "flop_floor_images_per_s": floor,
                            "fraction_of_floor": achieved / floor}

    if not args.quick:
        report["d_engine_options"] = engine_options(engine, theta0, tvs, slider_configs, repeats)

    a, b, c, th = (report["a_slider_update_ms"], report["b_grid21_s"], report["c_time_to_best_lambda"],
                   report["throughput"])
    print(f"zoo {zoo.path.name}: {T} tasks × {n} val images, {torch.get_num_threads()} threads, {repeats} repeats")
    print(f"(a) slider update (merge + evaluate): engine {a['engine']:.1f} ms, naive {a['naive']:.1f} ms "
          f"→ {a['speedup']:.2f}× (median); eager engine {a['engine_eager']:.1f} ms → {a['speedup_eager']:.2f}×")
    print(f"(b) 21-point λ grid: engine(vmap) {b['engine_vmap']:.2f} s, engine(loop) {b['engine_loop']:.2f} s, "
          f"naive {b['naive']:.2f} s → {b['speedup_vmap']:.2f}× / {b['speedup_loop']:.2f}×")
    print(f"(c) time-to-best-λ: grid {c['grid_s']:.2f} s (λ={c['grid_best_lambda']}, val {c['grid_best_val_acc']:.4f}) "
          f"vs coarse-to-fine {c['smart_s']:.2f} s (λ={c['smart_lambda']}, val {c['smart_val_acc']:.4f}) "
          f"→ {c['speedup']:.2f}×, within 0.5 pts: {c['within_0.5_points']}; image-forwards "
          f"{c['image_forwards']['smart']} vs {c['image_forwards']['grid']}")
    print(f"throughput: {th['achieved_images_per_s']:.0f} images/s achieved vs FLOP floor "
          f"{th['flop_floor_images_per_s']:.0f} images/s ({th['forward_mflops_per_image']:.2f} MFLOP/image at "
          f"{th['matmul_gflops']:.1f} GFLOP/s matmul) → {100 * th['fraction_of_floor']:.1f} % of the floor")
    for name, o in report.get("d_engine_options", {}).items():
        extra = "".join(f", {k} {v}" for k, v in o.items() if k not in ("ms", "speedup"))
        print(f"(d) {name}: {o['ms']:.1f} ms → {o['speedup']:.2f}× the engine{extra}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
