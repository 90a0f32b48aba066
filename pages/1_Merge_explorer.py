"""Merge explorer: choose a merge, see per-task accuracy for SAM vs plain fine-tuning, export it."""
from __future__ import annotations

import streamlit as st

from sammerge.errors import SammergeError
from sammerge.explorer.service import EXPLORER_N_PER_TASK
from sammerge.merging import LAMBDA, MergeSpec
from sammerge.webapp import ui
from sammerge.webapp.explorer_panels import ExplorerPanels
from sammerge.webapp.reruns import give_way
from sammerge.webapp.explorer_state import W, controls_spec, k_param, push_state

came_from = ui.page_setup("Merge explorer", "🎛️")
st.title("Merge explorer")
st.markdown(
    "Pick a **merge method** and its settings, choose which tasks to merge and which fine-tuned checkpoint each "
    "uses (**plain**, **SAM**, … — the zoo's variants), and set the coefficients. Every change re-merges the encoder "
    "and measures it on every task at once. The same merge is always computed with every task on each variant "
    "(*all-plain*, *all-SAM*, …), so the difference the optimizer makes is visible at a glance.")

zoo = ui.zoo_sidebar()
ss = st.session_state

def on_budget() -> None:  # plain copies: Streamlit forgets widget values when the user visits another page
    ss[f"{W}budget_v"], ss[f"{W}exact_v"] = int(ss[f"{W}budget"]), bool(ss[f"{W}exact"])


# the image budget and the exact override live outside the fragment: a new budget is another Explorer (a full rerun)
ss[f"{W}budget"] = ss.setdefault(f"{W}budget_v", EXPLORER_N_PER_TASK)
ss[f"{W}exact"] = ss.setdefault(f"{W}exact_v", False)
with st.sidebar:
    st.header("Evaluation")
    st.number_input("Images per task", min_value=1, max_value=100_000, step=16, key=f"{W}budget", on_change=on_budget,
                    help="The fixed validation subset every merge is scored on (seed 0; a task with fewer "
                         "images uses all of them). Fewer images: faster, less precise.")
    st.toggle("Always evaluate exactly", key=f"{W}exact", on_change=on_budget,
              help="Off: when the encoder is too slow to evaluate the whole budget at once (e.g. a ViT-B/32 on a "
                   "CPU), a merge is first shown as an estimate from its first images per task, with its 95 % "
                   "confidence interval, and refined to the exact number in the background.")
ex = ui.get_explorer(zoo, n_per_task=ss[f"{W}budget_v"])
panels = ExplorerPanels(ex, zoo, allow_estimate=not ss[f"{W}exact_v"])


def initial_state() -> MergeSpec:
    query = dict(st.query_params)
    if "method" in query:
        state, warnings = MergeSpec.from_query(query, zoo)
        for w in warnings:
            st.warning(w, icon=":material/link:")
        return state
    return MergeSpec.default_for_zoo(zoo)


# -- state bootstrapping: a new zoo, a link, or a pending change from a button --------------------
if ss.get(f"{W}zoo") != str(zoo.path):
    ss[f"{W}zoo"] = str(zoo.path)
    ss[f"{W}state"] = initial_state()
    for note in push_state(ss, ss[f"{W}state"], zoo):
        st.warning(f"link: {note}", icon=":material/link:")
elif came_from != "Merge explorer":
    push_state(ss, ss[f"{W}state"], zoo)  # back from another page: Streamlit has reset the widgets
ui.seed_widget(f"{W}view", "Per-task bars")


# -- the live part of the page: only this reruns when a control moves --------------------------------
@st.fragment
def explorer() -> None:
    state: MergeSpec = ss[f"{W}state"]
    if f"{W}pending" in ss:
        state = ss.pop(f"{W}pending")
        for note in push_state(ss, state, zoo):
            st.warning(note, icon=":material/tune:")
    if ss.pop(f"{W}want_best", False) and state.has_lambda:
        bar = st.progress(0.0, text="λ sweep on validation")
        with ui.friendly_errors("λ sweep"):
            sweeps = ex.sweeps(state, progress=ui.progress_callback(bar, "λ sweep on validation"))
        bar.empty()
        best = sweeps["current"].best_lambda
        state = state.with_params(**{LAMBDA: best})
        ss[k_param(state.method, LAMBDA)] = best
        ss[f"{W}flash"] = (f"λ set to {best:g}, the best shared λ on validation for this choice of checkpoints "
                           f"(mean accuracy {sweeps['current'].best_val_mean:.1%}).")
    if f"{W}flash" in ss:
        st.success(ss.pop(f"{W}flash"), icon=":material/check_circle:")

    # Streamlit can drop a session's widget values while a run_every fragment (the refinement poll) reruns on its own
    # (streamlit#11266, #14064). A run that then read the controls found no task ticked: it showed "no task", put
    # tasks=- in the address and drew λ at its minimum, every task unticked (benchmarks/soak.py: 3 of 17 runs). Every
    # run, full or fragment, first gives each control it lacks the value of the merge on screen; a value the browser
    # sent is never overwritten.
    push_state(ss, state, zoo, only_missing=True)
    controls, results = st.columns([1.1, 2], gap="large")
    try:
        spec, problem = controls_spec(ss, state, zoo), None
    except SammergeError as exc:  # e.g. weights that sum to 0: say so, keep the controls to fix it
        spec, problem = None, str(exc)
    # (No run writes a control the browser holds: a full run that did — the refinement poll's — sent the λ of the
    # merge on screen to a browser whose slider had moved on, and the key press was lost: benchmarks/soak.py.)
    # The controls before the numbers: a run cut short by a newer move (give_way, inside the results) has drawn them.
    # Drawn after the results, they were missing from such a run, Streamlit forgot their values, and the browser
    # sent them back at their defaults — another method, λ at its minimum, every task unticked (benchmarks/soak.py).
    with controls:
        panels.controls(ss[f"{W}method"])
    if spec is not None:
        ss[f"{W}state"] = spec
        ui.set_current_merge(spec)
        # the download buttons make their files from this when clicked (see ExplorerPanels.export), not when drawn
        ss.setdefault(f"{W}export", {})["spec"] = spec
    if not problem:  # the address too, before a newer move can cut this run short
        query = spec.to_query() if spec is not None else {**state.to_query(), "tasks": "-"}
        if dict(st.query_params) != query:
            st.query_params.from_dict(query)
    with results:
        if problem:
            st.error(f"merge: {problem}", icon=":material/block:")
        else:
            panels.results(spec)
    if problem:
        return
    give_way()  # a newer move waits: skip the exports of this one
    panels.export(spec)


explorer()
