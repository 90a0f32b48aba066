"""Zoo builder: set a recipe's knobs, build a new zoo as a background job, compare two zoos side by side."""
from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from sammerge.analytics.diagnostics import diagnose_zoo
from sammerge.errors import SammergeError
from sammerge.explorer.diagnostics_view import reading, summary_table
from sammerge.jobs.worker import get_worker
from sammerge.training.build import build_zoo, default_zoo_dir
from sammerge.training.knobs import has_sam_and_asam, with_knobs
from sammerge.models.presets import ALL_TASKS, PRESETS, get_preset
from sammerge.webapp import jobs_view, ui, zoo_picker

ui.page_setup("Zoo builder", "🏗️")
st.title("Build a zoo")
st.markdown(
    "Set the recipe's knobs and build a new zoo on this server: pretraining, one linear head per task, then every "
    "task fine-tuned plainly and with SAM/ASAM on the same batches. The build runs as a **background job** shared by "
    "every session of this server: leaving the page, reloading or closing the tab does not stop it, a second "
    "session sees the same job, and a stopped build resumes where it stopped. Finished zoos appear in the sidebar's "
    "zoo picker.")

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

problems = []
if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name or ""):
    problems.append("zoo name: use 1–64 letters, digits, '-' or '_', starting with a letter or digit")
try:
    recipe = with_knobs(base, seed=int(seed), tasks=tasks, lr=float(lr), steps=int(steps), rho=float(rho),
                        adaptive=adaptive, linearized=linearized, trainable=trainable, equal_compute=equal_compute)
except SammergeError as exc:
    recipe = None
    problems.append(str(exc))
out = default_zoo_dir() / (name or "_")
worker = get_worker()
key = f"build:{out}"
task = worker.get(key)

if problems:
    for p in problems:
        st.error(p, icon=":material/block:")
elif task is None or not task.active:
    steps_total = recipe.pretrain.steps + sum((v.steps or recipe.finetune.steps) * (2 if v.sam else 1)
                                              for v in recipe.variants) * len(recipe.tasks)
    exists = (out / "zoo.json").is_file()
    st.caption(f"{len(recipe.tasks)} tasks × {len(recipe.variants)} variants "
               f"({', '.join(v.describe() + ('' if not v.steps else f' × {v.steps} steps') for v in recipe.variants)})"
               f", {steps_total:,} training steps in all → `{out}`"
               + (" (exists: a rebuild reuses every finished job whose inputs are unchanged)" if exists else ""))
    if st.button("Build this zoo", type="primary", key="zb_go"):
        def build(progress, cancel_event, recipe=recipe, out=out):
            return str(build_zoo(recipe, out, overwrite=True, progress=progress, cancel_event=cancel_event).path)
        task, _ = worker.submit(key, build, label=f"building zoo {name}", record_root=out.parent,
                                owner=jobs_view.current_session_id(), restart=True)


@st.fragment(run_every=1.0)
def progress_view() -> None:
    """The server's builds: progress from the shared worker, redrawn every second (only this part reruns)."""
    builds = [t for t in worker.tasks() if t.key.startswith("build:")]
    if not builds:
        return
    st.subheader("Builds on this server")
    for t in builds:
        jobs_view.record_panel(t.snapshot())
        jobs_view.cancel_button(t, "zb-cancel")
        if t.status == "done":
            st.caption(f"Done: open `{t.result}` from the sidebar's zoo picker.")


progress_view()

st.divider()
st.header("Two zoos side by side")
zoos = zoo_picker.find_zoos()
if len(zoos) < 2:
    st.info("Build a second zoo (or import one) to compare two recipes here.", icon=":material/compare:")
else:
    labels = [str(z) for z in zoos]
    c1, c2 = st.columns(2)
    picks = [c1.selectbox("Zoo A", labels, index=0, key="zb_a"), c2.selectbox("Zoo B", labels, index=1, key="zb_b")]
    compute = st.button("Compute missing diagnostics", key="zb_diag",
                        help="Task-arithmetic curve, own gain and damage per task, plain vs SAM (cached in each zoo).")
    frames = {}
    for col, pick in zip((c1, c2), picks):
        with col, ui.friendly_errors("diagnostics"):
            zoo = ui.open_zoo_cached(pick)
            diag = diagnose_zoo(zoo, cached_only=not compute)
            st.markdown(f"**{zoo.path.name}** — {zoo.manifest.describe()}, {len(zoo.tasks)} tasks")
            if diag is None:
                st.caption("Diagnostics not computed yet.")
                continue
            frames[zoo.path.name] = summary_table(diag)
            st.markdown(reading(diag))
    if frames:
        both = pd.concat(frames, names=["zoo", None]).reset_index(level=0)
        st.dataframe(both.style.format(precision=3, na_rep="—"), hide_index=True, width="stretch", key="zb_cmp")
