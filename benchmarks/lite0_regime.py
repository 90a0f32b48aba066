"""Regime search for a zoo on the ImageNet-pretrained EfficientNet-Lite0 (BN folded) and real 32 px images.

    python benchmarks/lite0_regime.py --name tail4-lr1e-3 --tail 4 --lr 1e-3 --steps 300 \\
        --search benchmarks/results/lite0_regime_search.json

Only the blocks from stage ``--tail`` on (and the 1×1 head convolution) are fine-tuned: the frozen prefix's
activations are computed once per image, and training and every merge evaluation run the tail alone.
Heads: a linear probe per task on the pretrained features, frozen. For each recipe (one row appended to
``--search``): per-task pretrained and fine-tuned test accuracy per variant, and for each merge method its test
accuracy at the λ chosen on validation (the method's grid) and the gap it closes,
(merged − pretrained) / (individual − pretrained). Needs the build extras (pip install -e '.[lite]') and
Debian's dataset-fashion-mnist.
"""
from __future__ import annotations

import argparse
import copy
import fcntl
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from sammerge.analytics.diagnostics import gap_closed
from sammerge.evaluation.adamerging import learn_coefficients
from sammerge.data import Split
from sammerge.evaluation.evaluator import Evaluator, mean_accuracy
from sammerge.evaluation.search import sweep_shared_lambda

from sammerge.merging import layers, linear_combination, task_id, task_vector
from sammerge.merging.task_vector import apply_task_vector, float_keys
from sammerge.io import load_state_dict, save_state_dict
from sammerge.models import lite0
from sammerge.models.lite0_tail import prefix_activations, split_lite0
from sammerge.models.presets import FinetuneRecipe, ProbeRecipe, VariantSpec
from sammerge.training import real_tasks
from sammerge.training.lite0_zoo import Lite0Build
from sammerge.training.train import finetune, fit_probe

METHODS = ("task_arithmetic", "ties", "tsv_m", "iso_c", "iso_cts", "wudi")
VARIANTS = ("plain", "sam", "asam", "plain_half", "plain_2x", "plain_4x")


def merged_row(old: dict | None, new: dict) -> dict:
    """``new``, or, when ``old`` is the same recipe run with other variants (same θ0 tail, probes and splits: the
    pretrained accuracies agree), ``old`` with ``new``'s variants added — so variants can be run later, apart."""
    def same(r):
        return {k: v for k, v in r["recipe"].items() if k not in ("variants", "adamerging")}
    if old is None or same(old) != same(new) or old["pretrained"] != new["pretrained"]:
        return new
    row = {**old, "variants": {**old["variants"], **new["variants"]}}
    row["recipe"] = {**old["recipe"], "variants": list(dict.fromkeys(old["recipe"]["variants"] + new["recipe"]["variants"]))}
    row["later_runs"] = old.get("later_runs", []) + [{"variants": new["recipe"]["variants"], "wall_s": new["wall_s"],
                                                      "adamerging": new["recipe"]["adamerging"]}]
    return row


def adamerging_rows(tail: nn.Module, heads: dict, theta0: dict, tvs: list, val_acts: dict, test: Evaluator,
                    pre_mean: float, indiv_mean: float, args, init: float = 0.3) -> dict:
    """AdaMerging task-wise and layer-wise (stem is frozen here: groups are the tail's stages and its head conv) on
    ``args.ada_images`` unlabeled validation activations per task (a seeded choice), Adam on λ from ``init`` in
    [0, 1]; ``args.ada_prior`` pulls λ toward ``init``, ``args.ada_holdout`` further images (the same seeded
    permutation, disjoint) choose the returned step."""
    tasks = list(heads)
    g = torch.Generator().manual_seed(args.seed)
    perms = [torch.randperm(len(val_acts[t]), generator=g) for t in tasks]
    images = [val_acts[t][perm[:args.ada_images]] for t, perm in zip(tasks, perms)]
    holdout = ([val_acts[t][perm[args.ada_images:args.ada_images + args.ada_holdout]] for t, perm in zip(tasks, perms)]
               if args.ada_holdout else None)
    fkeys = float_keys(theta0)
    out = {}
    for granularity, groups in (("task", {"all": fkeys}), ("layer", layers.layer_groups(fkeys))):
        if granularity not in args.ada_granularity:
            continue
        start = time.perf_counter()
        lam, trace, best_step, _, held = learn_coefficients(
            theta0, tvs, copy.deepcopy(tail), [heads[t] for t in tasks], images, groups, args.ada_steps, args.ada_lr,
            init, (0.0, 1.0), prior_weight=args.ada_prior, holdout=holdout)
        merged = linear_combination(theta0, tvs, [{k: float(lam[i, j]) for j, ks in enumerate(groups.values())
                                                   for k in ks} for i in range(len(tasks))])
        per_task = {t: r.accuracy for t, r in test.evaluate(merged).items()}
        mean = statistics.mean(per_task.values())
        out[f"adamerging_{granularity}"] = {
            "test": mean, "gap_closed": gap_closed(mean, pre_mean, indiv_mean), "per_task": per_task,
            "lambda": [[round(float(v), 4) for v in row] for row in lam.tolist()], "groups": list(groups),
            "entropy_start": trace[0], "entropy_best": trace[best_step], "best_step": best_step,
            "init": init, "seconds": time.perf_counter() - start,
            **({"holdout_start": held[0], "holdout_best": held[best_step]} if held else {})}
    return out


