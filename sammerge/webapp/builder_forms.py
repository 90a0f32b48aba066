"""The zoo builder's two forms, each a recipe's knobs → one background build in the server's shared worker (key
``build:{zoo dir}``): the small glyph encoder's presets (:func:`sammerge.training.build.build_zoo`) and the
EfficientNet-Lite0 zoo on real images (:func:`sammerge.training.lite0_background.build_lite0_zoo`)."""
from __future__ import annotations

import re
from pathlib import Path

import streamlit as st
from pydantic import ValidationError

from sammerge.errors import SammergeError, invalid_fields
from sammerge.models.presets import ALL_TASKS, PRESETS, get_preset
from sammerge.training import real_tasks
from sammerge.training.build import build_zoo, default_zoo_dir
from sammerge.training.knobs import has_sam_and_asam, with_knobs
from sammerge.training.lite0_background import build_lite0_zoo, missing_requirements, unit_cost
from sammerge.training.lite0_zoo import PASSES, TASK_DESCRIPTIONS, Lite0ZooRecipe
from sammerge.webapp import jobs_view

REAL_TASKS = ("mnist", "fashion_mnist", "sklearn_digits", "textures")
NAME = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"


def name_problems(name: str) -> list[str]:
    return [] if re.fullmatch(NAME, name or "") else [
        "zoo name: use 1–64 letters, digits, '-' or '_', starting with a letter or digit"]


def submit_or_show(worker, problems: list[str], out: Path, name: str, plan: str, button_key: str, work) -> None:
    """Every problem at once (then nothing can be built), else the plan and a build button — unless this zoo's
    build is running (the page's progress view shows it). ``work(progress, cancel_event)`` is the job."""
    if problems:
        for p in problems:
            st.error(p, icon=":material/block:")
        return
    task = worker.get(f"build:{out}")
    if task is not None and task.active:
        return
    st.caption(plan)
    if st.button("Build this zoo", type="primary", key=button_key):
        worker.submit(f"build:{out}", work, label=f"building zoo {name}", record_root=out.parent,
                      owner=jobs_view.current_session_id(), restart=True)


def glyph_form(worker) -> None:
    """The glyph encoder: a preset, then its knobs (tasks, seed, lr, steps, fine-tuned layers, ρ, extra variants)."""
    base_name = st.selectbox("Start from the preset", list(PRESETS), key="zb_preset",
                             help="tiny: seconds, for trying the builder; demo: the shipped demo's recipe (minutes).")
    base = get_preset(base_name)
    c1, c2, c3 = st.columns(3)
    tasks = c1.multiselect("Tasks", ALL_TASKS, default=base.tasks, key=f"zb_tasks_{base_name}")
    seed = c2.number_input("Seed", 0, 2**31 - 1, base.seed, key=f"zb_seed_{base_name}")
    name = c3.text_input("Zoo name", f"{base_name}-custom", key="zb_name",
                         help="Letters, digits, '-' and '_'; the zoo is written to the server's zoo folder.")
    c1, c2, c3 = st.columns(3)
    lr = c1.number_input("Fine-tuning learning rate", 1e-6, 1.0, base.finetune.lr, format="%.1e", key=f"zb_lr_{base_name}")
    steps = c2.number_input("Fine-tuning steps", 1, 100_000, base.finetune.steps, key=f"zb_steps_{base_name}")
    trainable = c3.selectbox("Fine-tuned layers", ["all", "last_stage", "last_two_stages"], key="zb_trainable")
    c1, c2, c3, c4 = st.columns(4)
    both_kinds = has_sam_and_asam(base)
    adaptive = c1.toggle("ρ of ASAM" if both_kinds else "ASAM instead of SAM", key="zb_asam",
                         help="Adaptive SAM (Kwon et al.); the paper uses ρ = 0.5. "
                              + ("This preset fine-tunes with both SAM and ASAM: the toggle picks whose ρ is set here."
                                 if both_kinds else ""))
    rho = c2.number_input("ρ", 0.001, 5.0, 0.5 if adaptive else 0.05, key=f"zb_rho_{adaptive}")
    linearized = c3.toggle("Linearized fine-tuning", key="zb_lin",
                           help="Fine-tune f(θ0) + J(θ − θ0) (Ortiz-Jimenez et al.); merges are scored exactly and "
                                "instantly in the explorer.")
    equal_compute = c4.toggle("Add plain with 2× steps", key="zb_2x",
                              help="A third variant, plain_2x: equal compute with SAM, which costs two passes a step.")
    problems, recipe, plan = name_problems(name), None, ""
    try:
        recipe = with_knobs(base, seed=int(seed), tasks=tasks, lr=float(lr), steps=int(steps), rho=float(rho),
                            adaptive=adaptive, linearized=linearized, trainable=trainable, equal_compute=equal_compute)
    except SammergeError as exc:
        problems.append(str(exc))
    out = default_zoo_dir() / (name or "_")
    if recipe is not None:
        steps_total = recipe.pretrain.steps + sum((v.steps or recipe.finetune.steps) * (2 if v.sam else 1)
                                                  for v in recipe.variants) * len(recipe.tasks)
        plan = (f"{len(recipe.tasks)} tasks × {len(recipe.variants)} variants "
                f"({', '.join(v.describe() + ('' if not v.steps else f' × {v.steps} steps') for v in recipe.variants)})"
                f", {steps_total:,} training steps in all → `{out}`"
                + (" (exists: a rebuild reuses every finished job whose inputs are unchanged)"
                   if (out / "zoo.json").is_file() else ""))

    def work(progress, cancel_event, recipe=recipe, out=out):
        return str(build_zoo(recipe, out, overwrite=True, progress=progress, cancel_event=cancel_event).path)
    submit_or_show(worker, problems, out, name, plan, "zb_go", work)


