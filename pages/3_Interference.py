"""Interference: do the task vectors of SAM checkpoints get in each other's way less than plain ones?"""
from __future__ import annotations

import streamlit as st

from sammerge.webapp import analysis_jobs, ui
from sammerge.analytics import report as an
from sammerge.explorer.analysis_views import (disentanglement_figures, disentanglement_from_analysis,
                                              disentanglement_sentence, layer_norm_figure, layer_norm_sentence,
                                              load_analysis_for, matrix_figures, matrix_sentence)

ui.page_setup("Interference", "🧲")
st.title("Interference between tasks")
st.markdown(
    "Merging adds task vectors τ_t = θ_t − θ₀ together. They *interfere* when they overlap: when they point in "
    "similar directions, when they push the same weight in opposite directions, or when adding one changes what "
    "the model predicts on the other's task. Each chart shows plain fine-tuning on the left and SAM on the right, "
    "on the same colour scale.")

zoo = ui.zoo_sidebar()
analysis = load_analysis_for(zoo)


if analysis is None:
    st.header("Task-vector cosine similarity")
    st.info("No interference analysis is stored for this zoo yet. Run `sammerge analyze " + str(zoo.path) +
            "` in a terminal, or compute it here (saved next to the zoo and reused).", icon=":material/calculate:")
    analysis_jobs.analysis_section(zoo, "if")
    st.stop()


def side_by_side(figs, prefix):
    cols = st.columns(len(figs))
    for col, (v, fig) in zip(cols, figs.items()):
        with col:
            ui.plot(fig, key=f"{prefix}_{v}", filename=f"{prefix}-{v}")


st.header("Task-vector cosine similarity")
st.caption("cos(τ_i, τ_j) for every pair of tasks (diagonal hidden). Near 0: the tasks changed unrelated directions.")
side_by_side(matrix_figures(analysis, "cosine"), "cosine")
st.markdown("**Reading:** " + matrix_sentence(analysis, "cosine"))

st.header("Sign conflicts")
st.caption("Among the weights both tasks changed, the share where they changed them in opposite directions "
           "(TIES merging resolves exactly these by a sign vote).")
side_by_side(matrix_figures(analysis, "sign_conflict"), "conflict")
st.markdown("**Reading:** " + matrix_sentence(analysis, "sign_conflict"))

st.header("Weight disentanglement error")
st.caption("ξ(α₁, α₂): how often the model θ₀ + α₁τ₁ + α₂τ₂ predicts differently, on each task, from the model "
           "with only that task's vector (θ₀ + α₁τ₁ on task 1, θ₀ + α₂τ₂ on task 2), summed over both tasks "
           "(0 = the tasks do not disturb each other, 2 = every prediction changed).")
stored = {tuple(d["tasks"]) for results in analysis.get("disentanglement", {}).values() for d in results}
pairs = sorted(stored) + [(a, b) for i, a in enumerate(zoo.tasks) for b in zoo.tasks[i + 1:] if (a, b) not in stored]
labels = {f"{a} + {b}" + ("" if (a, b) in stored else " (compute on demand)"): (a, b) for a, b in pairs}
pair = labels[st.selectbox("Task pair", list(labels), key="if_pair")]
results = disentanglement_from_analysis(analysis, pair)
if not results:
    if st.button("Compute this pair", key="if_go_pair", type="primary") or \
            st.session_state.get("if_have_pair") == (str(zoo.path), pair):
        bar = st.progress(0.0, text="disentanglement")
        s = analysis["settings"]
        with ui.friendly_errors("disentanglement"):
            results = {v: an.disentanglement_for(zoo, pair[0], pair[1], v, lo=s["disent_range"][0],
                                                 hi=s["disent_range"][1], n=s["disent_n"],
                                                 n_per_task=s["disent_n_per_task"], seed=s["disent_seed"],
                                                 split=s["split"], progress=ui.progress_callback(bar, v))
                       for v in zoo.variants}
        bar.empty()
        st.session_state["if_have_pair"] = (str(zoo.path), pair)
if results:
    side_by_side(disentanglement_figures(results), "disentanglement")
    st.markdown("**Reading:** " + disentanglement_sentence(results))

st.header("Per-layer task-vector size")
st.caption("Root-mean-square change of each layer's weights during fine-tuning (mean over tasks, or one task), plain "
           "vs SAM: where in the network each fine-tuning method moved the weights.")
choice = st.selectbox("Task", ["mean over tasks"] + list(zoo.tasks), key="if_norm_task")
fig = layer_norm_figure(analysis, None if choice == "mean over tasks" else choice)
if fig is not None:
    ui.plot(fig, key="if_norms", filename="layer-norms")
    st.markdown("**Reading:** " + layer_norm_sentence(analysis))
