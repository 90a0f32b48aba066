"""sammerge — the explorer app: `streamlit run app.py`. Routes to the pages (titles, icons, URLs)."""
from __future__ import annotations

import streamlit as st

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
