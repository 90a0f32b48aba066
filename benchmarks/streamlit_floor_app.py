"""The floor under benchmarks/browser_latency.py: the explorer's λ slider and result line in a Streamlit fragment,
with no merge and no evaluation — what Streamlit and Chromium alone cost per slider move on this machine."""
import streamlit as st


@st.fragment
def fragment() -> None:
    lam = st.slider("Global λ (scales the merged task vector)", 0.0, 2.0, 0.3, 0.05, key="lam")  # as the explorer's
    st.caption(f"Showing: λ = {lam:g} · (no merge, no evaluation)")


fragment()