def ada_only(args, variants, run_dir, tail, heads, theta0, acts, labels, scorer, test, pre) -> dict:
    """AdaMerging alone (``--ada-only``) on the task vectors an earlier run saved under SAVE/NAME: one result per
    variant, with the individual accuracies measured again from those task vectors."""
    if run_dir is None or not (run_dir / "theta0.safetensors").exists():
        raise SystemExit("--ada-only needs the task vectors of an earlier run: --save DIR --resume and its --name")
    out = {}
    for variant in variants:
        init = 0.3 if args.ada_init != "ta" else ta_lambda(args, variant.name)
        tvs, indiv = [], {}
        for t in args.tasks:
            tvs.append(load_state_dict(run_dir / f"task_vector-{t}-{variant.name}.safetensors"))
            single = Evaluator(scorer, {t: heads[t]}, {t: (acts[t]["test"], labels[t]["test"])})
            indiv[t] = single.evaluate(apply_task_vector(theta0, tvs[-1]))[t].accuracy
        pre_mean, indiv_mean = statistics.mean(pre.values()), statistics.mean(indiv.values())
        out[variant.name] = {"individual_mean": indiv_mean, "pretrained_mean": pre_mean,
                             "merged": adamerging_rows(tail, heads, theta0, tvs,
                                                       {t: acts[t][args.ada_split] for t in args.tasks},
                                                       test, pre_mean, indiv_mean, args, init)}
        print(f"[{args.name}] {variant.name}: " + ", ".join(f"{k} {m['test']:.3f} ({m['gap_closed']:+.2f})"
                                                          for k, m in out[variant.name]["merged"].items()), flush=True)
    return {"name": args.name, "seed": args.seed, "tasks": list(args.tasks), "adamerging": ada_settings(args),
            "variants": out}


def ada_settings(args) -> dict:
    """The AdaMerging settings of a run, as recorded (the paper's when no restraint is set)."""
    out = {"steps": args.ada_steps, "lr": args.ada_lr, "images_per_task": args.ada_images,
           "granularity": list(args.ada_granularity), "init": 0.3 if args.ada_init != "ta" else "ta",
           "clamp": [0.0, 1.0]}
    if args.ada_prior:
        out["prior_weight"] = args.ada_prior
    if args.ada_holdout:
        out["holdout_per_task"] = args.ada_holdout
    if args.ada_split != "val":
        out["split"] = args.ada_split
    return out


def ta_lambda(args, variant: str) -> float:
    """Task arithmetic's λ chosen on labelled validation for this run and variant (from the search's row)."""
    rows = json.loads(args.search.read_text()) if args.search and args.search.exists() else []
    row = next((r for r in rows if r["name"] == args.name and variant in r["variants"]), None)
    if row is None:
        raise SystemExit(f"--ada-init ta needs --search with a row {args.name!r} holding variant {variant!r}")
    return float(row["variants"][variant]["merged"]["task_arithmetic"]["best_lambda_val"])


