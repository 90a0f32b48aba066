"""Measure the demo regime: pretrained vs fine-tuned vs task-arithmetic merge, plain vs SAM, over seeds.

    python benchmarks/demo_regime.py --preset demo --seeds 0 1 2 --out zoos/regime

For each seed: build the zoo (timed), then for each fine-tuning variant choose the shared λ of task
arithmetic on the validation split (λ ∈ 0..1 step 0.05) and report the test accuracy at that λ.
Prints a JSON summary (and writes it to --json) with mean ± std over seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


from sammerge.evaluation.evaluator import Evaluator, mean_accuracy  # noqa: E402
from sammerge.training.presets import get_preset  # noqa: E402
from sammerge.evaluation.search import lambda_grid, merged_direction, scaled, sweep_shared_lambda  # noqa: E402
LAMBDA_GRID = lambda_grid("task_arithmetic")
from sammerge.training.build import build_zoo  # noqa: E402
from sammerge.zoo import open_zoo  # noqa: E402

LAMBDAS = LAMBDA_GRID


def measure(zoo, n_val: int | None = None) -> dict:
    val = Evaluator.from_zoo(zoo, split="val", n_per_task=n_val)
    test = Evaluator.from_zoo(zoo, split="test", n_per_task=None)
    theta0 = zoo.pretrained()
    pre = test.evaluate(theta0)
    out = {"pretrained_test": statistics.mean(r.accuracy for r in pre.values()),
           "pretrained_per_task": {t: r.accuracy for t, r in pre.items()}, "variants": {}}
    for variant in zoo.variants:
        indiv = {t: zoo.manifest.checkpoint(t, variant).accuracy.test for t in zoo.tasks}
        tvs = [zoo.task_vector(t, variant) for t in zoo.tasks]
        sweep = sweep_shared_lambda(val, "task_arithmetic", theta0, tvs, lambdas=LAMBDAS, test_evaluator=test)
        merged = sweep.test
        merged_mean = sweep.test_mean
        indiv_mean = statistics.mean(indiv.values())
        direction = merged_direction("task_arithmetic", theta0, tvs)
        test_curve = [mean_accuracy(r) for r in test.evaluate_many([scaled(theta0, direction, lam)
                                                                          for lam in LAMBDAS])]
        out["variants"][variant] = {
            "individual_test": indiv_mean, "individual_per_task": indiv,
            "best_lambda_val": sweep.best_lambda, "merged_test": merged_mean,
            "merged_per_task": {t: r.accuracy for t, r in merged.items()},
            "normalized": statistics.mean(merged[t].accuracy / max(indiv[t], 1e-9) for t in zoo.tasks),
            "gap_points": 100 * (indiv_mean - merged_mean),
            "val_curve": dict(zip(map(str, LAMBDAS), sweep.val_mean)),
            "test_curve": dict(zip(map(str, LAMBDAS), test_curve)),
            "min_gain_points": 100 * min(indiv[t] - out["pretrained_per_task"][t] for t in zoo.tasks),
        }
    return out


def curve_at(runs: list[dict], variant: str, lam: str) -> str:
    values = [r["variants"][variant]["test_curve"][lam] for r in runs]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def markdown(summary: dict, runs: list[dict]) -> str:
    """The README table: mean ± std over seeds (percent)."""
    def pct(d: dict) -> str:
        return f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f}"

    lines = [f"Preset `{summary['preset']}`, seeds {summary['seeds']}, test split (fonts never seen in training); "
             f"mean ± std over seeds.", "",
             "| fine-tuning | pretrained + heads | individual fine-tuned | best shared λ (val) | task arithmetic merged "
             "| normalized | loss vs individual (pts) | smallest per-task gain (pts) | merged at λ=0.3 | at λ=1.0 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, v in summary["variants"].items():
        lams = ", ".join(f"{x:g}" for x in v["best_lambda_val"]["values"])
        lines.append(f"| {variant} | {pct(summary['pretrained_test'])} | {pct(v['individual_test'])} | {lams} | "
                     f"{pct(v['merged_test'])} | {pct(v['normalized'])} | {v['gap_points']['mean']:.1f} ± "
                     f"{v['gap_points']['std']:.1f} | {min(v['min_gain_points']['values']):.1f} | "
                     f"{curve_at(runs, variant, '0.3')} | {curve_at(runs, variant, '1.0')} |")
    bt = summary["build_time_s"]
    lines += ["", f"Build time per zoo: {bt['mean']:.0f} s (min {min(bt['values']):.0f}, max {max(bt['values']):.0f}; "
              f"{summary['torch_threads']} torch thread(s))."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("zoos/regime"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="reuse zoos already built in --out")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        recipe = get_preset(args.preset).model_copy(update={"seed": seed})
        zoo_dir = args.out / f"{args.preset}-seed{seed}"
        if args.reuse and zoo_dir.exists():
            zoo = open_zoo(zoo_dir)
        else:
            t0 = time.perf_counter()
            zoo = build_zoo(recipe, zoo_dir, overwrite=True)
            print(f"seed {seed}: built in {time.perf_counter() - t0:.1f} s", flush=True)
        result = measure(zoo)
        result["seed"] = seed
        result["build_time_s"] = zoo.manifest.build_wall_time_s
        runs.append(result)
        brief = {v: {k: round(r[k], 4) for k in ("individual_test", "best_lambda_val", "merged_test", "normalized",
                                                  "gap_points", "min_gain_points")}
                 for v, r in result["variants"].items()}
        print(f"seed {seed}: pretrained {result['pretrained_test']:.4f} {json.dumps(brief)}", flush=True)

    def agg(values):
        return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values}

    summary = {"preset": args.preset, "seeds": args.seeds, "torch_threads": torch.get_num_threads(),
               "build_time_s": agg([r["build_time_s"] for r in runs]),
               "pretrained_test": agg([r["pretrained_test"] for r in runs]), "variants": {}}
    for variant in runs[0]["variants"]:
        summary["variants"][variant] = {
            key: agg([r["variants"][variant][key] for r in runs])
            for key in ("individual_test", "merged_test", "normalized", "gap_points", "best_lambda_val",
                        "min_gain_points")}
    text = json.dumps(summary, indent=2)
    print(text)
    print(markdown(summary, runs))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
