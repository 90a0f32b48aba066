"""Measure the demo regime: pretrained vs fine-tuned vs merged, every fine-tuning variant, over seeds; and the
regime search (one row per recipe tried).

    python benchmarks/demo_regime.py --preset demo --seeds 0 1 2 --out zoos/regime --json benchmarks/results/demo_regime.json
    python benchmarks/demo_regime.py --probe NAME --base demo --set '{"finetune": {"lr": 5e-4}}' --seeds 0 \\
        --out zoos/probes --search benchmarks/results/regime_search.json

For each seed: build the zoo (timed), then for each fine-tuning variant choose the shared λ of task arithmetic
(and of TIES) on the validation split (each method's λ grid) and report the test accuracy at that λ, the gap
closed (merged − pretrained) / (individual − pretrained), and the test accuracy at λ = 1/T, 0.3, 0.5, 1.0.
When the recipe's variants allow it, fair SAM comparisons per seed: (a) equal steps (sam − plain), (b) equal
compute (sam − plain_2x: SAM costs two passes per step), (c) equal individual accuracy (SAM's merged accuracy
minus the plain family's merged accuracy interpolated at SAM's individual accuracy; plain family = the plain
variants with different step counts). Prints a JSON summary (and writes it to --json) with mean ± std over seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from sammerge.analytics.diagnostics import gap_closed  # noqa: E402
from sammerge.evaluation.protocol import evaluate_routed  # noqa: E402
from sammerge.merging import get_method, task_id, variant_statistics  # noqa: E402
from sammerge.merging.statistics import zoo_table_methods  # noqa: E402
from sammerge.evaluation.evaluator import Evaluator, mean_accuracy  # noqa: E402
from sammerge.evaluation.search import lambda_grid, merged_direction, scaled, sweep_shared_lambda  # noqa: E402
from sammerge.training.build import build_zoo  # noqa: E402
from sammerge.models.presets import ZooRecipe, get_preset  # noqa: E402
from sammerge.zoo import open_zoo  # noqa: E402

LAMBDAS = lambda_grid("task_arithmetic")
MARKS = ("1/T", "0.3", "0.5", "1.0")


def measure_methods(zoo, val, test, variant: str, methods: list[str], pre_mean: float, indiv_mean: float,
                    routed_evaluators: dict) -> dict:
    """Every method on one variant: best λ on validation (the method's grid), test accuracy there, gap closed;
    task-routed methods (EMR) evaluate each task with its own model."""
    theta0, tvs = zoo.pretrained(), [zoo.task_vector(t, variant) for t in zoo.tasks]
    ids = [task_id(t, variant) for t in zoo.tasks]
    out = {}
    for name in methods:
        t0 = time.perf_counter()
        if not get_method(name).is_static:
            models = get_method(name)(theta0, tvs, task_ids=ids)
            per_task = {t: r.accuracy for t, r in evaluate_routed(zoo, dict(zip(zoo.tasks, models)), "test",
                                                                        evaluators=routed_evaluators).items()}
            best = None
        else:
            sweep = sweep_shared_lambda(val, name, theta0, tvs, test_evaluator=test, task_ids=ids,
                                        statistics=variant_statistics(zoo, name, zoo.tasks, variant))
            per_task, best = {t: r.accuracy for t, r in sweep.test.items()}, sweep.best_lambda
        mean = statistics.mean(per_task.values())
        out[name] = {"merged_test": mean, "gap_closed": gap_closed(mean, pre_mean, indiv_mean),
                     "best_lambda_val": best, "merged_per_task": per_task, "seconds": time.perf_counter() - t0}
    return out


def measure(zoo, n_val: int | None = 256, ties: bool = True, methods: list[str] | None = None) -> dict:
    val = Evaluator.from_zoo(zoo, split="val", n_per_task=n_val)
    test = Evaluator.from_zoo(zoo, split="test", n_per_task=None)
    theta0 = zoo.pretrained()
    pre = test.evaluate(theta0)
    pre_mean = statistics.mean(r.accuracy for r in pre.values())
    routed: dict = {}  # task → its own test evaluator, for task-routed methods (kept across variants)
    out = {"pretrained_test": pre_mean, "n_val_per_task": n_val, "pretrained_per_task": {t: r.accuracy for t, r in pre.items()},
           "linearized": zoo.manifest.linearized, "variants": {}}
    for variant in zoo.variants:
        indiv = {t: zoo.manifest.checkpoint(t, variant).accuracy.test for t in zoo.tasks}
        tvs = [zoo.task_vector(t, variant) for t in zoo.tasks]
        sweep = sweep_shared_lambda(val, "task_arithmetic", theta0, tvs, lambdas=LAMBDAS, test_evaluator=test)
        merged, merged_mean = sweep.test, sweep.test_mean
        indiv_mean = statistics.mean(indiv.values())
        direction = merged_direction("task_arithmetic", theta0, tvs)
        marks = {"1/T": 1 / len(zoo.tasks), "0.3": 0.3, "0.5": 0.5, "1.0": 1.0}
        at = {k: mean_accuracy(test.evaluate(scaled(theta0, direction, lam))) for k, lam in marks.items()}
        row = {
            "individual_test": indiv_mean, "individual_per_task": indiv,
            "best_lambda_val": sweep.best_lambda, "merged_test": merged_mean,
            "merged_per_task": {t: r.accuracy for t, r in merged.items()},
            "normalized": statistics.mean(merged[t].accuracy / max(indiv[t], 1e-9) for t in zoo.tasks),
            "gap_closed": gap_closed(merged_mean, pre_mean, indiv_mean),
            "gap_points": 100 * (indiv_mean - merged_mean),
            "val_curve": dict(zip(map(str, LAMBDAS), sweep.val_mean)),
            "test_at": at,
            "min_gain_points": 100 * min(indiv[t] - out["pretrained_per_task"][t] for t in zoo.tasks),
            "steps": zoo.manifest.checkpoint(zoo.tasks[0], variant).method["steps"],
            "label": zoo.manifest.checkpoint(zoo.tasks[0], variant).method["label"],
        }
        if ties and not variant.startswith("plain_"):  # TIES beside TA for the shipped variants
            tsweep = sweep_shared_lambda(val, "ties", theta0, tvs, test_evaluator=test)
            row.update(ties_best_lambda_val=tsweep.best_lambda, ties_merged_test=tsweep.test_mean,
                       ties_gap_closed=gap_closed(tsweep.test_mean, pre_mean, indiv_mean))
        if methods:
            row["methods"] = measure_methods(zoo, val, test, variant, methods, pre_mean, indiv_mean, routed)
        out["variants"][variant] = row
    out["fair"] = fair_comparisons(out["variants"])
    if methods:
        out["method_fair"] = method_fair(out["variants"], methods)
    return out


def _plain_family(variants: dict) -> list[tuple[float, float]]:
    """(individual, merged) of every plain variant (different step counts), sorted by individual accuracy."""
    return sorted((v["individual_test"], v["merged_test"]) for name, v in variants.items()
                  if name == "plain" or name.startswith("plain_"))


def _interpolate(points: list[tuple[float, float]], x: float) -> tuple[float, bool]:
    """Piecewise-linear y(x) through ``points`` (extrapolated from the nearest segment); True when inside."""
    if len(points) < 2:
        return float("nan"), False
    inside = points[0][0] <= x <= points[-1][0]
    segs = list(zip(points, points[1:]))
    (x0, y0), (x1, y1) = next(((a, b) for a, b in segs if a[0] <= x <= b[0]), segs[0] if x < points[0][0] else segs[-1])
    return (y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 != x0 else (y0 + y1) / 2), inside


def fair_comparisons(variants: dict) -> dict:
    """Per SAM-type variant: merged-accuracy differences against plain at (a) equal steps, (b) equal compute,
    (c) equal individual accuracy (see the module docstring); in accuracy fractions."""
    out = {}
    family = _plain_family(variants)
    for name, v in variants.items():
        if name == "plain" or name.startswith("plain_"):
            continue
        row = {}
        if "plain" in variants:
            p = variants["plain"]
            row["equal_steps"] = {"merged": v["merged_test"] - p["merged_test"],
                                  "individual": v["individual_test"] - p["individual_test"],
                                  "normalized": v["normalized"] - p["normalized"]}
        if "plain_2x" in variants:
            p = variants["plain_2x"]
            row["equal_compute"] = {"merged": v["merged_test"] - p["merged_test"],
                                    "individual": v["individual_test"] - p["individual_test"],
                                    "normalized": v["normalized"] - p["normalized"]}
        if len(family) >= 2:
            plain_at, inside = _interpolate(family, v["individual_test"])
            row["equal_individual"] = {"merged": v["merged_test"] - plain_at, "plain_merged_at": plain_at,
                                       "interpolated": inside}
        out[name] = row
    return out


def method_fair(variants: dict, methods: list[str]) -> dict:
    """Per method and SAM-type variant: (a) equal steps and (c) equal individual accuracy, as
    :func:`fair_comparisons` does for task arithmetic, on that method's merged accuracy."""
    out = {}
    for name in methods:
        view = {v: {**row, "merged_test": row["methods"][name]["merged_test"]} for v, row in variants.items()
                if name in row.get("methods", {})}
        out[name] = {v: {k: c for k, c in comps.items() if k != "equal_compute"}
                     for v, comps in fair_comparisons(view).items()}
    return out


def merge_runs(runs: list[dict]) -> list[dict]:
    """One run per seed: the variants of runs of the same seed (zoos built with different variant subsets of one
    recipe share θ0, heads and, variant by variant, the same checkpoints) are united, fair comparisons redone."""
    by_seed: dict[int, dict] = {}
    for run in runs:
        if run["seed"] not in by_seed:
            by_seed[run["seed"]] = {**run, "variants": dict(run["variants"]), "build_time_s": run["build_time_s"]}
            continue
        into = by_seed[run["seed"]]
        if abs(into["pretrained_test"] - run["pretrained_test"]) > 1e-9:
            raise SystemExit(f"seed {run['seed']}: runs disagree on the pretrained model; not the same recipe")
        into["variants"].update(run["variants"])
        if into.get("torch_threads") is None:  # older result files did not record it per run
            into["torch_threads"] = run.get("torch_threads")
        into["build_time_s"] += run["build_time_s"] - run.get("pretrain_time_s", 0.0)  # θ0 and heads counted once
    out = []
    for seed in sorted(by_seed):
        run = by_seed[seed]
        order = sorted(run["variants"], key=lambda v: (not v.startswith("plain"), run["variants"][v]["steps"], v))
        run["variants"] = {v: run["variants"][v] for v in order}
        run["fair"] = fair_comparisons(run["variants"])
        methods = sorted({m for v in run["variants"].values() for m in v.get("methods", {})})
        if methods:
            run["method_fair"] = method_fair(run["variants"], methods)
        out.append(run)
    return out


def _agg(values):
    values = [float(x) for x in values]
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarize(runs: list[dict], preset: str, seeds: list[int]) -> dict:
    summary = {"preset": preset, "seeds": seeds, "torch_threads": runs[0].get("torch_threads", torch.get_num_threads()),
               "build_time_s": _agg([r["build_time_s"] for r in runs]),
               "pretrained_test": _agg([r["pretrained_test"] for r in runs]), "variants": {}, "fair": {}}
    keys = ("individual_test", "merged_test", "normalized", "gap_points", "best_lambda_val", "min_gain_points",
            "gap_closed", "ties_merged_test", "ties_gap_closed", "ties_best_lambda_val")
    for variant, v0 in runs[0]["variants"].items():
        summary["variants"][variant] = {k: _agg([r["variants"][variant][k] for r in runs]) for k in keys if k in v0}
        summary["variants"][variant]["label"] = v0.get("label", variant)
        summary["variants"][variant]["steps"] = v0.get("steps")
    for variant, comps in runs[0].get("fair", {}).items():
        summary["fair"][variant] = {c: {k: _agg([r["fair"][variant][c][k] for r in runs])
                                        for k in comps[c] if k != "interpolated"} for c in comps}
    if runs[0].get("method_fair"):  # every method on every variant, and its fair comparisons
        methods = list(runs[0]["method_fair"])
        summary["methods"] = {
            m: {"label": get_method(m).label, "routing": get_method(m).routing,
                "variants": {v: {k: _agg([r["variants"][v]["methods"][m][k] for r in runs])
                                 for k in ("merged_test", "gap_closed", "best_lambda_val")
                                 if runs[0]["variants"][v]["methods"][m][k] is not None}
                             for v in runs[0]["variants"]},
                "fair": {v: {c: _agg([r["method_fair"][m][v][c]["merged"] for r in runs]) for c in comps}
                         for v, comps in runs[0]["method_fair"][m].items()}}
            for m in methods}
    return summary


def _pct(d: dict) -> str:
    return f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f}"


