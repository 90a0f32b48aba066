"""Ray backend: every job of a graph is a ``ray.remote`` task; Ray schedules, places and retries them.

Per job: ``num_cpus``/``num_gpus``/``memory`` from :class:`~sammerge.jobs.runner.Resources`, ``max_retries``
with ``retry_exceptions=True`` (a worker crash or an exception is retried; the job's record counts the
attempts). Dependencies are passed as object refs, so a job starts when its upstream jobs are done.
Progress is streamed back by polling the job records, which every worker writes into the graph's root
directory: on a cluster that directory must be on storage every node sees (NFS, a shared volume).
Nothing here schedules: Ray does.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from sammerge.errors import ConfigError
from sammerge.jobs.record import JobRecord, request_cancel
from sammerge.jobs.runner import Job, JobCancelled, JobFailed, graph_progress, read_records, run_job
from sammerge.progress import Progress


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'sammerge[ray]' (or pip install ray)") from None
    return ray


def _remote_run(job: Job, root: str, *upstream: dict) -> dict:
    """Body of one Ray task: skip if a dependency did not finish, else :func:`run_job` (records its attempt)."""
    for dep in upstream:
        if dep.get("status") != "done":
            return {"id": job.id, "status": "skipped", "error": f"upstream job {dep.get('name')} {dep.get('status')}"}
    try:
        record = run_job(job, root, backend="ray")
    except JobCancelled as exc:
        return {"id": job.id, "name": job.name, "status": "cancelled", "error": str(exc)}
    return record.model_dump(mode="json")


def ensure_ray(address: str | None = None, num_cpus: int | None = None):
    """``ray.init`` once (connect to ``address``: auto, ray://host:port; or start a local Ray)."""
    ray = import_ray()
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        if address:
            kwargs["address"] = address
        elif num_cpus:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
    return ray


def run_ray(jobs: list[Job], root: str | os.PathLike, progress: Progress | None = None, address: str | None = None,
            cancel_event: threading.Event | None = None, poll_s: float = 0.5) -> dict[str, JobRecord]:
    """Submit the graph to Ray, stream progress from the records, return every job's record.

    Raises :class:`JobFailed` naming the first job that failed after its retries, :class:`JobCancelled` when
    cancelled (the jobs see the cancel flag at their next step and stop).
    """
    ray = ensure_ray(address)
    root = Path(root)
    remote = ray.remote(_remote_run)
    refs: dict[str, object] = {}
    for job in jobs:
        missing = [d for d in job.deps if d not in refs]
        if missing:
            raise JobFailed(f"job '{job.name}' depends on jobs not before it in the graph: {', '.join(missing)}")
        opts = dict(num_cpus=job.resources.num_cpus, num_gpus=job.resources.num_gpus, max_retries=job.max_retries,
                    retry_exceptions=True, name=job.name)
        if job.resources.memory:
            opts["memory"] = int(job.resources.memory)
        refs[job.id] = remote.options(**opts).remote(job, str(root), *[refs[d] for d in job.deps])
    pending = list(refs.values())
    report = progress or (lambda done, total, stage="": None)
    cancelled = False
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
        report(*graph_progress(jobs, read_records(root, jobs)))
        if cancel_event is not None and cancel_event.is_set() and not cancelled:
            request_cancel(root)  # running jobs stop at their next step; queued ones see the flag and stop
            cancelled = True
    out: dict[str, JobRecord] = {}
    problems = []
    for job in jobs:
        try:
            result = ray.get(refs[job.id])
        except Exception as exc:  # a RayTaskError after the retries
            problems.append(f"job '{job.name}' failed: {str(exc).strip().splitlines()[-1]}")
            continue
        if result.get("status") == "done":
            out[job.id] = JobRecord.model_validate(result)
        elif result.get("status") == "cancelled":
            cancelled = True
        # "skipped": an upstream job failed or was cancelled, which is reported for that job
    if cancelled:
        raise JobCancelled("cancelled: " + f"{len(out)} of {len(jobs)} jobs finished (their records keep them)")
    if problems:
        raise JobFailed("; ".join(problems))
    report(sum(j.weight for j in jobs), sum(j.weight for j in jobs), "done")
    return out