def run(args) -> dict:
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    prefix, tail = split_lite0(lite0.pretrained_lite0(fold=True), args.tail)
    data = {t: real_tasks.load_task(t, seed=args.data_seed) for t in args.tasks}
    acts = {t: {s: prefix_activations(prefix, Lite0Build.normalized(x)) for s, (x, _) in d.items()}
            for t, d in data.items()}
    labels = {t: {s: y for s, (_, y) in d.items()} for t, d in data.items()}
    prep_s = time.perf_counter() - t0
    theta0 = {k: v.detach().clone() for k, v in tail.state_dict().items()}
    run_dir = args.save / args.name if args.save else None
    reusable = False  # --resume: task vectors saved by an earlier run of this very recipe (same θ0) are reused
    if run_dir and args.resume and (run_dir / "theta0.safetensors").exists():
        saved = load_state_dict(run_dir / "theta0.safetensors")
        reusable = saved.keys() == theta0.keys() and all(torch.equal(saved[k], theta0[k]) for k in theta0)
        if not reusable:
            raise SystemExit(f"{run_dir}: its θ0 differs from this run's; not resuming (delete it or rename the run)")
    if run_dir:  # the tail's θ0 and (below) every task vector, for later analyses without retraining
        run_dir.mkdir(parents=True, exist_ok=True)
        save_state_dict(theta0, run_dir / "theta0.safetensors")
    g = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        pre_train = {t: tail(acts[t]["train"]) for t in args.tasks}
    heads = {t: fit_probe(pre_train[t], labels[t]["train"], int(labels[t]["train"].max()) + 1,
                          ProbeRecipe(steps=args.probe_steps), g) for t in args.tasks}
    scorer = copy.deepcopy(tail)  # the evaluators' module (an Evaluator freezes its module's parameters)
    val = Evaluator(scorer, heads, {t: (acts[t]["val"][:args.val_n], labels[t]["val"][:args.val_n])
                                    for t in args.tasks})
    test = Evaluator(scorer, heads, {t: (acts[t]["test"], labels[t]["test"]) for t in args.tasks})
    pre = {t: r.accuracy for t, r in test.evaluate(theta0).items()}
    recipe = FinetuneRecipe(lr=args.lr, steps=args.steps, batch_size=args.batch, fresh_noise=False,
                            weight_decay=args.weight_decay, optimizer=args.optimizer)
    known = {"plain": VariantSpec(name="plain"), "sam": VariantSpec(name="sam", sam=True, rho=args.rho),
             "asam": VariantSpec(name="asam", sam=True, adaptive=True, rho=args.asam_rho),
             "plain_half": VariantSpec(name="plain_half", steps=args.steps // 2),
             "plain_2x": VariantSpec(name="plain_2x", steps=2 * args.steps),
             "plain_4x": VariantSpec(name="plain_4x", steps=4 * args.steps)}
    variants = [known[v] for v in args.variants]
    if args.ada_only:
        return ada_only(args, variants, run_dir, tail, heads, theta0, acts, labels, scorer, test, pre)
    rows = {}
    for variant in variants:
        tvs, indiv, train_s, resumed = [], {}, 0.0, []
        for t in args.tasks:
            saved_tv = run_dir / f"task_vector-{t}-{variant.name}.safetensors" if run_dir else None
            if reusable and saved_tv.exists():
                tvs.append(load_state_dict(saved_tv))
                resumed.append(t)
                theta_t = apply_task_vector(theta0, tvs[-1])
            else:
                tail.load_state_dict(theta0)
                start = time.perf_counter()
                split = Split(acts[t]["train"], labels[t]["train"],
                              torch.zeros(len(labels[t]["train"]), dtype=torch.int64))
                finetune(tail, heads[t], split, recipe, variant, torch.Generator().manual_seed(args.seed))
                train_s += time.perf_counter() - start
                theta_t = {k: v.detach().clone() for k, v in tail.state_dict().items()}
                tvs.append(task_vector(theta_t, theta0))
                if saved_tv:
                    save_state_dict(tvs[-1], saved_tv)
            single = Evaluator(scorer, {t: heads[t]}, {t: (acts[t]["test"], labels[t]["test"])})
            indiv[t] = single.evaluate(theta_t)[t].accuracy
        tail.load_state_dict(theta0)
        pre_mean, indiv_mean = statistics.mean(pre.values()), statistics.mean(indiv.values())
        merged = {}
        for name in args.methods:
            start = time.perf_counter()
            try:
                sweep = sweep_shared_lambda(val, name, theta0, tvs, test_evaluator=test,
                                            task_ids=[task_id(t, variant.name) for t in args.tasks])
            except Exception as exc:  # noqa: BLE001 - a method that cannot run here: recorded, not fatal
                merged[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            mean = mean_accuracy(sweep.test)
            merged[name] = {"test": mean, "gap_closed": gap_closed(mean, pre_mean, indiv_mean),
                            "best_lambda_val": sweep.best_lambda, "seconds": time.perf_counter() - start,
                            "per_task": {t: r.accuracy for t, r in sweep.test.items()}}
        if args.ada_steps:
            init = merged["task_arithmetic"]["best_lambda_val"] if args.ada_init == "ta" else 0.3
            merged.update(adamerging_rows(tail, heads, theta0, tvs, {t: acts[t][args.ada_split] for t in args.tasks}, test,
                                          pre_mean, indiv_mean, args, init))
        rows[variant.name] = {"individual": indiv, "individual_mean": indiv_mean, "train_s": train_s,
                              "resumed_tasks": resumed,
                              "merged": merged}
        print(f"[{args.name}] {variant.name}: individual {indiv_mean:.3f} (pretrained {pre_mean:.3f}); "
              + ", ".join(f"{m} {r.get('test', float('nan')):.3f} ({r.get('gap_closed', float('nan')):+.2f})"
                          for m, r in merged.items()), flush=True)
    return {"name": args.name, "recipe": {"tail_from_stage": args.tail, "lr": args.lr, "steps": args.steps,
                                          "batch_size": args.batch, "optimizer": args.optimizer,
                                          "weight_decay": args.weight_decay, "rho": args.rho,
                                          "asam_rho": args.asam_rho, "variants": list(args.variants),
                                          "probe_steps": args.probe_steps, "seed": args.seed, "val_n": args.val_n,
                                          "data_seed": args.data_seed, "tasks": list(args.tasks),
                                          "adamerging": ada_settings(args) if args.ada_steps else None},
            "splits": {t: real_tasks.describe(t, args.data_seed) for t in args.tasks},
            "pretrained": pre, "pretrained_mean": statistics.mean(pre.values()), "variants": rows,
            "prefix_s": prep_s, "wall_s": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tail", type=int, default=4, help="first fine-tuned stage (0–6)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--rho", type=float, default=0.05, help="SAM's ρ")
    ap.add_argument("--asam-rho", type=float, default=0.5, help="ASAM's ρ")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=["plain", "sam"],
                    help="plain_half / plain_2x / plain_4x: plain with half / twice / four times the steps (the fair "
                         "comparisons: SAM costs two passes a step; the plain family's merged-vs-individual curve)")
    ap.add_argument("--probe-steps", type=int, default=300)
    ap.add_argument("--val-n", type=int, default=400, help="validation images per task that choose λ")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--tasks", nargs="+", default=list(real_tasks.TASKS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--ada-steps", type=int, default=0, help="AdaMerging (task- and layer-wise) Adam steps; 0: none")
    ap.add_argument("--ada-lr", type=float, default=0.01)
    ap.add_argument("--ada-images", type=int, default=64, help="unlabeled validation images per task for AdaMerging")
    ap.add_argument("--ada-init", default="0.3", choices=("0.3", "ta"),
                    help="AdaMerging's start: 0.3 (the paper) or 'ta', task arithmetic's λ chosen on labelled "
                         "validation (read from --search)")
    ap.add_argument("--ada-split", choices=("val", "test"), default="val",
                    help="where AdaMerging's unlabeled images come from: validation (ours) or the test inputs "
                         "themselves (the paper's transductive protocol; labels never read)")
    ap.add_argument("--ada-prior", type=float, default=0.0, help="μ of the pull μ · mean (λ − init)² (0: none)")
    ap.add_argument("--ada-holdout", type=int, default=0,
                    help="further unlabeled validation images per task whose entropy picks AdaMerging's step (0: none)")
    ap.add_argument("--save", type=Path, default=None,
                    help="write the tail's θ0 and every task vector (safetensors) under SAVE/NAME/")
    ap.add_argument("--resume", action="store_true",
                    help="reuse task vectors an earlier, interrupted run of NAME saved under SAVE (same θ0); "
                         "their training seconds are not counted")
    ap.add_argument("--search", type=Path, default=None, help="append this recipe's row to a JSON list")
    ap.add_argument("--ada-granularity", nargs="+", choices=("task", "layer"), default=["task", "layer"])
    ap.add_argument("--ada-only", type=Path, default=None, metavar="JSON",
                    help="only AdaMerging (--ada-steps, --ada-lr, --ada-images, --ada-granularity) on the task vectors "
                         "saved under SAVE/NAME; its result is appended to this JSON list (replacing one of the same "
                         "name and settings), the search is not touched")
    args = ap.parse_args()
    row = run(args)
    if args.ada_only:
        def key(r):
            return r["name"], json.dumps(r["adamerging"], sort_keys=True)
        locked_update(args.ada_only, lambda rows: [r for r in rows if key(r) != key(row)] + [row])
        return
    if args.search:
        def merge(rows: list) -> list:
            old = next((r for r in rows if r["name"] == args.name), None)
            merged = merged_row(old, row)
            if old is not None and merged is row and not set(old["variants"]) <= set(row["variants"]):
                kept = args.search.with_name(f"{args.name}.row.json")
                kept.write_text(json.dumps(row, indent=1))
                raise SystemExit(f"{args.name}: the search's row of that name is another recipe or setup (its "
                                 f"pretrained accuracies differ) and has variants this run lacks; not replaced. "
                                 f"This run's row: {kept}")
            return [r for r in rows if r["name"] != args.name] + [merged]
        locked_update(args.search, merge)


def locked_update(path: Path, update) -> None:
    """``path`` (a JSON list) ← ``update(its rows)``, read-modify-write under an exclusive lock: several runs may
    finish side by side."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = update(json.loads(path.read_text()) if path.exists() else [])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(path)

if __name__ == "__main__":
    main()
