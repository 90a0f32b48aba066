"""A seed study: one recipe built and measured with several seeds (``benchmarks/demo_regime.py``), shown beside a
zoo built from the same recipe, so one seed's numbers come with their spread.

A study belongs to a zoo when the study's recipe equals the zoo's except for the seed, the preset name and the
set of variants, and each of the zoo's variants is in the study with the same settings: the same recipe and seed
give the same checkpoints, so the zoo is one of the study's runs (or another seed of it). Numbers are test-split
accuracies (fractions); differences are SAM-type variant minus plain::

    (a) equal steps:      merged(SAM) − merged(plain)
    (b) equal compute:    merged(SAM) − merged(plain with 2× steps)        (SAM costs two passes per step)
    (c) equal individual: merged(SAM) − merged_plain(individual(SAM))      (plain family interpolated)
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sammerge.errors import ConfigError
from sammerge.io import atomic_write_text

STUDY_FILE = "seed_study.json"
_IGNORED = ("preset", "seed", "variants")
COMPARISONS = {"equal_steps": "(a) equal steps", "equal_compute": "(b) equal compute (plain 2× steps)",
               "equal_individual": "(c) equal individual accuracy"}


def study_path(zoo) -> Path:
    return Path(zoo.path) / "analysis" / STUDY_FILE


def recipe_mismatches(study_recipe: dict, zoo_recipe: dict) -> list[str]:
    """Why a study's recipe is not the zoo's (empty when it is, up to seed, preset name and extra variants)."""
    problems = [f"recipe field '{k}' differs (study {study_recipe.get(k)!r}, zoo {zoo_recipe.get(k)!r})"
                for k in sorted(set(study_recipe) | set(zoo_recipe)) if k not in _IGNORED
                and study_recipe.get(k) != zoo_recipe.get(k)]
    study_variants = {v["name"]: v for v in study_recipe.get("variants", [])}
    for v in zoo_recipe.get("variants", []):
        if v["name"] not in study_variants:
            problems.append(f"variant '{v['name']}' is not in the study")
        elif study_variants[v["name"]] != v:
            problems.append(f"variant '{v['name']}' has other settings in the study")
    return problems


def attach_study(zoo, study: dict) -> Path:
    """Write ``study`` ({"recipe", "summary", ...}) into ``ZOO/analysis`` after checking it is this zoo's recipe."""
    if zoo.manifest.recipe is None:
        raise ConfigError(f"{zoo.path}: an imported zoo has no recipe, so no seed study can belong to it")
    if "recipe" not in study or "summary" not in study:
        raise ConfigError("seed study: needs 'recipe' and 'summary' (benchmarks/demo_regime.py --json writes both)")
    problems = recipe_mismatches(study["recipe"], zoo.manifest.recipe.model_dump(mode="json"))
    if problems:
        raise ConfigError("seed study does not belong to this zoo: " + "; ".join(problems))
    path = study_path(zoo)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"recipe": study["recipe"], "summary": study["summary"]}, indent=1))
    return path


def load_study(zoo) -> dict | None:
    """The zoo's seed study, or None (none attached, unreadable, or no longer this zoo's recipe)."""
    path = study_path(zoo)
    if zoo.manifest.recipe is None or not path.is_file():
        return None
    try:
        study = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if recipe_mismatches(study.get("recipe", {}), zoo.manifest.recipe.model_dump(mode="json")):
        return None
    return study


