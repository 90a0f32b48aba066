"""Write the README's measured tables from the benchmark results (``benchmarks/results/``); never by hand.

    python benchmarks/readme_tables.py            # rewrite every generated block of README.md
    python benchmarks/readme_tables.py --check    # exit 1 if README.md differs from what the results give

Each block sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; NAME is the results file it
comes from. The results are written by the benchmark commands the README shows next to each block.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

from adamerging import markdown as adamerging_markdown
from demo_regime import markdown as demo_regime_markdown
from demo_regime import search_markdown
from soak import pooled as soak_pooled
from soak import table as soak_table
from method_cost import markdown as method_cost_markdown
from plan_demo import markdown as plan_demo_markdown

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def demo_regime(data: dict) -> str:
    return demo_regime_markdown(data["summary"], data["runs"])


def merge_eval(r: dict) -> str:
    a, b, c, th = r["a_slider_update_ms"], r["b_grid21_s"], r["c_time_to_best_lambda"], r["throughput"]
    n, tasks = r["images_per_task"], r["tasks"]
    compiled = r.get("compiled")
    how = compiled.get("how", "`torch.compile`") if compiled else ""
    engine = (f" The engine runs as the app does: its forward compiled by {how} ({compiled['status']}, "
              f"{compiled['compile_s']:.1f} s in the background), chunks of {r['chunk_size']} images shared by "
              f"{r['engine_workers']} worker thread(s) with one torch thread each; the naive loop and the eager engine "
              f"use the {r['threads']} torch threads." if compiled and compiled.get("compile_s") is not None else "")
    return "\n".join([
        f"Zoo `{Path(r['zoo']).name}`, {tasks} tasks × {n} validation images, {r['threads']} torch thread(s), "
        f"{r['repeats']} repeats; {r['agreement']}.{engine}", "",
        "| measurement (same configurations, same images) | engine | naive (deepcopy + load_state_dict + "
        "per-task loop) | ratio |", "|---|---|---|---|",
        f"| (a) one slider update: merge + evaluate (median) | {a['engine']:.0f} ms | {a['naive']:.0f} ms | "
        f"{a['speedup']:.2f}× |"] + ([
        f"| (a') the same with the eager engine (no torch.compile) | {a['engine_eager']:.0f} ms | {a['naive']:.0f} ms | "
        f"{a['speedup_eager']:.2f}× |"] if "engine_eager" in a else []) + [
        f"| (b) 21-point shared-λ grid, loop engine | {b['engine_loop']:.2f} s | {b['naive']:.2f} s | "
        f"{b['speedup_loop']:.2f}× |",
        f"| (b') the same grid with `torch.func.vmap` over configurations | {b['engine_vmap']:.2f} s | "
        f"{b['naive']:.2f} s | {b['speedup_vmap']:.2f}× |",
        f"| (c) time to the best λ: coarse-to-fine vs the full grid | {c['smart_s']:.2f} s | {c['grid_s']:.2f} s "
        f"(full grid, engine) | {c['speedup']:.1f}× |", "",
        f"(c) found λ = {c['smart_lambda']:g} (validation accuracy {100 * c['smart_val_acc']:.2f} %); the grid's best "
        f"is λ = {c['grid_best_lambda']:g} ({100 * c['grid_best_val_acc']:.2f} %), with "
        f"{c['image_forwards']['smart']:,} instead of {c['image_forwards']['grid']:,} image forwards. Throughput: "
        f"{th['achieved_images_per_s']:,.0f} images/s against a FLOP-bound limit of "
        f"{th['flop_floor_images_per_s']:,.0f} images/s ({th['forward_mflops_per_image']:.2f} MFLOP per image at "
        f"the measured {th['matmul_gflops']:.0f} GFLOP/s of a 1024² fp32 matmul) = "
        f"{100 * th['fraction_of_floor']:.0f} % of the limit."] + _engine_options(r.get("d_engine_options")))


def _engine_options(d: dict | None) -> list[str]:
    if not d:
        return []
    rows = ["", "(d) Engine options tried (one forward of the evaluation set, interleaved with the engine as it is):", "",
            "| option | time | vs the engine | predictions identical to fp32 | note |", "|---|---|---|---|---|"]
    for name, o in d.items():
        rows.append(f"| {name} | {o['ms']:.0f} ms | {o['speedup']:.2f}× | {o['same predictions']} | "
                    f"{('compile ' + o['compile time']) if 'compile time' in o else ''} |")
    return rows


def browser_latency(r: dict) -> str:
    if "times_s" in r:  # the older single-mode format
        t = [1000 * x for x in r["times_s"]]
        return (f"Median **{statistics.median(t):.0f} ms** over {r['moves']} moves (min {min(t):.0f} ms, "
                f"max {max(t):.0f} ms) on zoo `{Path(r['zoo']).name}`.")
    rows = ["| server | median | p95 | min | max | moves | median per round |", "|---|---|---|---|---|---|---|"]
    names = {"default": "default (next steps' own merges prefetched on < 4 cores, with twins on ≥ 4)",
             "back-to-back": "default, next key press as soon as the page is idle",
             "off": "`SAMMERGE_PREFETCH=off`: every move computed on demand",
             "full": "`SAMMERGE_PREFETCH=full`: next steps and their twins prefetched",
             "floor": "floor: the same slider and result line, no merge, no evaluation",
             "engine": "engine alone: merge + evaluate the same merges and twins"}
    for mode in names:
        if mode not in r:
            continue
        m = r[mode]
        per_round = ", ".join(f"{x:.0f}" for x in m.get("round_medians_ms", []))
        rows.append(f"| {names[mode]} | **{m['median_ms']:.0f} ms** | {m['p95_ms']:.0f} ms | {m['min_ms']:.0f} ms | "
                    f"{m['max_ms']:.0f} ms | {m['moves']} | {per_round + ' ms' if per_round else '—'} |")
    served = r.get("default", {}).get("server_engine")
    return "\n".join(rows) + f"\n\nZoo `{r['zoo']}`; every move asks for a λ not shown before." + (
        f" The server's evaluator: {served}." if served else "")


def load(r: dict) -> str:
    m, lat = r["memory"], r["latency"]
    return (f"{r['sessions']} sessions × {r['moves_per_session']} moves on zoo `{r['zoo']}`: **{len(r['errors'])} errors**, "
            f"{r['sessions_with_own_values']}/{r['sessions']} sessions ended with their own λ in their address and in "
            f"their downloaded config; slider-to-number median **{lat['median_ms']:.0f} ms**, p95 {lat['p95_ms']:.0f} ms "
            f"over {lat['moves']} moves; server memory {m['before_mb']:.0f} MB at start → peak {m['peak_mb']:.0f} MB → "
            f"{m['after_mb']:.0f} MB after the sessions closed.")


def linear_preview(r: dict) -> str:
    return (f"Linearized zoo `{r['zoo']}` ({r['tasks']} tasks × {r['images_per_task']} images): precomputation from "
            f"cold {r['precompute_cold_s']:.1f} s (loading the evaluation images {r['precompute_images_s']:.1f} s, "
            f"f(θ0) and {r['jvps']} J·τ {r['precompute_forward_and_jvps_s']:.1f} s; {r['cache_bytes'] / 2**20:.1f} MiB "
            f"in the zoo's cache), loading it from the disk cache **{r['load_ms']:.1f} ms**; one slider update (task "
            f"arithmetic, new λ and λ_t) **{r['preview_update_ms']:.1f} ms** through the preview vs "
            f"{r['exact_update_ms']:.0f} ms merging and evaluating the linearized model; identical per-task accuracy in "
            f"{r['updates_with_identical_accuracy']}/{r['updates']} updates, max |Δ loss| "
            f"{r['max_abs_loss_difference']:.1e}; {r['threads']} torch thread(s)"
            + (f", machine load average {r['load_average_1min']:.1f} on {r['cpus']} CPUs." if "cpus" in r else "."))


def analytics(r: dict) -> str:
    e256, e512, pl = r["eig_256"], r["eig_512"], r["plane"]
    pts = pl["points"]
    return "\n".join([
        f"- Top Hessian eigenvalue of a demo checkpoint ({r['n_params'] / 1000:.0f}k parameters; {r['source']}): "
        f"{e256['seconds']:.1f} s on 256 images (Lanczos, {e256['hvps']} Hessian-vector products, "
        f"λ_max = {e256['lambda_max']:.1f}); {e512['seconds']:.1f} s on 512 images. Goal ≤ 10 s. One HVP by double "
        f"backward: {1000 * e256['hvp_double_backward_s']:.0f} ms (forward-over-reverse `torch.func`: "
        f"{1000 * e256['hvp_jvp_s']:.0f} ms).",
        f"- {pl['grid']}×{pl['grid']} τ_i–τ_j task plane, 2 tasks × 256 images per point ({pts} merged models, "
        f"{pts * 512:,} image forwards): {pl['seconds']:.1f} s; naive per-point deepcopy + load_state_dict: "
        f"{pl['naive_seconds_extrapolated']:.1f} s (timed on {pl['naive_points_timed']} points and extrapolated). "
        f"Goal ≤ 60 s. {r['threads']} torch thread(s)."])


def analysis(r: dict) -> str:
    """The sharpness table (plain vs SAM per task, and the mean) and the disentanglement error, from
    ``sammerge analyze ZOO --json``."""
    rows = {(x["task"], x["variant"]): x for x in r["sharpness"]}
    tasks = list(dict.fromkeys(x["task"] for x in r["sharpness"]))
    cols = [("top_eigenvalue", "λ_max", "{:.1f}"), ("trace_mean", "tr(H)", "{:.0f}"),
            ("m_sharpness", "m-sharpness", "{:.3f}"), ("accuracy", "val acc", "{:.1%}")]
    head = ["task"] + [f"{label} {v}" for _, label, _ in cols for v in ("plain", "SAM")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in tasks:
        cells = [fmt.format(rows[(t, v)][key]) for key, _, fmt in cols for v in ("plain", "sam")]
        lines.append(f"| {t} | " + " | ".join(cells).replace("%", "") + " |")
    means = [fmt.format(statistics.mean(rows[(t, v)][key] for t in tasks)) for key, _, fmt in cols
             for v in ("plain", "sam")]
    lines.append("| **mean** | " + " | ".join(f"**{m}**" for m in means).replace("%", "") + " |")
    st = r["settings"]
    xi = {v: statistics.mean(x["mean"] for x in res) for v, res in r.get("disentanglement", {}).items()}
    pairs = ", ".join(f"{x['tasks'][0]} + {x['tasks'][1]}" for x in next(iter(r["disentanglement"].values())))
    flatter = sum(rows[(t, "sam")]["top_eigenvalue"] < rows[(t, "plain")]["top_eigenvalue"] for t in tasks)
    lines += ["", f"Sharpness on {st['n_images']} {st['split']} images per task (fixed batch, seed {st['batch_seed']}), "
              f"with respect to all encoder parameters; heads frozen. SAM has the lower λ_max on {flatter} of "
              f"{len(tasks)} tasks. The mean weight-disentanglement error ξ (Ortiz-Jimenez et al.; 0 = none) over "
              f"a {st['disent_n']}×{st['disent_n']} grid of (α₁, α₂) ∈ [{st['disent_range'][0]:g}, "
              f"{st['disent_range'][1]:g}]² for {pairs}: "
              + ", ".join(f"{v} {x:.3f}" for v, x in xi.items()) + ".",
              "", f"The whole `sammerge analyze` run took {sum(r['timings_s'].values()):.0f} s at {r['threads']} torch "
              f"thread(s) (λ_max, {st['trace_samples']}-probe Hutchinson trace, m-sharpness, average sharpness for every "
              f"checkpoint; cosine and sign-conflict matrices; per-layer norms; the disentanglement heatmaps)."]
    return "\n".join(lines)


def cpu_vit(r: dict) -> str:
    lines = [f"timm `{r['model']}` ({r['parameters'] / 1e6:.1f} M parameters, random weights, seed {r['seed']}), "
             f"{r['tasks']} tasks, {r['threads']} torch thread(s) on a {r['cpu_count']}-core CPU shared with other jobs "
             f"(1-min load average {r['load_average_1min_at_end']:.1f} at the end), median of {r['repeats']}.", "",
             "| images per task | merge (registry, 8 τ) | merge (cached Σ τ) | evaluate | slider → number | images/s | "
             "95 % CI ± per task / mean (at 50 %) |", "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['images_per_task']} | {row['merge_s']:.1f} s | {row['merge_cached_sum_s']:.2f} s | "
                     f"{row['evaluate_s']:.1f} s | {row['slider_to_number_s']:.1f} s | {row['images_per_s']:.1f} | "
                     f"{100 * row['ci95_half_width_task']:.1f} / {100 * row['ci95_half_width_mean']:.1f} pts |")
    lines += ["", f"One Hessian-vector product (the unit of λ_max and trace) on 16 images: {r['hvp_16_images_s']:.1f} s."]
    return "\n".join(lines + _cpu_vit_explorer(r.get("explorer")))


def _cpu_vit_explorer(e: dict | None) -> list[str]:
    """The explorer path of ``benchmarks/cpu_vit.py``: time to the first (estimated) and to the refined number."""
    if not e:
        return []
    decision = (f"an exact evaluation of one merge is predicted at {e['predicted_exact_s']:.1f} s, over the "
                f"{e['latency_target_s']:g} s target, so each move shows an estimate first" if e["estimating"] else
                f"exact evaluation is within the {e['latency_target_s']:g} s target: no estimate step")
    lines = ["", f"**Through the explorer's engine** (`Explorer.first_look`, then `compare(allow_estimate=True)` as the "
                 f"page calls it, then the background refinement), in a **reduced configuration** to fit the shared "
                 f"CPU: the same model imported as a zoo of {e['tasks']} tasks × {len(e['variants'])} checkpoints, an "
                 f"image budget of {e['n_per_task']} per task, estimates from the first {e['estimate_n_per_task']}; "
                 f"measured throughput {e['images_per_s']:.1f} images/s, so {decision} ({e['threads']} torch "
                 f"thread(s), 1-min load average {e['load_average_1min_at_end']:.1f} at the end, measured "
                 f"{e['measured'][:10]}; one run per move, times from the move).", "",
             "| slider move | first number | page with twins (estimated) | refined to exact | exact mean |",
             "|---|---|---|---|---|"]
    for i, m in enumerate(e["moves"]):
        what = "first move (one-time: throughput probe, θ0 and fine-tuned models, references)" if i == 0 else "next move"
        lines.append(f"| λ = {m['lambda']:g}, {what} | {m['first_number_s']:.1f} s: {m['first_text']} | "
                     f"{m['estimated_page_s']:.1f} s | {m['refined_s']:.1f} s | {100 * m['exact_mean']:.1f} % |")
    return lines
def vit_step(r: dict) -> str:
    """The measured ViT-B/32 step and the paper-scale zoo's cost (``benchmarks/vit_step.py``)."""
    st, c, rec, g = r["steps"], r["cost"], r["recipe"], r["cost"]["gpu_assumption"]
    variants = "{" + ", ".join(f"{k} ({v} pass{'es' if v > 1 else ''})" for k, v in rec["variants"].items()) + "}"
    return "\n".join([
        f"Measured on this machine's CPU ({r['threads']} torch threads, load average {r['load_average']:.1f} while "
        f"measuring — other jobs shared the cores), {r['model']}, {r['n_params'] / 1e6:.1f} M parameters, batch "
        f"{r['batch']}, median of {r['repeats']} steps:", "",
        "| step | seconds per step | per image |", "|---|---|---|",
        f"| plain AdamW (forward + backward + update) | {st['plain']['step_s']:.1f} s | "
        f"{1000 * st['plain']['s_per_image']:.0f} ms |",
        f"| SAM (two forward/backward passes) | {st['sam']['step_s']:.1f} s | {1000 * st['sam']['s_per_image']:.0f} ms |",
        "",
        f"Forward pass: {r['forward_gflops_per_image']:.2f} GFLOP per image (counted by `torch.utils.flop_counter`); "
        f"training at ≈ 3× that ran at {r['achieved_train_gflops_per_s']:.0f} GFLOP/s here.", "",
        f"**The zoo**: {rec['tasks']} tasks × {variants} × {rec['seeds']} seeds = {c['finetune_jobs']} fine-tuning "
        f"jobs of {rec['steps']:,} steps × batch {rec['batch_size']} = {c['image_passes'] / 1e6:.1f} M image "
        f"forward/backward passes. On this CPU, at the plain step's measured rate per pass: "
        f"**{c['cpu_hours_this_machine']:,.0f} CPU-hours**. "
        f"On GPUs (**an estimate, not measured**: the counted FLOPs at {100 * g['mfu']:.0f} % of a "
        f"{g['name']}'s {g['peak_tflops_bf16']:.0f} TFLOP/s bf16 peak): ≈ {c['gpu_s_per_plain_step_estimate']:.2f} s "
        f"per plain step, **≈ {c['gpu_hours_estimate']:.1f} GPU-hours** for the whole zoo — with {c['finetune_jobs']} "
        f"independent jobs, about {60 * c['gpu_hours_estimate'] / 8:.0f} minutes of wall time on 8 GPUs if data "
        f"loading keeps up."])


