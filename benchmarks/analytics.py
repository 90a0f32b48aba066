"""Time the analytics against their cost goals (issue 4):

* top Hessian eigenvalue of a demo-sized checkpoint on a batch of 256 / 512 images (goal ≤ 10 s);
* the 21×21 task plane, 2 tasks × 256 images per point (goal ≤ 60 s), against a naive per-point loop
  (deepcopy the module + load_state_dict + forward), timed on a subset of points in the same run and
  extrapolated to 441 points.

    python benchmarks/analytics.py [--zoo ZOO] [--threads 1] [--json out.json]

Without --zoo it uses a demo-sized encoder (the demo preset's architecture; random weights, perturbed so
that zero-initialised layers are active) with random images and labels: the cost does not depend on
the weights except through the number of Lanczos steps, which is printed.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch


def _demo_setup(zoo_path: str | None, n_images: int):
    from sammerge.models.model import EncoderConfig, Head, create_encoder, encoder_params
    from sammerge.models.presets import get_preset

    if zoo_path:
        from sammerge.zoo import open_zoo
        zoo = open_zoo(zoo_path)
        t1, t2 = zoo.tasks[:2]
        v = zoo.variants[0]
        theta0 = zoo.pretrained()
        data = {t: zoo.split(t, "val").subset(n_images, 0) for t in (t1, t2)}
        return (zoo.create_encoder(), theta0, zoo.finetuned(t1, v), zoo.task_vector(t1, v), zoo.task_vector(t2, v),
                {t: zoo.heads[t] for t in (t1, t2)}, {t: (d.images, d.labels) for t, d in data.items()},
                f"zoo {zoo_path} ({t1}, {t2}, {v})")
    cfg: EncoderConfig = get_preset("demo").encoder
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    enc = create_encoder(cfg).eval()
    theta0 = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in encoder_params(enc).items()}
    tau1 = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in theta0.items()}
    tau2 = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in theta0.items()}
    theta1 = {k: theta0[k] + tau1[k] for k in theta0}
    heads = {t: Head(0.3 * torch.randn(20, cfg.embed_dim, generator=g), torch.zeros(20)) for t in ("a", "b")}
    data = {t: (torch.randn(n_images, 1, cfg.image_size, cfg.image_size, generator=g),
                torch.randint(0, 20, (n_images,), generator=g)) for t in heads}
    return enc, theta0, theta1, tau1, tau2, heads, data, "synthetic demo-sized encoder"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=None, help="a built demo zoo (default: synthetic demo-sized encoder)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--naive-points", type=int, default=42, help="points of the naive loop to time")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.analytics.landscape import grid, task_plane
    from sammerge.merging import linear_combination
    from sammerge.analytics.sharpness import HessianOperator, hvp, num_params, task_loss_fn, top_eigenvalues

    enc, theta0, theta1, tau1, tau2, heads, data, source = _demo_setup(args.zoo, 512)
    t1 = next(iter(heads))
    report = {"source": source, "threads": torch.get_num_threads(), "n_params": num_params(theta1)}
    print(f"{source}: {report['n_params']:,} encoder parameters, torch threads = {report['threads']}")

    # -- top eigenvalue -------------------------------------------------------------------------------------
    for n in (256, 512):
        x, y = data[t1][0][:n], data[t1][1][:n]
        f = task_loss_fn(enc, heads[t1], x, y)
        op = HessianOperator(f, theta1)
        v = op.random_normal(torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        for _ in range(3):
            op.matvec(v)
        t_hvp = (time.perf_counter() - t0) / 3
        t0 = time.perf_counter()
        hvp(f, theta1, op.as_dict(v))
        t_jvp = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = top_eigenvalues(f, theta1, k=1, iters=20, tol=1e-2, method="lanczos")
        t_eig = time.perf_counter() - t0
        t0 = time.perf_counter()
        res_p = top_eigenvalues(f, theta1, k=1, iters=100, tol=1e-3, method="power")
        t_pow = time.perf_counter() - t0
        print(f"[eig] batch {n}: λ_max = {res.eigenvalues[0]:.4g} by Lanczos in {t_eig:.2f} s "
              f"({res.iterations} HVPs, converged={res.converged}); power iteration {res_p.eigenvalues[0]:.4g} "
              f"in {t_pow:.2f} s ({res_p.iterations} HVPs); one HVP: double-backward {t_hvp:.3f} s, "
              f"forward-over-reverse {t_jvp:.3f} s  [goal ≤ 10 s]")
        report[f"eig_{n}"] = {"seconds": t_eig, "hvps": res.iterations, "lambda_max": res.eigenvalues[0],
                              "power_seconds": t_pow, "power_hvps": res_p.iterations,
                              "hvp_double_backward_s": t_hvp, "hvp_jvp_s": t_jvp}

    # -- 21×21 task plane ------------------------------------------------------------------------------------
    data256 = {t: (x[:256], y[:256]) for t, (x, y) in data.items()}
    ev = Evaluator(enc, heads, data256)
    xs = grid(-0.5, 1.5, args.grid)
    t0 = time.perf_counter()
    plane = task_plane(ev, theta0, tau1, tau2, xs, xs, chunk=args.chunk)
    t_plane = time.perf_counter() - t0
    n_pts = args.grid ** 2
    # naive: one deep-copied module per point, load_state_dict, forward over both tasks' images
    points = [(a, b) for a in xs for b in xs][: args.naive_points]
    images = torch.cat([d[0] for d in data256.values()])
    t0 = time.perf_counter()
    for a, b in points:
        model = copy.deepcopy(enc)
        model.load_state_dict(linear_combination(theta0, [tau1, tau2], [a, b]))
        with torch.no_grad():
            feats = model(images)
            for i, (t, (_, yy)) in enumerate(data256.items()):
                logits = heads[t](feats[i * 256:(i + 1) * 256])
                torch.nn.functional.cross_entropy(logits, yy)
    t_naive = (time.perf_counter() - t0) / len(points) * n_pts
    print(f"[plane] {args.grid}×{args.grid} task plane, 2 tasks × 256 images per point ({n_pts} settings, "
          f"{n_pts * 512:,} image forwards): {t_plane:.1f} s with Evaluator.evaluate_many (vmap chunks of "
          f"{args.chunk}); naive deepcopy+load_state_dict loop {t_naive:.1f} s (timed on {len(points)} points, "
          f"extrapolated); ratio naive/batched = {t_naive / t_plane:.2f}  [goal ≤ 60 s]")
    report["plane"] = {"grid": args.grid, "points": n_pts, "seconds": t_plane, "naive_seconds_extrapolated": t_naive,
                       "naive_points_timed": len(points), "chunk": args.chunk,
                       "loss_range": [float(plane.loss[t1].min()), float(plane.loss[t1].max())]}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
