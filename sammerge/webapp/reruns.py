"""Give way to a newer move: end a fragment run whose result the user has already replaced.

Streamlit never lets a widget change inside a fragment interrupt the fragment run in progress: the new run waits
until the old one has drawn everything (so two quick slider steps cost two full runs, and under load the second
waited for all of the first: soak in benchmarks/soak.py, 4 sessions on 2 busy cores, the sessions that press twice
per move took 3–8 s per move where the others took 0.5–1.5 s). :func:`give_way`, called between the parts of a
run, ends the run early when this session already has a newer, user-made rerun waiting; that rerun then starts at
once with the newest widget values. Timer reruns (``run_every`` polls) never end a run: each would cut the next
one short.

It reads the session's pending request from Streamlit's script runner (``ScriptRequests``, Streamlit ≥ 1.37): an
unknown layout reads as "nothing waiting", so the page still works, only without the shortcut;
tests/test_reruns.py checks the layout against the installed Streamlit.
"""
from __future__ import annotations

import streamlit as st

__all__ = ["newer_move_waiting", "in_fragment_run", "give_way"]


def newer_move_waiting(ctx=None) -> bool:
    """Whether the session of ``ctx`` (default: this script thread's) has a user-made rerun waiting."""
    try:
        from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequestType
        if ctx is None:
            from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
            ctx = get_script_run_ctx()
        requests = ctx.script_requests
        return requests._state == ScriptRequestType.RERUN and not requests._rerun_data.is_auto_rerun
    except Exception:  # noqa: BLE001 - no context (a bare script) or another Streamlit: nothing known to wait
        return False


def in_fragment_run(ctx=None) -> bool:
    """Whether this script run reruns fragments only (not the whole page: a full run always runs to its end)."""
    try:
        if ctx is None:
            from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
            ctx = get_script_run_ctx()
        return bool(ctx.fragment_ids_this_run)
    except Exception:  # noqa: BLE001
        return False


def give_way() -> None:
    """End this fragment run now when a newer user-made rerun waits (it then runs with the newest values)."""
    if in_fragment_run() and newer_move_waiting():
        st.rerun(scope="fragment")