def paper_table(text: str) -> str:
    return text.strip()


def browser_methods(r: dict) -> str:
    first = next(iter(r["by_method"]))
    rows = [f"| `{m}` | {d['median_ms']:.0f} ms | {d['p95_ms']:.0f} ms | {d['ratio_to_' + first]:.2f}× |"
            for m, per in r["by_method"].items() for d in [per["default"]]]
    label = "Demo zoo" if r.get("zoo", "demo").startswith("demo") else f"Zoo `{r['zoo']}`"
    return "\n".join([f"{label}, {r['moves']} λ moves per method in one run (one round), slider press to the new "
                      f"number on screen in Chromium; machine load average {r['load_average_1min']:.1f} at the end.",
                      "", f"| method | median | p95 | median vs `{first}` |", "|---|---|---|---|", *rows])


def plan_cli(r: dict) -> str:
    """`sammerge plan ZOO --json`: every measured group's worst loss per variant, and the plan at the tolerance."""
    variants = list(r["variants"])
    groups = list(r["variants"][variants[0]]["groups"])
    lines = ["| group | " + " | ".join(f"{v}: best method, λ, worst loss vs individual" for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for g in groups:
        cells = [r["variants"][v]["groups"][g] for v in variants]
        lines.append(f"| {g} | " + " | ".join(f"{c['method']}, {c['lambda']:g}, {c['worst_loss']:.1f} pts" for c in cells) + " |")
    tol = r["settings"]["tolerance"]
    plans = []
    for v in variants:
        plan = r["variants"][v]["plan"]
        stages = "; ".join("+".join(st["tasks"]) + f" ({st['method']}, λ {st['lambda']:g})" for st in plan["stages"])
        merged = {t for st in plan["stages"] for t in st["tasks"]}
        alone = [t for t in r["variants"][v]["individual"] if t not in merged]
        plans.append(f"{v}: {plan['models']} model(s) — " + (stages or "no merge") + (f"; alone: {', '.join(alone)}" if alone else ""))
    return "\n".join(lines) + (f"\n\nPlan at ≤ {tol:g} points lost per task ({r['settings']['validation']} for λ, "
                               f"{r['settings']['test']} for the losses): " + " · ".join(plans) + ".")


def paper_gap(text: str) -> str:
    """Gap closed per method and variant, (merged − pretrained) / (individual − pretrained), from the paper table."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")]
    mean = {}
    variants, methods = [], []
    for r in rows:
        variant, method, value = r[0], r[1], float(r[-2])
        mean[variant, method] = value
        variants += [variant] if variant not in variants else []
        methods += [method] if method not in methods and not method.startswith(("pretrained", "individual")) else []
    def gap(v, m):
        pre, ind = mean[v, "pretrained (zero-shot heads)"], mean[v, "individual fine-tuned"]
        return 100 * (mean[v, m] - pre) / (ind - pre)
    ta = {v: gap(v, "Task arithmetic") for v in variants}
    lines = ["| method | " + " | ".join(f"{v}: gap closed" for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for m in sorted(methods, key=lambda m: -gap(variants[0], m)):
        lines.append(f"| {m} | " + " | ".join(f"{gap(v, m):.0f} %" for v in variants) + " |")
    static = [m for m in methods if "task-routed" not in m]  # one merged model (EMR serves each task its own)
    best = {v: max(static, key=lambda m: gap(v, m)) for v in variants}
    lines += ["", "Best single merged model per variant: " + "; ".join(
        f"{v} {best[v]} {gap(v, best[v]):.0f} % (task arithmetic {ta[v]:.0f} %)" for v in variants) + "."]
    routed = [m for m in methods if m not in static]
    if routed:
        lines[-1] += (" Task-routed (one model per task, not comparable with a single merged model): " + "; ".join(
            f"{m} " + " / ".join(f"{gap(v, m):.0f} %" for v in variants) for m in routed) + ".")
    return "\n".join(lines)


def demo_methods(data: dict) -> str:
    """The seed study's "does SAM help method X?" table (sammerge.analytics.seed_study.method_table) and reading."""
    from sammerge.analytics.seed_study import method_reading, method_table
    study = {"summary": data["summary"], "recipe": data.get("recipe", {})}
    table = method_table(study)
    if table is None:
        return "(this study was measured before the per-method table existed)"
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(row[c]) if row[c] == row[c] else "—" for c in cols) + " |"
              for _, row in table.iterrows()]
    return "\n".join(lines + ["", method_reading(study)])


