"""Streamlit view of background jobs: a job's progress from its record, a cancel button, waiting on a job.

Works from any page and any session: it renders :class:`~sammerge.jobs.JobRecord` objects of the server's shared
worker's tasks (:mod:`sammerge.jobs.worker`).
"""
from __future__ import annotations

import time

import streamlit as st

from sammerge.jobs import JobRecord
from sammerge.jobs.record import shown_status
from sammerge.jobs.worker import Task

_ICON = {"pending": "⏳", "running": "⚙️", "done": "✅", "failed": "❌", "cancelled": "⏹️", "interrupted": "⚠️"}


def current_session_id() -> str | None:
    """This browser session's id (None outside a Streamlit script run)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx else None


def describe(record: JobRecord) -> str:
    p, status = record.progress, shown_status(record)
    text = f"{_ICON.get(status, '')} {record.name}: {status}"
    if status == "running":
        text += f" — {p.stage} ({p.done}/{p.total})" if p.stage else f" ({p.done}/{p.total})"
    if record.error:
        text += f" — {record.error}"
    return text


def record_panel(record: JobRecord, bar=None) -> None:
    """One job: a progress bar with its stage (or its final status)."""
    bar = bar if bar is not None else st.empty()
    bar.progress(record.progress.fraction if record.status != "done" else 1.0, text=describe(record))


def cancel_button(task: Task, key_prefix: str = "cancel") -> None:
    """A cancel button for a running task (the work stops at its next step; finished jobs are kept)."""
    if task.active and st.button("Cancel", key=f"{key_prefix}-{task.id}", icon=":material/stop:",
                                 help="Stops the job at its next step. Finished parts are kept on disk and "
                                      "reused when it is started again."):
        task.cancel()


def follow(task: Task, poll_s: float = 0.5) -> Task:
    """Draw the task's progress until it ends (the page's script waits; the job does not depend on it: leaving
    the page or closing the tab stops only this wait). Returns the task in its final state."""
    started_here = task.owner is not None and task.owner == current_session_id()
    if not started_here:
        st.info("Waiting for a job another session started — its progress is shown here; it keeps running if "
                "you leave this page.", icon=":material/group:")
    cancel_button(task)
    bar = st.empty()
    while task.active:
        record_panel(task.snapshot(), bar)
        time.sleep(poll_s)
    record_panel(task.snapshot(), bar)
    return task


