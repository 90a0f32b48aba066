"""Background jobs: job records as data, content-hashed inputs, atomic outputs; a local and a Ray backend.

- :mod:`record`: the JSON record of one job (``ROOT/.jobs/{id}.json``), its id, verification, cancel flags.
- :mod:`runner`: :class:`Job` (a function + JSON inputs + outputs + deps + resources) and :func:`run_job`;
  :func:`run_local` runs a graph in this thread.
- :mod:`ray_backend`: the same graph as Ray tasks (resources, retries), progress polled from the records.
- :mod:`worker`: the app's process-wide worker (one job per key, shared by every session of a server).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from sammerge.errors import ConfigError
from sammerge.jobs.record import (JOBS_DIR, JobProgress, JobRecord, cancel_requested, clear_cancel, is_finished, job_id,
                                  list_records, read_record, request_cancel)
from sammerge.jobs.runner import Job, JobCancelled, JobContext, JobFailed, Resources, run_job, run_local
from sammerge.progress import Progress

BACKENDS = ("local", "ray")

__all__ = ["Job", "JobContext", "JobRecord", "JobProgress", "Resources", "JobCancelled", "JobFailed", "run_job",
           "run_local", "run_graph", "list_records", "read_record", "request_cancel", "clear_cancel",
           "cancel_requested", "is_finished", "job_id", "job_roots", "check_backend", "BACKENDS"]


def job_roots(path: str | os.PathLike) -> list[Path]:
    """Directories holding job records for ``path``: itself, a build of it in progress (``.{name}.build``),
    its sweeps (``analysis/sweeps``) — those that exist."""
    path = Path(path)
    candidates = [path, path.parent / f".{path.name}.build", path / "analysis" / "sweeps"]
    return [c for c in candidates if (c / JOBS_DIR).is_dir()]


def check_backend(backend: str, address: str | None = None) -> None:
    """ConfigError for an unknown backend or an address without Ray (checked before any work starts)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    if backend == "local" and address:
        raise ConfigError("--address is only used with --backend ray")


def run_graph(jobs: list[Job], root: str | os.PathLike, backend: str = "local", progress: Progress | None = None,
              address: str | None = None, cancel_event: threading.Event | None = None) -> dict[str, JobRecord]:
    """Run a job graph (dependency order) on a backend: ``local`` (this thread) or ``ray`` (``address``)."""
    check_backend(backend, address)
    if backend == "local":
        return run_local(jobs, root, progress, cancel_event)
    from sammerge.jobs.ray_backend import run_ray
    return run_ray(jobs, root, progress, address, cancel_event)