def soak(r: dict) -> str:
    """benchmarks/soak.py: one row per run and the pooled row (the harness's own table)."""
    goal = r.get("total") or soak_pooled([run["summary"] for run in r["runs"]])  # a stopped soak: pooled here
    rows = [run["summary"] for run in r["runs"]] + [goal]
    busy = r.get("beside") or f"{r['hogs']} CPU hog(s)"
    harness = f" (harness: {r['harness']})" if r.get("harness") else ""
    verdict = (f"Pooled over {len(r['runs'])} runs of {r['sessions']} sessions × {r['moves']} moves{harness}, {busy} "
               f"beside the server on {r['cpus']} cores: {goal.get('over_slow', '?')} moves over 10 s, "
               f"p95 {goal.get('p95_s', float('nan')):.2f} s, "
               f"{goal.get('wrong_values', '?')} sessions that did not end with their own values.")
    return soak_table(rows) + "\n\n" + verdict


def soak_startup(r: dict) -> str:
    """benchmarks/soak.py --startup: health check and first drawn explorer per launch, and what the page said."""
    lines = ["| launch | health check answered | explorer drawn | what the page said meanwhile |", "|---|---|---|---|"]
    for i, p in enumerate(r["startup"]):
        said = " → ".join(dict.fromkeys(s["text"][:70].strip() for s in p["page"] if s["text"].strip()))
        lines.append(f"| {i + 1} | {p.get('health_s', float('nan')):.1f} s | {p.get('explorer_s', float('nan')):.1f} s | "
                     f"{said.replace('|', '/') or '—'} |")
    where = (f"{r['hogs']} CPU hogs beside the server on {r['cpus']} cores"
             + (f", and {r['beside']}" if r.get("beside") else "") + ".")
    if r["zoo"].startswith("the app's default"):
        where = ("A first start on a fresh machine: an empty SAMMERGE_HOME, no SAMMERGE_ZOO, the app's default zoo "
                 "installed from the package and opened; " + where[0].lower() + where[1:])
    return "\n".join(lines) + "\n\n" + where