def lite0_form(worker) -> None:
    """EfficientNet-Lite0 on real images: tasks, variants, lr, steps, ρ of SAM and ASAM, seed (defaults: the shipped
    zoo's recipe plus the fourth real task); what this machine lacks for the chosen tasks is listed up front."""
    base = Lite0ZooRecipe()
    st.markdown(
        "ImageNet-trained EfficientNet-Lite0 with its batch norms folded; stages ≥ 3 and the head convolution are "
        "fine-tuned on 32 px real images, one linear-probe head per task. The fine-tunes run in two worker "
        "processes at low priority, so the explorer stays responsive while it builds.")
    c1, c2, c3 = st.columns(3)
    tasks = c1.multiselect("Tasks", real_tasks.TASKS, default=list(REAL_TASKS), key="zb_l0_tasks",
                           help="; ".join(f"{t}: {TASK_DESCRIPTIONS[t]}" for t in real_tasks.TASKS))
    variants = c2.multiselect("Variants", list(PASSES), default=["plain", "sam"], key="zb_l0_variants",
                              help="plain: AdamW; sam: SAM around AdamW; asam: adaptive SAM. All see the same batches.")
    name = c3.text_input("Zoo name", f"lite0-real{len(REAL_TASKS)}", key="zb_l0_name",
                         help="Letters, digits, '-' and '_'; the zoo is written to the server's zoo folder.")
    c1, c2, c3, c4, c5 = st.columns(5)
    lr = c1.number_input("Learning rate", 1e-7, 1.0, base.lr, format="%.1e", key="zb_l0_lr")
    steps = c2.number_input("Steps", 1, 100_000, base.steps, key="zb_l0_steps")
    rho = c3.number_input("SAM ρ", 1e-4, 5.0, base.rho, format="%.4f", key="zb_l0_rho")
    asam_rho = c4.number_input("ASAM ρ", 1e-4, 5.0, base.asam_rho, format="%.4f", key="zb_l0_asam_rho")
    seed = c5.number_input("Seed", 0, 2**31 - 1, base.seed, key="zb_l0_seed")
    problems, recipe, plan = name_problems(name), None, ""
    try:
        recipe = Lite0ZooRecipe(tasks=tuple(tasks), variants=tuple(variants), lr=float(lr), steps=int(steps),
                                rho=float(rho), asam_rho=float(asam_rho), seed=int(seed))
    except ValidationError as exc:
        problems.append(invalid_fields(exc, "recipe field"))
    out = default_zoo_dir() / (name or "_")
    if recipe is not None:
        problems += missing_requirements(recipe)
        passes = sum(unit_cost(recipe, v) for v in recipe.variants) * len(recipe.tasks)
        plan = (f"{len(recipe.tasks)} tasks × {len(recipe.variants)} variants, {passes:,} forward-backward passes "
                f"of the tail in all (a SAM step is two) → `{out}`"
                + (" (exists: replaced when the build ends)" if (out / "zoo.json").is_file() else ""))

    def work(progress, cancel_event, recipe=recipe, out=out, name=name):
        return str(build_lite0_zoo(recipe, out, progress=progress, cancel_event=cancel_event, name=name))
    submit_or_show(worker, problems, out, name, plan, "zb_l0_go", work)
