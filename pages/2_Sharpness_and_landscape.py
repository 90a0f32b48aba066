"""Sharpness & landscape: how flat is each checkpoint, and what does the loss look like between them?"""
from __future__ import annotations

import streamlit as st

from sammerge.webapp import analysis_jobs, ui
from sammerge.analytics import report as an
from sammerge.explorer.analysis_views import (SHARPNESS_MEASURES, curve_figure, load_analysis_for, plane_figures,
                                              plane_sentence, sharpness_figure, sharpness_sentence, sharpness_wide)
from sammerge.explorer.style import variant_label

ui.page_setup("Sharpness & landscape", "⛰️")
st.title("Sharpness & loss landscape")
st.markdown(
    "SAM fine-tuning looks for *flat* minima: points where the loss stays low when the weights move a little. "
    "The claim is that flatter task solutions also merge better, because adding other tasks' vectors is such a "
    "move. This page measures the flatness of every checkpoint and draws the loss between and around them.")

zoo = ui.zoo_sidebar()
ss = st.session_state


# -- 1. the precomputed analysis --------------------------------------------------------------------------
st.header("Sharpness of every checkpoint")
analysis = load_analysis_for(zoo)
if analysis is None:
    st.info("No sharpness analysis is stored for this zoo yet. Run `sammerge analyze " + str(zoo.path) +
            "` in a terminal, or compute it here (it is saved next to the zoo and reused afterwards).", icon=":material/calculate:")
    analysis_jobs.analysis_section(zoo, "sh")
else:
    s = analysis["settings"]
    st.caption(f"Computed {analysis['created']} on {s['n_images']} {s['split']} images per task (fixed batch, seed "
               f"{s['batch_seed']}); curvature with respect to {s.get('curvature_wrt', 'the encoder parameters')}.")
    measures = [m for m in SHARPNESS_MEASURES if m in analysis["sharpness"][0]]
    measure = st.selectbox("Measure", measures, key="sh_measure",
                           format_func=lambda m: SHARPNESS_MEASURES[m][0],
                           help="; ".join(f"{v[0]}: {v[1]}" for v in SHARPNESS_MEASURES.values()))
    st.caption(f"{SHARPNESS_MEASURES[measure][0]}: {SHARPNESS_MEASURES[measure][1]}. Lower = flatter.")
    left, right = st.columns([1.4, 1])
    with left:
        log = st.toggle("log scale", value=True, key="sh_log")
        ui.plot(sharpness_figure(analysis, measure, log), key="sh_bars", filename=f"sharpness-{measure}")
    with right:
        st.dataframe(sharpness_wide(analysis, measure), hide_index=True, width="stretch", key="sh_table")
    st.markdown("**Reading:** " + sharpness_sentence(analysis, measure))

tasks = zoo.tasks
variants = zoo.variants

# -- 2. 1-D interpolation ----------------------------------------------------------------------------------
st.header("1-D interpolation θ₀ → θ_t")
st.caption("Loss (or accuracy) on a task along the straight line from the pretrained weights (α = 0) to the "
           "task's fine-tuned weights (α = 1), plain and SAM. A merge moves along such lines, scaled by λ.")
c1, c2 = st.columns([1, 1])
task_1d = c1.selectbox("Task", tasks, key="sh_task_1d")
what_1d = c2.radio("Show", ["loss", "accuracy"], horizontal=True, key="sh_what_1d")
key_1d = ("1d", str(zoo.path), task_1d)
on_disk_1d = all(an.interpolation_for(zoo, task_1d, v, cached_only=True) for v in variants)
if on_disk_1d or ss.get("sh_have_1d") == key_1d or st.button("Compute the curves", key="sh_go_1d"):
    bar = st.progress(0.0, text="interpolation")
    with ui.friendly_errors("interpolation"):
        curves = {v: an.interpolation_for(zoo, task_1d, v, progress=ui.progress_callback(bar, variant_label(v)))["finetuned"]
                  for v in variants}
    bar.empty()
    ss["sh_have_1d"] = key_1d
    ui.plot(curve_figure(curves, task_1d, what_1d), key="sh_curve", filename=f"interpolation-{task_1d}")

