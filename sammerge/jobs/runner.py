"""Jobs as data and how one job runs: skip when finished, else run, hash its outputs, record everything.

A :class:`Job` names a top-level function ``fn(ctx, inputs) -> metrics`` (so it can be shipped to a Ray
worker), its JSON inputs, the files it writes under the graph's root directory, the jobs it depends on and
the resources it asks for. Its id is a hash of kind, inputs and upstream ids (:func:`record.job_id`).
A job seeds itself from its inputs and sets torch's thread count from ``threads``: the bytes it writes do
not depend on which process runs it or in what order.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sammerge.errors import SammergeError
from sammerge.jobs.record import (HashCache, JobProgress, JobRecord, cancel_requested, is_finished, job_id, now,
                                  read_record, record_path, write_record)
from sammerge.progress import Progress


class JobCancelled(SammergeError):
    """A job (or the graph it belongs to) was asked to stop."""


class JobFailed(SammergeError):
    """A job raised; the message names the job and its error (the record keeps it too)."""


@dataclass(frozen=True)
class Resources:
    """What a job asks a Ray cluster for (the local backend runs one job at a time)."""
    num_cpus: float = 1
    num_gpus: float = 0
    memory: int | None = None  # bytes


@dataclass(frozen=True)
class Job:
    kind: str
    name: str
    fn: Callable[["JobContext", dict], dict]
    inputs: dict[str, Any]
    outputs: tuple[str, ...] = ()          # files under root the job writes (hashed into its record)
    reads: tuple[str, ...] = ()            # upstream files it reads (their hashes recorded and re-checked)
    deps: tuple[str, ...] = ()             # ids of the jobs it needs
    weight: int = 1                        # progress units of the job in its graph
    threads: int | None = None
    resources: Resources = field(default_factory=Resources)
    max_retries: int = 1

    @property
    def id(self) -> str:
        return job_id(self.kind, self.inputs, self.deps)


class JobContext:
    """Handed to a job's function: where to write, and a progress callback that also checks cancellation."""

    def __init__(self, job: Job, root: Path, record: JobRecord, cancel_event: threading.Event | None = None,
                 on_progress: Progress | None = None, interval_s: float = 0.5) -> None:
        self.job, self.root, self.record = job, root, record
        self.cancel_event, self.on_progress, self.interval_s = cancel_event, on_progress, interval_s
        self._last_write = 0.0

    def path(self, rel: str) -> Path:
        out = self.root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def cancelled(self) -> bool:
        return bool(self.cancel_event is not None and self.cancel_event.is_set()) or \
            cancel_requested(self.root, self.job.id)

    def progress(self, done: int, total: int, stage: str = "") -> None:
        """``progress(done, total, stage)``: updates the record (at most every ``interval_s``); raises
        :class:`JobCancelled` when a cancel was requested."""
        self.record.progress = JobProgress(done=done, total=total, stage=stage)
        if self.on_progress:
            self.on_progress(done, total, stage)
        t = time.monotonic()
        if t - self._last_write >= self.interval_s or done >= total:
            self._last_write = t
            if self.cancelled():
                raise JobCancelled(f"job '{self.job.name}' cancelled")
            write_record(self.root, self.record)


def _set_threads(n: int | None):
    import torch
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    return old