def curve_at(runs: list[dict], variant: str, lam: str) -> str:
    values = [r["variants"][variant]["test_at"][lam] if "test_at" in r["variants"][variant]
              else r["variants"][variant]["test_curve"][lam] for r in runs]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * spread:.1f}"


def markdown(summary: dict, runs: list[dict]) -> str:
    """The README table: mean ± std over seeds (percent)."""
    new = "gap_closed" in next(iter(summary["variants"].values()))
    lines = [f"Preset `{summary['preset']}`, seeds {summary['seeds']}, test split (fonts never seen in training); "
             f"mean ± std over seeds" + ("; linearized fine-tuning and evaluation." if runs[0].get("linearized")
                                         else "."), ""]
    if new:
        lines += ["| fine-tuning | steps | pretrained + heads | individual | best λ (val) | task arithmetic | normalized "
                  "| gap closed | TIES (best λ) | smallest per-task gain (pts) | TA at λ=1/T | at λ=0.5 | at λ=1.0 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for variant, v in summary["variants"].items():
            lams = ", ".join(f"{x:g}" for x in v["best_lambda_val"]["values"])
            ties = (f"{_pct(v['ties_merged_test'])} ({', '.join(f'{x:g}' for x in v['ties_best_lambda_val']['values'])})"
                    if "ties_merged_test" in v else "—")
            lines.append(f"| {variant} ({v['label']}) | {v['steps']} | {_pct(summary['pretrained_test'])} | "
                         f"{_pct(v['individual_test'])} | {lams} | {_pct(v['merged_test'])} | {_pct(v['normalized'])} | "
                         f"{_pct(v['gap_closed'])} | {ties} | {min(v['min_gain_points']['values']):.1f} | "
                         f"{curve_at(runs, variant, '1/T')} | {curve_at(runs, variant, '0.5')} | "
                         f"{curve_at(runs, variant, '1.0')} |")
        if summary.get("fair"):
            lines += ["", "Fair SAM comparisons (differences in points, SAM-type variant minus plain; mean ± std over seeds):",
                      "", "| variant | (a) equal steps: merged | individual | (b) equal compute (plain 2× steps): merged "
                      "| individual | (c) equal individual accuracy: merged |", "|---|---|---|---|---|---|"]
            for variant, c in summary["fair"].items():
                def cell(comp, key):
                    return _pct(c[comp][key]) if comp in c else "—"
                lines.append(f"| {variant} | {cell('equal_steps', 'merged')} | {cell('equal_steps', 'individual')} | "
                             f"{cell('equal_compute', 'merged')} | {cell('equal_compute', 'individual')} | "
                             f"{cell('equal_individual', 'merged')} |")
    else:  # results written before the fair comparisons existed
        lines += ["| fine-tuning | pretrained + heads | individual fine-tuned | best shared λ (val) | task arithmetic merged "
                  "| normalized | loss vs individual (pts) | smallest per-task gain (pts) | merged at λ=0.3 | at λ=1.0 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for variant, v in summary["variants"].items():
            lams = ", ".join(f"{x:g}" for x in v["best_lambda_val"]["values"])
            lines.append(f"| {variant} | {_pct(summary['pretrained_test'])} | {_pct(v['individual_test'])} | {lams} | "
                         f"{_pct(v['merged_test'])} | {_pct(v['normalized'])} | {v['gap_points']['mean']:.1f} ± "
                         f"{v['gap_points']['std']:.1f} | {min(v['min_gain_points']['values']):.1f} | "
                         f"{curve_at(runs, variant, '0.3')} | {curve_at(runs, variant, '1.0')} |")
    bt = summary["build_time_s"]
    lines += ["", f"Build time per zoo: {bt['mean']:.0f} s (min {min(bt['values']):.0f}, max {max(bt['values']):.0f}; "
              f"{summary['torch_threads']} torch thread(s))."]
    return "\n".join(lines)


# -- the regime search table -------------------------------------------------------------------------------------
def search_markdown(data: dict) -> str:
    """One row per recipe tried (plain / SAM where both exist), measured rows first, then the issue's earlier probes."""
    lines = ["| recipe | tasks | seeds | pretrained | individual plain / SAM | TA best λ (val) plain / SAM | TA merged "
             "plain / SAM | normalized plain / SAM | gap closed plain / SAM | smallest task gain (pts) plain / SAM "
             "| build wall time (s; shared machine, load varies) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def two(row, key, fmt):
        vals = [row["variants"][v][key] for v in ("plain", "sam") if v in row["variants"]]
        return " / ".join(fmt(x) for x in vals)

    for row in data["probes"]:
        lines.append(f"| **{row['name']}**: {row['description']} | {row['n_tasks']} | {row['seeds']} | "
                     f"{100 * row['pretrained']:.1f} | {two(row, 'individual', lambda x: f'{100 * x:.1f}')} | "
                     f"{two(row, 'best_lambda', lambda x: f'{x:.2f}')} | {two(row, 'merged', lambda x: f'{100 * x:.1f}')} | "
                     f"{two(row, 'normalized', lambda x: f'{100 * x:.0f}')} | "
                     f"{two(row, 'gap_closed', lambda x: f'{100 * x:.0f} %')} | "
                     f"{two(row, 'min_gain_points', lambda x: f'{x:.1f}')} | {row['build_s']:.0f} |")
    lines += ["", "Earlier probes (measured before this search; not re-run):", ""]
    lines += ["| recipe | pretrained | individual plain / SAM | TA best λ | merged plain / SAM | gap closed plain / SAM |",
              "|---|---|---|---|---|---|"]
    for row in data.get("earlier", []):
        lines.append(f"| {row['recipe']} | {row['pretrained']} | {row['individual']} | {row['best_lambda']} | "
                     f"{row['merged']} | {row['gap_closed']} |")
    return "\n".join(lines)


def _apply(base: dict, overrides: dict) -> dict:
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _apply(base[k], v)
        else:
            base[k] = v
    return base


def probe_row(name: str, description: str, recipe: ZooRecipe, runs: list[dict]) -> dict:
    """One row of the regime search: means over the seeds run."""
    variants = {}
    for v in runs[0]["variants"]:
        rs = [r["variants"][v] for r in runs]
        variants[v] = {"individual": statistics.mean(x["individual_test"] for x in rs),
                       "merged": statistics.mean(x["merged_test"] for x in rs),
                       "normalized": statistics.mean(x["normalized"] for x in rs),
                       "gap_closed": statistics.mean(x["gap_closed"] for x in rs),
                       "best_lambda": statistics.mean(x["best_lambda_val"] for x in rs),
                       "min_gain_points": min(x["min_gain_points"] for x in rs)}
    return {"name": name, "description": description, "recipe": recipe.model_dump(mode="json"),
            "n_tasks": len(recipe.tasks), "seeds": [r["seed"] for r in runs],
            "pretrained": statistics.mean(r["pretrained_test"] for r in runs),
            "build_s": statistics.mean(r["build_time_s"] for r in runs), "variants": variants}


def run_seeds(recipe: ZooRecipe, seeds: list[int], out: Path, reuse: bool, ties: bool = True,
              methods: list[str] | None = None) -> list[dict]:
    runs = []
    for seed in seeds:
        seeded = recipe.model_copy(update={"seed": seed})
        zoo_dir = out / f"{recipe.preset}-seed{seed}"
        if reuse and zoo_dir.exists():
            zoo = open_zoo(zoo_dir)
        else:
            t0 = time.perf_counter()
            zoo = build_zoo(seeded, zoo_dir, overwrite=True)
            print(f"seed {seed}: built in {time.perf_counter() - t0:.1f} s", flush=True)
        chosen = (zoo_table_methods(zoo) if methods == ["all"] else methods) or None
        result = measure(zoo, ties=ties, methods=chosen)
        result["seed"] = seed
        result["build_time_s"] = zoo.manifest.build_wall_time_s
        result["torch_threads"] = zoo.manifest.threads
        result["pretrain_time_s"] = sum(zoo.manifest.stage_times_s.get(k, 0.0) for k in ("pretrain", "probe"))
        runs.append(result)
        brief = {v: {k: round(r[k], 4) for k in ("individual_test", "best_lambda_val", "merged_test", "normalized",
                                                  "gap_closed", "min_gain_points")}
                 for v, r in result["variants"].items()}
        print(f"seed {seed}: pretrained {result['pretrained_test']:.4f} {json.dumps(brief)}", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("zoos/regime"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="reuse zoos already built in --out")
    parser.add_argument("--combine", type=Path, nargs="+", default=None,
                        help="summarize the runs of these --json files (seeds run as separate processes)")
    parser.add_argument("--no-ties", action="store_true", help="skip the TIES sweep")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="also measure these merge methods on every variant ('all': the paper table's methods), "
                             "each at its best validation λ: the seed study's method table")
    parser.add_argument("--probe", default=None, help="regime search: name of this probe (a row of --search)")
    parser.add_argument("--base", default="demo", help="probe: the preset the overrides apply to")
    parser.add_argument("--set", default="{}", help="probe: JSON overrides of the base recipe (nested dicts merge)")
    parser.add_argument("--describe", default="", help="probe: one-line description for the table")
    parser.add_argument("--search", type=Path, default=Path("benchmarks/results/regime_search.json"),
                        help="probe: the regime-search results file (the row is added or replaced)")
    parser.add_argument("--variants", nargs="+", default=None,
                        help="build only these variants of the preset (run others as separate processes; --combine)")
    args = parser.parse_args()
    if args.probe:
        recipe = ZooRecipe.model_validate(_apply(get_preset(args.base).model_dump(mode="json"),
                                                 {**json.loads(args.set), "preset": args.probe}))
        runs = run_seeds(recipe, args.seeds, args.out, args.reuse, ties=not args.no_ties)
        data = json.loads(args.search.read_text()) if args.search.exists() else {"probes": [], "earlier": []}
        row = probe_row(args.probe, args.describe or args.set, recipe, runs)
        data["probes"] = [p for p in data["probes"] if p["name"] != args.probe] + [row]
        args.search.write_text(json.dumps(data, indent=1))
        print(json.dumps(row["variants"], indent=1))
        return
    if args.combine:  # seeds run as separate processes: one summary over their runs
        runs = merge_runs([r for f in args.combine for r in json.loads(f.read_text())["runs"]])
        args.seeds = [r["seed"] for r in runs]
    else:
        recipe = get_preset(args.preset)
        if args.variants:
            recipe = recipe.model_copy(update={"variants": [v for v in recipe.variants if v.name in args.variants],
                                               "preset": f"{args.preset}-{'-'.join(args.variants)}"})
        runs = run_seeds(recipe, args.seeds, args.out, args.reuse, ties=not args.no_ties, methods=args.methods)
    summary = summarize(runs, args.preset, args.seeds)
    if args.json:  # the recipe lets a zoo of the same recipe show this study (sammerge.analytics.seed_study)
        recipe_json = get_preset(args.preset).model_dump(mode="json")  # --combine: runs of --preset's recipe
        args.json.write_text(json.dumps({"summary": summary, "runs": runs, "recipe": recipe_json}, indent=2))
    print(json.dumps(summary, indent=2))
    print(markdown(summary, runs))


if __name__ == "__main__":
    main()
