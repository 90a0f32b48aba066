"""The whole-zoo analysis (``analytics.report.analyze_zoo``) as a job of the server's shared worker.

One job per (zoo, analysis settings), and at most one running per zoo (every analysis writes the same
``ZOO/analysis/analysis.json``): a second session, or the other analysis page, finds the running job and shows its
progress instead of starting another. The job lives in the server process, so page changes and reloads do not stop
it; Cancel stops it at its next step. ``analyze_zoo`` writes its file atomically at the very end, so a failed or
cancelled job leaves the previous analysis on disk as it was. Pages 2 and 3 call :func:`analysis_section`.
"""
from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from sammerge.analytics import report as an
from sammerge.jobs.runner import JobCancelled
from sammerge.jobs.worker import Task, Worker, get_worker
from sammerge.webapp import jobs_view

# the sharpness batch's image budget per task offered in the app (the analysis' own defaults are among them)
IMAGE_BUDGETS = (8, 16, 32, 64, 128, 256, 512, 1024)


def _zoo_prefix(zoo_dir: str | Path) -> str:
    return f"analysis:{Path(zoo_dir).absolute()}:"


def analysis_job_key(zoo, quick: bool = False, n_images: int | None = None) -> str:
    """The worker key of the analysis of ``zoo`` with these settings: the zoo's directory and the complete settings
    ``analyze_zoo`` will use (``default_settings(quick)`` with ``n_images`` images per task in the sharpness batch)."""
    settings = an.default_settings(quick)
    if n_images is not None:
        settings["n_images"] = int(n_images)
    return _zoo_prefix(zoo.path) + json.dumps(settings, sort_keys=True)


def analysis_task(zoo_dir: str | Path, worker: Worker | None = None) -> Task | None:
    """The analysis job of the zoo at ``zoo_dir`` this server knows: the queued or running one if any, else the last
    one started (None if none)."""
    worker = worker if worker is not None else get_worker()
    tasks = [t for t in worker.tasks() if t.key.startswith(_zoo_prefix(zoo_dir))]
    if not tasks:
        return None
    active = [t for t in tasks if t.active]
    return (active or [max(tasks, key=lambda t: t.started)])[0]


def submit_analysis(zoo, quick: bool = False, n_images: int | None = None, owner: str | None = None,
                    worker: Worker | None = None) -> Task:
    """Start the analysis of ``zoo`` as a worker job, or return the one already queued or running for this zoo
    (whatever its settings: never two at once on one zoo). A finished job with these settings is run again: the job
    itself returns at once when ``analyze_zoo`` finds the stored analysis current for them."""
    worker = worker if worker is not None else get_worker()
    running = analysis_task(zoo.path, worker)
    if running is not None and running.active:
        return running
    label = f"analysis of {Path(zoo.path).name}"

    def run(progress, cancel_event):
        if cancel_event.is_set():  # cancelled while queued
            raise JobCancelled(f"{label}: cancelled")
        an.analyze_zoo(zoo, progress=progress, quick=quick, n_images=n_images)
        return str(an.analysis_path(zoo))

    task, _ = worker.submit(analysis_job_key(zoo, quick, n_images), run, label=label, owner=owner, restart=True)
    return task


@st.fragment(run_every=1.0)
def _job_progress(zoo_path: str, prefix: str) -> None:
    """The running job's progress (only this part reruns, every second); the whole page reruns once it ends."""
    task = analysis_task(zoo_path)
    if task is None or not task.active:
        st.rerun()
    if task.owner != jobs_view.current_session_id():
        st.info("Another session started this analysis; its progress is shown here (one job for everyone). "
                "It keeps running if you leave this page.", icon=":material/group:")
    jobs_view.record_panel(task.snapshot())
    jobs_view.cancel_button(task, f"{prefix}_cancel")


def analysis_section(zoo, prefix: str, quick_help: str = "fewer images and iterations; a few times faster, noisier"):
    """What a page shows while the zoo has no current analysis: the running job's progress and a Cancel button, or
    the settings (quick preview, image budget) and a button that starts the job — with the last job's error when it
    failed or was cancelled. Widget keys start with ``prefix``."""
    task = analysis_task(zoo.path)
    if task is not None and task.active:
        _job_progress(str(zoo.path), prefix)
        return
    if task is not None and task.status == "failed":
        st.error(f"The analysis failed: {task.error}", icon=":material/error:")
    elif task is not None and task.status == "cancelled":
        st.warning("The analysis was cancelled; nothing was saved (an earlier analysis on disk is kept).",
                   icon=":material/stop:")
    c1, c2 = st.columns([2, 1])
    quick = c1.checkbox(f"Quick preview ({quick_help})", value=False, key=f"{prefix}_quick")
    default = an.default_settings(quick)["n_images"]
    n_images = c2.select_slider("Images per task (sharpness batch)", IMAGE_BUDGETS, value=default,
                                key=f"{prefix}_n_images_{'quick' if quick else 'full'}",
                                help=f"The fixed batch every checkpoint's sharpness is measured on (default {default}). "
                                     "Fewer images: faster on a large model, noisier numbers.")
    st.caption("Runs as a background job of this server: leaving the page does not stop it, another session sees the "
               "same job, Cancel stops it; the result is saved next to the zoo and reused by every page.")
    if st.button("Compute the analysis", type="primary", key=f"{prefix}_compute"):
        submit_analysis(zoo, quick=quick, n_images=n_images, owner=jobs_view.current_session_id())
        st.rerun()
