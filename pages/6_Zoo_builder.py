"""Zoo builder: set a recipe's knobs, build a new zoo as a background job, compare two zoos side by side."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from sammerge.analytics.diagnostics import diagnose_zoo
from sammerge.explorer.diagnostics_view import reading, summary_table
from sammerge.jobs.worker import get_worker
from sammerge.webapp import builder_forms, jobs_view, ui, zoo_picker

ui.page_setup("Zoo builder", "🏗️")
st.title("Build a zoo")
st.markdown(
    "Set the recipe's knobs and build a new zoo on this server: every task fine-tuned plainly and with SAM/ASAM on "
    "the same batches. The build runs as a **background job** shared by every session of this server: leaving the "
    "page, reloading or closing the tab does not stop it, a second session sees the same job, and a stopped build "
    "resumes where it stopped. Finished zoos appear in the sidebar's zoo picker.")
worker = get_worker()
kind = st.radio("Encoder", ["EfficientNet-Lite0 (ImageNet) on real images", "Small glyph encoder (presets)"],
                horizontal=True, key="zb_kind")
if kind.startswith("EfficientNet"):
    builder_forms.lite0_form(worker)
else:
    builder_forms.glyph_form(worker)


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
