"""sammerge — the explorer app: `streamlit run app.py`. Routes to the pages (titles, icons, URLs)."""
from __future__ import annotations

import sys

import streamlit as st

if "torch" not in sys.modules:  # the first page since the server started: say what it waits for (not a blank page)
    with st.spinner("Starting sammerge: loading PyTorch and the merge library (once per server)…"):
        import sammerge.merging  # noqa: F401  (imports torch)

PAGES = [
    st.Page("pages/0_Zoo.py", title="Zoo", icon=":material/science:", default=True),
    st.Page("pages/1_Merge_explorer.py", title="Merge explorer", icon=":material/tune:", url_path="Merge_explorer"),
    st.Page("pages/2_Sharpness_and_landscape.py", title="Sharpness & landscape", icon=":material/landscape:",
            url_path="Sharpness_and_landscape"),
    st.Page("pages/3_Interference.py", title="Interference", icon=":material/call_split:", url_path="Interference"),
    st.Page("pages/4_Paper_table.py", title="Paper table", icon=":material/table:", url_path="Paper_table"),
    st.Page("pages/5_Layer_coefficients.py", title="Layer coefficients", icon=":material/grid_on:", url_path="Layer_coefficients"),
    st.Page("pages/6_Zoo_builder.py", title="Zoo builder", icon=":material/construction:", url_path="Zoo_builder"),
    st.Page("pages/7_Merge_planner.py", title="Merge planner", icon=":material/account_tree:", url_path="Merge_planner"),
]

st.navigation(PAGES).run()
