"""The paper's table for this zoo: every merge method at its best λ, plain vs SAM fine-tuning, on test."""
from __future__ import annotations

import streamlit as st

from sammerge.webapp import ui
from sammerge.explorer.paper import (adamerging_rows_cached, compute_adamerging_rows, learned_json, paper_latex,
                                     paper_sentence, paper_table_display, with_adamerging)
ui.page_setup("Paper table", "📋")
st.title("The paper's table")
st.markdown(
    "The table form used by Lee et al. (ICLR 2025): one row per merge method, for plain and for SAM fine-tuning. "
    "Each method's shared λ is chosen on the **validation** split (grid 0, 0.05, …, 1); the numbers are **test** "
    "accuracy at that λ. *Normalized* accuracy divides each task's accuracy by that of its own fine-tuned model.")

zoo = ui.zoo_sidebar()
ex = ui.get_explorer(zoo)
frame = ex.paper_table_cached()
if frame is None:
    st.info("The table merges every method at 21 values of λ for each fine-tuning variant and evaluates them on the "
            "full validation and test splits. Computed once, then kept for every visitor of this server.", icon=":material/hourglass_top:")
    if st.button("Compute the table", type="primary", key="pt_compute"):
        bar = st.progress(0.0, text="starting")
        with ui.friendly_errors("paper table"):
            ex.paper_table(progress=ui.progress_callback(bar, "methods × variants done"))
        st.rerun()
if frame is not None:
    ada = adamerging_rows_cached(zoo)
    if ada is None:
        st.info("AdaMerging rows (task-wise and layer-wise, for each fine-tuning variant) learn their coefficients by "
                "minimizing prediction entropy on unlabeled **validation** images (labels never read; the paper uses "
                "unlabeled test inputs), then report test accuracy. About a minute per row on the glyph demo zoo.",
                icon=":material/auto_graph:")
        if st.button("Add AdaMerging rows", key="pt_ada"):
            bar = st.progress(0.0, text="starting")
            with ui.friendly_errors("AdaMerging"):
                compute_adamerging_rows(zoo, progress=ui.progress_callback(bar, "AdaMerging rows"))
            st.rerun()
    frame = with_adamerging(frame, ada, zoo.variants)
    shown = paper_table_display(frame, zoo.tasks)
    pct = list(zoo.tasks) + ["mean", "normalized"]
    st.dataframe(shown.style.format({c: "{:.1%}" for c in pct} | {"best λ": "{:g}"}, na_rep="—"),
                 hide_index=True, width="stretch", key="pt_table", height=36 * (len(shown) + 1) + 4)
    st.caption(f"Protocol: {frame.attrs.get('protocol', '')}. Images per task: {frame.attrs.get('n_val')} validation, "
               f"{frame.attrs.get('n_test')} test. Pretrained and individual fine-tuned rows are references.")
    sentence = paper_sentence(frame)
    if sentence:
        st.markdown("**Reading:** " + sentence)
    c1, c2, c3 = st.columns(3)
    c1.download_button("Download CSV", shown.to_csv(index=False), "paper-table.csv", "text/csv", key="pt_csv",
                       on_click="ignore", width="stretch")
    c2.download_button("Download LaTeX", paper_latex(frame, zoo.tasks), "paper-table.tex", "text/x-tex",
                       key="pt_tex", on_click="ignore", width="stretch")
    if frame.attrs.get("learned"):
        c3.download_button("Learned AdaMerging coefficients (JSON specs)", learned_json(frame),
                           "adamerging-specs.json", "application/json", key="pt_learned", on_click="ignore",
                           width="stretch")
