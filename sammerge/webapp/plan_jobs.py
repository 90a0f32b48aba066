"""The merge planner as a job of the server's shared worker: one job per (zoo, settings); a second session with the
same settings sees the same job and its progress; leaving the page or reloading does not stop it; Cancel stops it
before its next group. The measurements are cached in the zoo when a variant is complete, so a second open (here
or from ``sammerge plan``) is read from disk."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import streamlit as st

from sammerge.jobs.worker import Task, Worker, get_worker
from sammerge.planner.run import PlanSettings, run_plan
from sammerge.webapp import jobs_view

__all__ = ["plan_job_key", "submit_plan", "plan_task", "plan_progress"]


def plan_job_key(zoo, settings: PlanSettings) -> str:
    return f"plan:{Path(zoo.path).absolute()}:" + json.dumps(dataclasses.asdict(settings), sort_keys=True)


def plan_task(zoo, settings: PlanSettings, worker: Worker | None = None) -> Task | None:
    return (worker if worker is not None else get_worker()).get(plan_job_key(zoo, settings))


def submit_plan(zoo, settings: PlanSettings, owner: str | None = None, worker: Worker | None = None) -> Task:
    """The job of these settings: the queued, running or finished one, or a new one (a failed or cancelled one is
    started again). Its result: a :class:`~sammerge.planner.run.PlanResult`."""
    worker = worker if worker is not None else get_worker()

    def run(progress, cancel_event):
        return run_plan(zoo, settings, progress=progress, cancel_event=cancel_event)

    task, _ = worker.submit(plan_job_key(zoo, settings), run, label=f"merge plan of {Path(zoo.path).name}",
                            owner=owner)
    return task


@st.fragment(run_every=1.0)
def plan_progress(zoo, settings: PlanSettings, prefix: str) -> None:
    """The running job's progress (this part reruns every second); the whole page reruns once it ends."""
    task = plan_task(zoo, settings)
    if task is None or not task.active:
        st.rerun()
    if task.owner != jobs_view.current_session_id():
        st.info("Another session started this plan; its progress is shown here (one job for everyone).",
                icon=":material/group:")
    jobs_view.record_panel(task.snapshot())
    jobs_view.cancel_button(task, f"{prefix}_cancel")