def lite0_build(r: dict) -> str:
    """benchmarks/lite0_build.py: the stages of a background Lite0 build, each fine-tune, the one-core baseline."""
    rec = r["recipe"]
    units = r["unit_s"]
    by_variant = {v: [s for u, s in units.items() if u.endswith("/" + v)] for v in rec["variants"]}
    lines = ["| | seconds |", "|---|---|",
             f"| load the images, encode them with the frozen prefix, fit {len(rec['tasks'])} heads | {r['setup_s']:.0f} |",
             f"| fine-tune {len(units)} units on {r['lanes']} processes | {r['fine_tuning_s']:.0f} |",
             f"| write the zoo (evaluate every checkpoint as stored) | {r['write_s']:.0f} |",
             f"| **whole build** | **{r['wall_s']:.0f} ({r['wall_s'] / 60:.1f} min)** |",
             f"| baseline: the same fine-tunes one after another on one core (sum of their times) | "
             f"{r['units_sum_s']:.0f} ({r['units_sum_s'] / r['fine_tuning_s']:.2f}× the parallel fine-tuning) |"]
    per = "; ".join(f"{v} {min(t):.0f}–{max(t):.0f} s" for v, t in by_variant.items())
    acc = ", ".join(f"{v} {a:.1%}" for v, a in r["individual_test"].items())
    return ("\n".join(lines) + f"\n\nTasks {', '.join(rec['tasks'])}; variants {', '.join(rec['variants'])}; "
            f"{rec['steps']} steps each (a SAM step is two passes). Each fine-tune on one torch thread: {per}. "
            f"{r['cpus']} CPU cores, load average {r['load_average_at_start'][0]:.1f} when it started. The zoo it wrote: "
            f"pretrained {r['pretrained_test']:.1%}, individual {acc} (test split).")


