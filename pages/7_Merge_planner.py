"""Merge planner: which task models can share one merged model, in what groups, at what cost — and a report."""
from __future__ import annotations

import json

import streamlit as st
import streamlit.components.v1 as components

from sammerge.explorer.service import method_choices
from sammerge.merging import get_method
from sammerge.planner.compat import DEFAULT_METHODS
from sammerge.planner.run import MAX_SUBSET_TASKS, SEARCHES, PlanSettings
from sammerge.webapp import jobs_view, ui
from sammerge.webapp.plan_jobs import plan_progress, plan_task, submit_plan

SEARCH_LABELS = {"auto": f"auto (exact up to {MAX_SUBSET_TASKS} tasks)", "exact": "exact", "greedy": "greedy"}
ui.page_setup("Merge planner", "🧭")
st.title("Merge planner")
st.markdown("Which of this zoo's task models can share **one** set of weights without any task losing more than "
            "you accept? Every pair and every subset of tasks is merged (the best of the chosen methods, each at its "
            "best validation λ) and scored on the test split against each task's own model; the plan is the fewest "
            "merged models that keep every task within the tolerance — plain and SAM side by side.")
zoo = ui.zoo_sidebar()
P = "plan_"
c1, c2, c3 = st.columns(3)
tolerance = c1.number_input("Tolerance (points of accuracy any task may lose)", 0.0, 100.0, 2.0, 0.5, key=f"{P}tol")
methods = c2.multiselect("Methods tried for every group", method_choices(), default=list(DEFAULT_METHODS),
                         format_func=lambda m: get_method(m).label, key=f"{P}methods")
variants = c3.multiselect("Variants", zoo.variants, default=zoo.variants, key=f"{P}variants")
c1, c2, c3, c4 = st.columns(4)
pairs_only = c1.toggle("Pairs only (faster)", value=False, key=f"{P}pairs")
search = c2.selectbox("Search", SEARCHES, key=f"{P}search", format_func=SEARCH_LABELS.get,
                      help=f"exact: every subset of tasks (up to {MAX_SUBSET_TASKS}); greedy: every pair, then groups "
                           "grown one task at a time (fewer merges; may need more models)")
requests = c3.number_input("Images per day (every task predicted)", 0.0, value=1e6, step=1e5, key=f"{P}requests")
price = c4.number_input("Cost of one device hour", 0.0, value=2.0, step=0.5, key=f"{P}price")
with st.expander("Per-task floors (optional): the least test accuracy a task must keep after merging"):
    cols = st.columns(min(4, len(zoo.tasks)))
    floors = tuple((t, float(v)) for i, t in enumerate(zoo.tasks)
                   if (v := cols[i % len(cols)].number_input(f"{t} (%; 0 = none)", 0.0, 100.0, 0.0, 1.0,
                                                            key=f"{P}floor_{t}")) > 0)
settings = PlanSettings(float(tolerance), tuple(methods), tuple(variants) or None, pairs_only,
                        requests or None, price or None, floors, search)
problems = settings.check(zoo)
if problems:
    st.error("; ".join(problems), icon=":material/block:")
    st.stop()
task = plan_task(zoo, settings)
if task is not None and task.active:
    plan_progress(zoo, settings, P)
    st.stop()
if task is None or task.status in ("failed", "cancelled"):
    if task is not None:
        st.warning(f"The last plan with these settings {task.status}: {task.error or ''}", icon=":material/stop:")
    st.caption("Runs as a background job of this server (another session sees the same job; leaving the page does "
               "not stop it). Measurements are kept with the zoo: a second plan of the same groups is read from disk.")
    if st.button("Plan", type="primary", key=f"{P}go"):
        submit_plan(zoo, settings, owner=jobs_view.current_session_id())
        st.rerun()
    st.stop()
result = task.result
rows = [{"variant": v, "models needed": p.n_models, "tasks": len(zoo.tasks),
         "merge": "; ".join(" + ".join(g.tasks) for g in p.stages) or "—", "separate": ", ".join(p.separate) or "—",
         "search": p.search, "below floor as own model": ", ".join(p.below_floor) or "—"}
        for v, p in result.plans.items()]
st.subheader("The plans")
st.dataframe(rows, hide_index=True, width="stretch", key=f"{P}plans")
st.download_button("Report (.html, self-contained)", result.html, "merge-plan.html", "text/html", key=f"{P}dl_html",
                   on_click="ignore")
st.download_button("Every number (.json)", json.dumps(result.data, indent=1), "merge-plan.json", "application/json",
                   key=f"{P}dl_json", on_click="ignore")
st.subheader("The report")
components.html(result.html, height=900, scrolling=True)
