"""AdaMerging (task-wise, layer-wise; over task vectors and TIES parts) vs task arithmetic and TIES, plain vs SAM.

    python benchmarks/adamerging.py --zoos zoos/regime/demo-seed0 zoos/regime/demo-seed1 zoos/regime/demo-seed2 \\
        --json benchmarks/results/adamerging.json

For each zoo and fine-tuning variant: task arithmetic and TIES at their best shared λ on the validation split
(each method's λ grid); AdaMerging with the registry's default settings (Adam, fixed steps, λ clamped to [0, 1],
init 0.3) on unlabeled validation images, timed; every merge scored on the whole test split. Also, along task
arithmetic's λ grid, the entropy objective next to validation accuracy (does lower entropy mean higher accuracy?).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from sammerge.evaluation.adamerging import entropy, unlabeled_images
from sammerge.evaluation.evaluator import Evaluator, mean_accuracy
from sammerge.evaluation.protocol import individual_results, normalized_accuracy
from sammerge.evaluation.search import sweep_shared_lambda
from sammerge.evaluation.learners import get_learner
from sammerge.merging import linear_combination, merge_zoo
from sammerge.zoo import open_zoo

ADA = [("adamerging_task_ta", "task", "task_arithmetic"), ("adamerging_layer_ta", "layer", "task_arithmetic"),
       ("adamerging_task_ties", "task", "ties"), ("adamerging_layer_ties", "layer", "ties")]
LABELS = {"task_arithmetic": "Task arithmetic (best shared λ on val)", "ties": "TIES (best shared λ on val)",
          "adamerging_task_ta": "AdaMerging, task-wise", "adamerging_layer_ta": "AdaMerging, layer-wise",
          "adamerging_task_ties": "TIES-AdaMerging, task-wise", "adamerging_layer_ties": "TIES-AdaMerging, layer-wise"}


def _row(test_result, individual, **extra) -> dict:
    per_task = {t: r.accuracy for t, r in test_result.items()}
    norm = statistics.mean(normalized_accuracy(per_task[t], individual[t]) for t in per_task)
    return {"test_mean": statistics.mean(per_task.values()), "normalized": norm, "per_task": per_task, **extra}


def entropy_along_lambda(zoo, variant: str, val: Evaluator, n: int, seed: int) -> list[dict]:
    """Task arithmetic θ0 + λ Σ τ_t on its λ grid: AdaMerging's objective and validation accuracy."""
    from torch.func import functional_call
    theta0, tvs = zoo.pretrained(), [zoo.task_vector(t, variant) for t in zoo.tasks]
    encoder = zoo.create_encoder()
    images = [unlabeled_images(zoo, t, n, seed) for t in zoo.tasks]
    out = []
    for lam in [0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]:
        theta = linear_combination(theta0, tvs, [lam] * len(tvs), validate=False)
        with torch.no_grad():
            h = statistics.mean(float(entropy(zoo.heads[t](functional_call(encoder, theta, (x,)))).mean())
                                for t, x in zip(zoo.tasks, images))
        out.append({"lambda": lam, "entropy": h, "val_mean": mean_accuracy(val.evaluate(theta))})
    return out


def measure(zoo_path: Path, settings: dict, n_val: int | None, n_test: int | None) -> dict:
    zoo = open_zoo(zoo_path)
    val = Evaluator.from_zoo(zoo, split="val", n_per_task=n_val, device="cpu")
    test = Evaluator.from_zoo(zoo, split="test", n_per_task=n_test, device="cpu")
    theta0 = zoo.pretrained()
    learner = get_learner("adamerging")
    out = {"zoo": str(zoo_path), "seed": zoo.manifest.recipe.seed, "variants": {}}
    for variant in zoo.variants:
        individual = {t: r.accuracy for t, r in individual_results(test, zoo, {t: variant for t in zoo.tasks}).items()}
        tvs = [zoo.task_vector(t, variant) for t in zoo.tasks]
        rows = {}
        for method in ("task_arithmetic", "ties"):
            start = time.perf_counter()
            sweep = sweep_shared_lambda(val, method, theta0, tvs, test_evaluator=test,
                                        task_ids=[f"{t}/{variant}" for t in zoo.tasks])
            rows[method] = _row(sweep.test, individual, best_lambda=sweep.best_lambda, val_mean=sweep.best_val_mean,
                                seconds=time.perf_counter() - start)
        for key, granularity, base in ADA:
            res = learner(zoo, variant, granularity=granularity, base=base, **settings)
            coef = [v for row in res.coefficients.values() for v in row.values()]
            rows[key] = _row(test.evaluate(merge_zoo(zoo, res.spec)), individual, seconds=res.seconds,
                             entropy_start=res.entropy[0], entropy_best=res.entropy[res.best_step],
                             best_step=res.best_step, lambda_mean=statistics.mean(coef), lambda_min=min(coef),
                             lambda_max=max(coef), coefficients=res.coefficients)
            print(f"  {zoo_path.name} {variant} {key}: test {100 * rows[key]['test_mean']:.1f} % "
                  f"(λ mean {statistics.mean(coef):.2f}), {res.seconds:.1f} s", flush=True)
        out["variants"][variant] = {"individual": individual, "rows": rows,
                                    "entropy_vs_lambda": entropy_along_lambda(zoo, variant, val,
                                                                              settings["images_per_task"],
                                                                              settings["seed"])}
        print(f"  {zoo_path.name} {variant}: TA {100 * rows['task_arithmetic']['test_mean']:.1f} %, "
              f"TIES {100 * rows['ties']['test_mean']:.1f} %", flush=True)
    return out