# -- 3. the task plane ---------------------------------------------------------------------------------------
st.header("The τ_i–τ_j plane")
st.caption("Loss over θ₀ + α_i τ_i + α_j τ_j: the origin is the pretrained model, (1, 0) and (0, 1) are the two "
           "fine-tuned models, and task arithmetic with λ lies at (λ, λ). Plain and SAM are drawn on one colour scale.")
c1, c2, c3, c4 = st.columns(4)
ti = c1.selectbox("Task i", tasks, index=0, key="sh_ti")
tj = c2.selectbox("Task j", tasks, index=min(1, len(tasks) - 1), key="sh_tj")
n = c3.select_slider("Grid points per axis", [7, 11, 15, 21], value=11, key="sh_n",
                     help="21 × 21 is the full-resolution plane (longer to compute; cached on disk afterwards).")
what = c4.selectbox("Colour", [f"loss {ti}", f"loss {tj}", "mean loss", "mean accuracy"], index=2, key="sh_what")
surface = st.toggle("3-D surface instead of contours", key="sh_surface")
merge_point = None
spec = ui.current_merge(zoo)
if spec is not None and spec.method == "task_arithmetic" and not spec.params.get("normalize") \
        and ti in spec.task_names and tj in spec.task_names:
    merge_point = (spec.lam * spec.weights[ti], spec.lam * spec.weights[tj])
    st.caption(f"★ marks the current merge from the explorer at (α_i, α_j) = ({merge_point[0]:g}, {merge_point[1]:g}).")
key_plane = ("plane", str(zoo.path), ti, tj, n)
if ti == tj:
    st.info("Choose two different tasks.")
elif all(an.task_plane_for(zoo, ti, tj, v, n=n, cached_only=True) for v in variants) \
        or ss.get("sh_have_plane") == key_plane or st.button("Compute the planes", key="sh_go_plane", type="primary"):
    bar = st.progress(0.0, text="task plane")
    with ui.friendly_errors("task plane"):
        planes = {v: an.task_plane_for(zoo, ti, tj, v, n=n, merge_point=merge_point,
                                       progress=ui.progress_callback(bar, f"{variant_label(v)} plane")) for v in variants}
    bar.empty()
    ss["sh_have_plane"] = key_plane
    z_what = what.replace("loss ", "") if what.startswith("loss ") else what
    figs = plane_figures(planes, z_what, surface=surface)
    cols = st.columns(len(figs))
    for col, (v, fig) in zip(cols, figs.items()):
        with col:
            ui.plot(fig, key=f"sh_plane_{v}", filename=f"plane-{ti}-{tj}-{v}")
    st.markdown("**Reading:** " + plane_sentence(planes))

# -- 4. random plane --------------------------------------------------------------------------------------
st.header("Around one checkpoint: a random filter-normalized plane")
st.caption("Loss of a task around its fine-tuned checkpoint along two random directions, each filter scaled to the "
           "norm of the checkpoint's filter (Li et al., 2018) — a picture of local flatness. Same directions and "
           "colour scale for plain and SAM.")
c1, c2 = st.columns(2)
task_r = c1.selectbox("Task", tasks, key="sh_task_r")
n_r = c2.select_slider("Grid points per axis", [7, 11, 15, 21], value=11, key="sh_n_r")
key_r = ("random", str(zoo.path), task_r, n_r)
if all(an.random_plane_for(zoo, task_r, v, n=n_r, cached_only=True) for v in variants) \
        or ss.get("sh_have_r") == key_r or st.button("Compute the random planes", key="sh_go_r"):
    bar = st.progress(0.0, text="random plane")
    with ui.friendly_errors("random plane"):
        planes_r = {v: an.random_plane_for(zoo, task_r, v, n=n_r, progress=ui.progress_callback(bar, variant_label(v)))
                    for v in variants}
    bar.empty()
    ss["sh_have_r"] = key_r
    figs = plane_figures(planes_r, task_r)
    cols = st.columns(len(figs))
    for col, (v, fig) in zip(cols, figs.items()):
        with col:
            ui.plot(fig, key=f"sh_rand_{v}", filename=f"random-plane-{task_r}-{v}")