def run_job(job: Job, root: str | os.PathLike, backend: str = "local", cancel_event: threading.Event | None = None,
            on_progress: Progress | None = None, hashes: HashCache | None = None) -> JobRecord:
    """Run one job unless its record shows it finished (outputs and inputs hash-verified); returns the record.

    Failure: the record says ``failed`` with the error, the exception propagates. Cancel: ``cancelled``,
    :class:`JobCancelled` propagates. Outputs are written by the job with atomic writes, so a killed job leaves
    either the old file or the new one, and no ``done`` record.
    """
    import torch

    root = Path(root)
    hashes = hashes or HashCache()
    existing = read_record(record_path(root, job.id))
    if is_finished(existing, root, hashes):
        return existing
    if cancel_requested(root, job.id) or (cancel_event is not None and cancel_event.is_set()):
        raise JobCancelled(f"job '{job.name}' cancelled")
    reads = {}
    for rel in job.reads:
        sha = hashes(root / rel)
        if sha is None:
            raise JobFailed(f"job '{job.name}': input file {root / rel} is missing")
        reads[rel] = sha
    record = JobRecord(id=job.id, kind=job.kind, name=job.name, inputs=job.inputs, deps=list(job.deps),
                       status="running", attempts=(existing.attempts if existing else 0) + 1,
                       runs=existing.runs if existing else 0, backend=backend, host=socket.gethostname(),
                       pid=os.getpid(), threads=job.threads, started=now(), input_files=reads,
                       progress=JobProgress(done=0, total=job.weight, stage=job.name))
    write_record(root, record)
    ctx = JobContext(job, root, record, cancel_event, on_progress)
    old_threads = _set_threads(job.threads)
    t0 = time.perf_counter()
    try:
        metrics = job.fn(ctx, job.inputs) or {}
        missing = [rel for rel in job.outputs if not (root / rel).is_file()]
        if missing:
            raise JobFailed(f"job '{job.name}' did not write {', '.join(missing)}")
        record.outputs = {rel: hashes(root / rel) for rel in job.outputs}
        record.metrics = metrics
        record.status, record.runs, record.error = "done", record.runs + 1, None
        record.progress = JobProgress(done=record.progress.total, total=record.progress.total, stage="done")
    except JobCancelled as exc:
        record.status, record.error = "cancelled", str(exc)
        raise
    except BaseException as exc:
        record.status = "failed"
        record.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        raise
    finally:
        torch.set_num_threads(old_threads)
        record.finished, record.wall_time_s = now(), round(time.perf_counter() - t0, 4)
        write_record(root, record)
    return record


def graph_progress(jobs: list[Job], records: dict[str, JobRecord | None]) -> tuple[int, int, str]:
    """(done, total, stage) of a graph from its jobs' records: finished jobs count their whole weight,
    running ones their recorded fraction; the stage names the running jobs."""
    total = sum(j.weight for j in jobs)
    done, running = 0.0, []
    for j in jobs:
        r = records.get(j.id)
        if r is None:
            continue
        if r.status == "done":
            done += j.weight
        elif r.status == "running":
            done += j.weight * r.progress.fraction
            running.append(r.progress.stage or j.name)
    stage = "; ".join(running[:3]) + (f" (+{len(running) - 3})" if len(running) > 3 else "")
    return int(done), total, stage


def read_records(root: str | os.PathLike, jobs: list[Job]) -> dict[str, JobRecord | None]:
    return {j.id: read_record(record_path(root, j.id)) for j in jobs}


def run_local(jobs: list[Job], root: str | os.PathLike, progress: Progress | None = None,
              cancel_event: threading.Event | None = None) -> dict[str, JobRecord]:
    """Run a graph (jobs in dependency order) in this thread, one job at a time; finished jobs are skipped."""
    root = Path(root)
    hashes = HashCache()
    records: dict[str, JobRecord | None] = read_records(root, jobs)
    by_id = {j.id: j for j in jobs}
    report = progress or (lambda done, total, stage="": None)
    finished_weight = 0
    total = sum(j.weight for j in jobs)
    for job in jobs:
        missing = [d for d in job.deps if d not in by_id]
        if missing:
            raise JobFailed(f"job '{job.name}' depends on jobs outside its graph: {', '.join(missing)}")

        def on_progress(done: int, tot: int, stage: str = "", _job=job, _base=finished_weight) -> None:
            report(_base + int(_job.weight * min(1.0, done / max(1, tot))), total, stage or _job.name)

        try:
            records[job.id] = run_job(job, root, "local", cancel_event, on_progress, hashes)
        except (SammergeError, KeyboardInterrupt):  # JobCancelled, JobFailed and bad input keep their message
            raise
        except Exception as exc:
            raise JobFailed(f"job '{job.name}' failed: {type(exc).__name__}: {exc}") from exc
        finished_weight += job.weight
        report(finished_weight, total, job.name)
    return records  # type: ignore[return-value]