def summarize(runs: list[dict]) -> dict:
    summary: dict = {}
    variants = list(runs[0]["variants"])
    for v in variants:
        summary[v] = {}
        for key in LABELS:
            rows = [r["variants"][v]["rows"][key] for r in runs]

            def ms(name):
                vals = [row[name] for row in rows]
                return [statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0]
            entry = {"test_mean": ms("test_mean"), "normalized": ms("normalized"), "seconds": ms("seconds")}
            if key.startswith("adamerging"):
                entry["lambda_mean"] = ms("lambda_mean")
            else:
                entry["best_lambda"] = [row["best_lambda"] for row in rows]
            summary[v][key] = entry
    return summary


def markdown(data: dict) -> str:
    s, st = data["summary"], data["settings"]
    variants = list(s)
    lines = [f"{len(data['runs'])} zoos (seeds {', '.join(str(r['seed']) for r in data['runs'])}), whole test split; "
             f"mean ± std over seeds. AdaMerging: {st['steps']} Adam steps, lr {st['lr']}, {st['images_per_task']} "
             f"unlabeled validation images per task, init {st['init']}, λ clamped to [{st['clamp_low']}, "
             f"{st['clamp_high']}], TIES density {st['density']}; time to learn at {data['threads']} torch thread(s) on "
             f"the shared 2-core machine (load average {data['load_average'][0]:.1f} at the start).", "",
             "| method | " + " | ".join(f"{v}: test acc | {v}: normalized" for v in variants) + " | λ (plain / sam) | "
             "time to learn (s) |", "|---" * (3 + 2 * len(variants)) + "|"]
    for key, label in LABELS.items():
        cells = []
        for v in variants:
            e = s[v][key]
            cells += [f"{100 * e['test_mean'][0]:.1f} ± {100 * e['test_mean'][1]:.1f}",
                      f"{100 * e['normalized'][0]:.1f} ± {100 * e['normalized'][1]:.1f}"]
        if key.startswith("adamerging"):
            lam = " / ".join(f"mean {s[v][key]['lambda_mean'][0]:.2f}" for v in variants)
            secs = " / ".join(f"{s[v][key]['seconds'][0]:.0f}" for v in variants)
        else:
            lam = " / ".join(", ".join(f"{x:g}" for x in s[v][key]["best_lambda"]) for v in variants)
            secs = "—"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {lam} | {secs} |")
    pairs = []
    for r in data["runs"]:
        for v, d in r["variants"].items():
            pts = d["entropy_vs_lambda"]
            pairs.append((min(pts, key=lambda p: p["entropy"])["lambda"], max(pts, key=lambda p: p["val_mean"])["lambda"]))
    larger = sum(h > a for h, a in pairs)
    lines += ["", f"Along task arithmetic's λ (0 … 1), AdaMerging's objective (mean entropy) is lowest at a larger λ than "
              f"where validation accuracy peaks in {larger} of {len(pairs)} (zoo, variant) pairs: entropy minimum at "
              f"λ = {', '.join(f'{h:g}' for h, _ in pairs)}; accuracy maximum at λ = "
              f"{', '.join(f'{a:g}' for _, a in pairs)} (`entropy_vs_lambda` in the results file)."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoos", nargs="+", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-val", type=int, default=None, help="validation images per task for the λ searches")
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="override the learner's default step budget")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = get_learner("adamerging").defaults()
    settings.pop("granularity"), settings.pop("base")
    if args.steps is not None:
        settings["steps"] = args.steps
    load = os.getloadavg()
    start = time.perf_counter()
    runs = []
    for p in args.zoos:  # the results file is rewritten after every zoo (a partial run keeps what it measured)
        runs.append(measure(p, settings, args.n_val, args.n_test))
        data = {"settings": settings, "threads": args.threads, "load_average": list(load),
                "wall_s": time.perf_counter() - start, "runs": runs, "summary": summarize(runs)}
        if args.json:
            from sammerge.io import atomic_write_text
            atomic_write_text(args.json, json.dumps(data, indent=1) + "\n")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