ADA = ("adamerging_task", "adamerging_layer")


def _lite0_best(merged: dict, names=None) -> tuple[str, dict] | None:
    """The method with the highest test accuracy among ``names`` (default: every static method) of one variant."""
    ok = {k: m for k, m in merged.items() if "test" in m and (k in names if names else k not in ADA)}
    if not ok:
        return None
    name = max(ok, key=lambda k: ok[k]["test"])
    return name, ok[name]


def lite0_search(rows: list) -> str:
    """benchmarks/lite0_regime.py: one row per recipe tried on EfficientNet-Lite0 (test split, one seed each)."""
    lines = ["| recipe | tasks | tuned from stage | optimizer, lr, steps | seed | pretrained | variants | individual | "
             "task arithmetic (gap closed) | best static method (gap closed) | "
             "AdaMerging, best of task- / layer-wise (gap closed) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rec, v = r["recipe"], r["variants"]
        names = [n for n in LITE0_VARIANTS if n in v]

        def per_variant(cell) -> str:
            return " / ".join(cell(n) for n in names) if names else "—"

        def ta(variant):
            m = v[variant]["merged"].get("task_arithmetic", {})
            return f"{m['test']:.1%} ({m['gap_closed']:+.0%})" if "test" in m else "—"

        def best(variant, which=None):
            found = _lite0_best(v[variant]["merged"], which)
            return "—" if found is None else f"{found[0]} {found[1]['test']:.1%} ({found[1]['gap_closed']:+.0%})"

        def label(variant):
            value = rec.get("asam_rho") if variant == "asam" else rec.get("rho")
            return variant + (f" ρ {value:g}" if not variant.startswith("plain") and value is not None else "")
        lines.append(f"| {r['name']} | {len(rec['tasks'])} | {rec['tail_from_stage']} | {rec['optimizer']}, {rec['lr']:g}, {rec['steps']} | "
                     f"{rec['seed']} | {r['pretrained_mean']:.1%} | {per_variant(label)} | "
                     f"{per_variant(lambda n: format(v[n]['individual_mean'], '.1%'))} | {per_variant(ta)} | "
                     f"{per_variant(best)} | {per_variant(lambda n: best(n, ADA))} |")
    tasks = "; ".join(sorted({", ".join(r["recipe"]["tasks"]) for r in rows}))
    return "\n".join(lines) + (f"\n\nTask sets: {tasks}. Test split, one run per row (where the fine-tuned "
                               f"models diverged — individual below pretrained — there is nothing to merge); λ of each method chosen on {rows[0]['recipe']['val_n']} validation "
                               "images per task on its own grid (λ = 0 is θ0); AdaMerging learns its λ on 64 unlabeled validation "
                               "images per task (entropy), where it was run." if rows else "")


LITE0_VARIANTS = ("plain_half", "plain", "plain_2x", "plain_4x", "sam", "asam")


def _seed_groups(rows: list) -> list[list]:
    """The rows of one recipe run with several seeds (recipes equal up to seed and AdaMerging settings)."""
    groups: dict = {}
    for r in rows:
        key = json.dumps({k: v for k, v in r["recipe"].items() if k not in ("seed", "adamerging", "variants")},
                         sort_keys=True)
        groups.setdefault(key, []).append(r)
    return [g for g in groups.values() if len(g) > 1]


def lite0_fair(rows: list) -> str:
    """The fair comparisons of SAM / ASAM with plain fine-tuning per method, mean ± std over seeds (points):
    (a) equal steps, (b) equal compute (plain with 2× steps: a SAM step is two passes), (c) equal individual
    accuracy (the plain family's merged-vs-individual line — plain_half, plain, plain_2x — at SAM's individual)."""
    from demo_regime import fair_comparisons
    lines = ["| recipe | seeds | variant | method | (a) equal steps: minus plain | (b) equal compute: minus plain 2× steps | "
             "(c) equal individual accuracy: minus the plain family there | individual: minus plain / minus plain 2× |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(values, extra=""):
        values = [100 * v for v in values if v is not None]
        if not values:
            return "—"
        return f"{statistics.mean(values):+.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "") + extra
    for group in _seed_groups(rows):
        if not all({"plain", "plain_2x", "plain_half"} <= set(r["variants"]) for r in group):
            continue
        seeds = ", ".join(str(s) for s in sorted(r["recipe"]["seed"] for r in group))
        for method in ("task_arithmetic", "iso_c", "tsv_m"):
            per_seed = []
            for r in group:
                view = {n: {"individual_test": v["individual_mean"], "merged_test": v["merged"][method]["test"],
                            "normalized": v["merged"][method]["test"] / v["individual_mean"]}
                        for n, v in r["variants"].items() if "test" in v["merged"].get(method, {})}
                per_seed.append((r, fair_comparisons(view)))
            for variant in [n for n in ("sam", "asam") if all(n in r["variants"] for r in group)]:
                comps = [c[variant] for _, c in per_seed]
                outside = sum(not c["equal_individual"]["interpolated"] for c in comps)
                lines.append(
                    f"| {group[0]['name'].rsplit('-seed', 1)[0]} | {seeds} | {variant} | {method} | "
                    f"{cell([c['equal_steps']['merged'] for c in comps])} | "
                    f"{cell([c['equal_compute']['merged'] for c in comps])} | "
                    f"{cell([c['equal_individual']['merged'] for c in comps], f' ({outside} of {len(comps)} extrapolated)' if outside else '')} | "
                    f"{cell([c['equal_steps']['individual'] for c in comps])} / {cell([c['equal_compute']['individual'] for c in comps])} |")
    if len(lines) == 2:
        return "No recipe has its plain_half and plain_2x runs for several seeds yet."
    return "\n".join(lines) + ("\n\nMerged test accuracy of the SAM-type variant minus plain's, in points, mean ± sample "
                               "std over the seeds (each seed paired: same probes, splits and batch order). (c) "
                               "interpolates the plain family's merged accuracy linearly between its two nearest "
                               "members at the SAM variant's individual accuracy (extrapolated from the nearest "
                               "segment when outside the family's range).")


def _ada_setting(settings: dict) -> str:
    """One AdaMerging setting of lite0_regime.py, in words."""
    parts = [f"{settings['images_per_task']} images, {settings['steps']} steps, from λ "
             + ("= task arithmetic's" if settings.get("init") == "ta" else f"{settings.get('init', 0.3):g}")]
    if settings.get("prior_weight"):
        parts.append(f"pull μ {settings['prior_weight']:g} toward it")
    if settings.get("split") == "test":
        parts.append("on the test inputs themselves (the paper's protocol)")
    if settings.get("holdout_per_task"):
        parts.append(f"step chosen on {settings['holdout_per_task']} held-out images")
    return ", ".join(parts)


def lite0_ada_levers(rows: list) -> str:
    """benchmarks/lite0_regime.py --ada-only: AdaMerging with other settings on the study's saved task vectors, beside
    the study's own AdaMerging and task arithmetic of the same seeds (mean ± std over seeds; wins = seeds where it
    beats task arithmetic)."""
    search = {r["name"]: r for r in json.loads((RESULTS / "lite0_regime_search.json").read_text(encoding="utf-8"))}
    groups: dict = {}
    for r in rows:
        groups.setdefault(json.dumps(r["adamerging"], sort_keys=True), []).append(r)
    lines = ["| variant | AdaMerging (layer-wise) | seeds | accuracy | gap closed | mean λ | minus task arithmetic "
             "(points) | above task arithmetic |", "|---|---|---|---|---|---|---|---|"]

    def row(variant, label, seeds, results, tas):
        acc = [m["test"] for m in results]
        diffs = [100 * (a - t) for a, t in zip(acc, tas)]
        sd = (lambda v: f" ± {statistics.stdev(v):.1f}") if len(acc) > 1 else (lambda v: "")
        lam = statistics.mean(statistics.mean(x for task in m["lambda"] for x in task) for m in results)
        return (f"| {variant} | {label} | {seeds} | {100 * statistics.mean(acc):.1f}{sd([100 * a for a in acc])} % | "
                f"{statistics.mean(m['gap_closed'] for m in results):+.0%} | {lam:.2f} | "
                f"{statistics.mean(diffs):+.1f}{sd(diffs)} | {sum(d > 0 for d in diffs)} of {len(diffs)} seeds |")
    names = sorted({r["name"] for r in rows}, key=lambda n: (len(n), n))
    for variant in ("plain", "sam", "asam"):
        study = [search[n] for n in names if n in search and variant in search[n]["variants"]
                 and "test" in search[n]["variants"][variant]["merged"].get("adamerging_layer", {})]
        if not study or not any(variant in r["variants"] for r in rows):
            continue
        lines.append(row(variant, "the study's: " + _ada_setting({**study[0]["recipe"]["adamerging"]}),
                         ", ".join(str(s["recipe"]["seed"]) for s in study),
                         [s["variants"][variant]["merged"]["adamerging_layer"] for s in study],
                         [s["variants"][variant]["merged"]["task_arithmetic"]["test"] for s in study]))
        for group in groups.values():
            group = sorted((r for r in group if variant in r["variants"] and r["name"] in search
                            and "adamerging_layer" in r["variants"][variant]["merged"]), key=lambda r: r["seed"])
            if group:
                lines.append(row(variant, _ada_setting(group[0]["adamerging"]), ", ".join(str(r["seed"]) for r in group),
                                 [r["variants"][variant]["merged"]["adamerging_layer"] for r in group],
                                 [search[r["name"]]["variants"][variant]["merged"]["task_arithmetic"]["test"]
                                  for r in group]))
    return "\n".join(lines) + ("\n\nOn the four-task study's saved task vectors (same probes and splits; Adam lr 0.01, "
                               "λ in [0, 1]); the unlabeled images are a seeded draw from each task's validation split; "
                               "task arithmetic's λ is the one it chose on 400 labelled validation images per task. "
                               "Test accuracy, mean ± sample std over the seeds; mean λ over tasks and layer groups.")


def lite0_seeds(rows: list) -> str:
    """The recipes of benchmarks/lite0_regime.py run with several seeds: mean ± sample std over the seeds."""
    lines = ["| recipe | seeds | variant | individual | task arithmetic (gap closed) | best static method, per seed | "
             "best static (gap closed) | AdaMerging layer-wise (gap closed) | minus plain, same seed: individual / "
             "task arithmetic / Iso-C (points) |", "|---|---|---|---|---|---|---|---|---|"]

    def spread(values):
        return (f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}" if len(values) > 1
                else f"{values[0]:.1%}")

    def paired(group, variant) -> str:
        """variant − plain per seed (same batches, probes and splits), mean ± std in accuracy points."""
        if variant == "plain" or not all("plain" in r["variants"] for r in group):
            return "—"
        cells = []
        for get in (lambda v: v["individual_mean"], lambda v: v["merged"]["task_arithmetic"].get("test"),
                    lambda v: v["merged"].get("iso_c", {}).get("test")):
            diffs = [100 * (get(r["variants"][variant]) - get(r["variants"]["plain"])) for r in group
                     if get(r["variants"][variant]) is not None and get(r["variants"]["plain"]) is not None]
            cells.append("—" if not diffs else f"{statistics.mean(diffs):+.1f}"
                         + (f" ± {statistics.stdev(diffs):.1f}" if len(diffs) > 1 else ""))
        return " / ".join(cells)

    def gaps(values):
        return f"{statistics.mean(values):+.0%}" + (f" ± {statistics.stdev(values):.0%}" if len(values) > 1 else "")

    for group in _seed_groups(rows):
        seeds = sorted(r["recipe"]["seed"] for r in group)
        for variant in [n for n in LITE0_VARIANTS if all(n in r["variants"] for r in group)]:
            vs = [r["variants"][variant] for r in group]
            ta = [v["merged"]["task_arithmetic"] for v in vs]
            bests = [_lite0_best(v["merged"]) for v in vs]
            ada = [a for a in (v["merged"].get("adamerging_layer") for v in vs) if a and "test" in a]
            ada_cell = (f"{spread([a['test'] for a in ada])} ({gaps([a['gap_closed'] for a in ada])})"
                        + ("" if len(ada) == len(vs) else f", {len(ada)} of {len(vs)} seeds") if ada else "—")
            lines.append(f"| {group[0]['name'].rsplit('-seed', 1)[0]} | {', '.join(map(str, seeds))} | {variant} | "
                         f"{spread([v['individual_mean'] for v in vs])} | {spread([m['test'] for m in ta])} "
                         f"({gaps([m['gap_closed'] for m in ta])}) | {', '.join(b[0] for b in bests)} | "
                         f"{spread([b[1]['test'] for b in bests])} ({gaps([b[1]['gap_closed'] for b in bests])}) | "
                         f"{ada_cell} | {paired(group, variant)} |")
    if len(lines) == 2:
        return "No recipe has been run with more than one seed yet."
    return "\n".join(lines) + ("\n\nMean ± sample standard deviation over the seeds (fine-tuning batches and probe "
                               "initialisation; the data split is fixed). The best static method is chosen per seed "
                               "on test accuracy, so its mean is optimistic by the choice.")


BLOCKS = {"demo_regime.json": demo_regime, "demo_regime.json#methods": demo_methods, "demo_regime_glyphs7.json": demo_regime, "regime_search.json": search_markdown,
          "merge_eval.json": merge_eval, "merge_eval_lite0.json": merge_eval, "analytics.json": analytics,
          "analysis.json": analysis, "analysis_lite0.json": analysis,
          "browser_latency.json": browser_latency, "paper_table.md": paper_table, "cpu_vit.json": cpu_vit,
          "load.json": load, "linear_preview.json": linear_preview, "vit_step.json": vit_step,
          "adamerging.json": adamerging_markdown, "paper_table.md#gap": paper_gap,
          "method_cost.json": method_cost_markdown, "method_cost_lite0.json": method_cost_markdown, "plan_demo.json": plan_demo_markdown, "browser_latency_methods.json": browser_methods, "browser_latency_methods_lite0.json": browser_methods,
          "soak.json": soak, "soak_lite0.json": soak, "soak_startup.json": soak_startup, "soak_startup_lite0.json": soak_startup, "soak_gc.json": soak,
          "soak_eager_export.json": soak,
          "paper_table_lite0.md": paper_table, "paper_table_lite0.md#gap": paper_gap,
          "browser_latency_lite0.json": browser_latency, "plan_lite0.json": plan_cli,
          "adamerging_lite0.md": paper_table,
          "lite0_regime_search.json": lite0_search,
          "lite0_regime_search.json#seeds": lite0_seeds, "lite0_build.json": lite0_build,
          "lite0_regime_search.json#fair": lite0_fair, "lite0_adamerging_levers.json": lite0_ada_levers}


def render(readme: str) -> str:
    for name, fn in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated: {re.escape(name)} -->\n)(?:.*?\n)?(<!-- end: {re.escape(name)} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no generated block for {name}")
        raw = (RESULTS / name.split("#")[0]).read_text(encoding="utf-8")
        body = fn(raw if name.split("#")[0].endswith(".md") else json.loads(raw))
        readme = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is out of date")
    args = ap.parse_args()
    current = README.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if wanted != current:
            print("README.md is out of date: run python benchmarks/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