def _pm(stat: dict, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def study_table(study: dict) -> pd.DataFrame:
    """One row per variant: steps, individual, task arithmetic at the best validation λ, normalized, gap closed
    (mean ± std over seeds, in %), and the seeds' best λ."""
    rows = []
    for name, v in study["summary"]["variants"].items():
        rows.append({"variant": name, "fine-tuning": v.get("label", name), "steps": v.get("steps"),
                     "individual (%)": _pm(v["individual_test"]), "task arithmetic (%)": _pm(v["merged_test"]),
                     "normalized (%)": _pm(v["normalized"]), "gap closed (%)": _pm(v["gap_closed"]),
                     "best λ per seed": ", ".join(f"{x:g}" for x in v["best_lambda_val"]["values"])})
    return pd.DataFrame(rows)


def fair_table(study: dict) -> pd.DataFrame:
    """One row per SAM-type variant and comparison: merged (and individual) difference to plain, in points."""
    rows = []
    for name, comps in study["summary"].get("fair", {}).items():
        for key, label in COMPARISONS.items():
            if key in comps:
                c = comps[key]
                rows.append({"variant": name, "comparison": label, "merged Δ (pts)": _pm(c["merged"]),
                             "individual Δ (pts)": _pm(c["individual"]) if "individual" in c else "—"})
    return pd.DataFrame(rows)


def study_reading(study: dict) -> str:
    """One sentence per SAM-type variant at equal steps, with its sign and spread, from the numbers."""
    seeds = study["summary"]["seeds"]
    parts = []
    for name, comps in study["summary"].get("fair", {}).items():
        if "equal_steps" not in comps:
            continue
        merged = comps["equal_steps"]["merged"]
        values = merged["values"]
        if all(x > 0 for x in values):
            verdict = "above plain on every seed"
        elif all(x < 0 for x in values):
            verdict = "below plain on every seed"
        else:
            verdict = "above plain on some seeds and below on others"
        parts.append(f"`{name}` merges are {100 * merged['mean']:+.1f} ± {100 * merged['std']:.1f} points against "
                     f"plain at equal steps ({verdict})")
    if not parts:
        return ""
    return f"Over seeds {', '.join(map(str, seeds))}: " + "; ".join(parts) + "."


def _fair_variants(study: dict) -> list[str]:
    """The SAM-type variants (those with fair comparisons), in the recipe's order."""
    fair = list(study["summary"].get("fair", {}))
    order = [v["name"] for v in study.get("recipe", {}).get("variants", [])]
    return sorted(fair, key=lambda v: order.index(v) if v in order else len(order))


def _by_plain_gap(methods: dict) -> list[str]:
    """Method names, largest plain gap closed first."""
    def gap(name):
        plain = methods[name]["variants"].get("plain", {}).get("gap_closed")
        return -plain["mean"] if plain else 0.0
    return sorted(methods, key=gap)


def method_table(study: dict) -> pd.DataFrame | None:
    """"Does SAM help method X?": one row per merge method (at its best validation λ per seed) — merged test accuracy
    and gap closed of plain and each SAM-type variant, and the SAM-type variant minus plain at (a) equal steps and
    (c) equal individual accuracy, in points; mean ± std over seeds. None for a study without methods."""
    methods = study["summary"].get("methods")
    if not methods:
        return None
    rows = []
    for name in _by_plain_gap(methods):
        m = methods[name]
        label = m.get("label", name)
        row = {"method": label + (" (task-routed)" if m.get("routing") == "task_routed" and "routed" not in label
                                  else "")}
        for v in ["plain", *_fair_variants(study)]:
            if v in m["variants"]:
                row[f"{v} merged (%)"] = _pm(m["variants"][v]["merged_test"])
                row[f"{v} gap closed (%)"] = _pm(m["variants"][v]["gap_closed"])
        for v in _fair_variants(study):
            comps = m.get("fair", {}).get(v, {})
            for key in ("equal_steps", "equal_individual"):
                if key in comps:
                    row[f"{v} − plain, {key.replace('_', ' ')} (pts)"] = _pm(comps[key])
        rows.append(row)
    return pd.DataFrame(rows)


def method_reading(study: dict) -> str:
    """Per SAM-type variant: which methods its merges beat plain on at equal steps on every seed, which lose on every
    seed, and which are mixed — read from the numbers, whatever the sign."""
    methods = study["summary"].get("methods") or {}
    parts = []
    for v in _fair_variants(study):
        groups = {"above plain on every seed": [], "below plain on every seed": [], "mixed over seeds": []}
        for name in _by_plain_gap(methods):
            comp = methods[name].get("fair", {}).get(v, {}).get("equal_steps")
            if comp is None:
                continue
            values = comp["values"]
            key = ("above plain on every seed" if all(x > 0 for x in values) else
                   "below plain on every seed" if all(x < 0 for x in values) else "mixed over seeds")
            groups[key].append(f"{name} ({100 * comp['mean']:+.1f})")
        text = "; ".join(f"{k}: {', '.join(g)}" for k, g in groups.items() if g)
        if text:
            parts.append(f"`{v}` at equal steps (points vs plain) — {text}")
    return ". ".join(parts) + ("." if parts else "")
