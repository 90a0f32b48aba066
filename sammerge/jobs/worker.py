"""The app's local worker: one process-wide pool of threads that runs long work for every session of a server.

``get_worker().submit(key, fn, ...)`` runs ``fn(progress, cancel_event)`` in a worker thread, once per key: a
second session asking for the same key gets the same :class:`Task` (one job per piece of work, never two).
The task lives in the server process, not in a page's script run, so page changes, reloads and closed tabs
do not stop it; its progress is in memory for every session and in its record on disk
(``RECORD_ROOT/.jobs/{id}.json``) for any page or process. Failed and cancelled tasks can be submitted again
(work already finished is kept by the job records underneath).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from sammerge.jobs.record import JobProgress, JobRecord, job_id, now, read_record, record_path, write_record
from sammerge.jobs.runner import JobCancelled

ACTIVE = ("queued", "running")


class Task:
    """One submitted piece of work: status, progress, result or error, a cancel flag, a record on disk."""

    def __init__(self, key: str, label: str, record_root: Path | None, owner: str | None) -> None:
        self.key, self.label, self.owner = key, label, owner
        self.id = job_id("task", {"key": key})
        self.record_root = record_root
        self.status = "queued"
        self.progress = JobProgress(done=0, total=1, stage="queued")
        self.result: Any = None
        self.error: str | None = None
        self.started, self.finished = now(), None
        self.cancel_event = threading.Event()
        self.future: Future | None = None
        self._last_write = 0.0
        self._write(force=True)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def cancel(self) -> None:
        """Ask the work to stop at its next progress step (the record then says ``cancelled``)."""
        self.cancel_event.set()

    def report(self, done: int, total: int, stage: str = "") -> None:
        """The ``progress(done, total, stage)`` callback handed to the work; raises JobCancelled once cancelled."""
        self.progress = JobProgress(done=int(done), total=max(1, int(total)), stage=stage)
        self._write()
        if self.cancel_event.is_set():
            raise JobCancelled(f"{self.label}: cancelled")

    def wait(self, timeout: float | None = None) -> Any:
        """The result (re-raises the work's exception)."""
        assert self.future is not None
        return self.future.result(timeout)

    def snapshot(self) -> JobRecord:
        """The task as a record (what :meth:`record` reads from disk, but current to the last step)."""
        status = {"queued": "pending"}.get(self.status, self.status)
        return JobRecord(id=self.id, kind="task", name=self.label, inputs={"key": self.key}, status=status,
                         host=socket.gethostname(), pid=os.getpid(), progress=self.progress, started=self.started, finished=self.finished, error=self.error,
                         metrics={"owner": self.owner} if self.owner else {})

    def record(self) -> JobRecord | None:
        """The task's record as any process sees it on disk."""
        return read_record(record_path(self.record_root, self.id)) if self.record_root else None

    def _write(self, force: bool = False) -> None:
        if self.record_root is None:
            return
        t = time.monotonic()
        if not force and t - self._last_write < 0.5:
            return
        self._last_write = t
        try:
            write_record(self.record_root, self.snapshot())
        except OSError:
            pass  # the in-memory task stays the source of truth for this server


class Worker:
    """A small pool of daemon threads keyed by task: ``submit`` twice with one key → one task.

    At most ``max_workers`` tasks run at once (the others wait as ``queued``). The threads are daemons: stopping
    the server does not wait for a build; a killed build leaves its finished jobs on disk for the next start.
    """

    def __init__(self, max_workers: int = 1, keep_finished: int = 32) -> None:
        self._slots = threading.Semaphore(max_workers)
        self._tasks: dict[str, Task] = {}
        self._lock = threading.Lock()
        self.keep_finished = keep_finished

    def get(self, key: str) -> Task | None:
        with self._lock:
            return self._tasks.get(key)

    def tasks(self) -> list[Task]:
        with self._lock:
            return list(self._tasks.values())

    def submit(self, key: str, fn: Callable[[Callable, threading.Event], Any], label: str = "",
               record_root: str | Path | None = None, owner: str | None = None,
               restart: bool = False) -> tuple[Task, bool]:
        """(task, created): the running or finished task of ``key``, or a new one running ``fn``.

        A failed or cancelled task is replaced by a new one (a retry); a done one is returned as it is unless
        ``restart`` (its result is gone); a queued or running one is always shared.
        """
        with self._lock:
            task = self._tasks.get(key)
            if task is not None and (task.active or (task.status == "done" and not restart)):
                return task, False
            task = Task(key, label or key, Path(record_root) if record_root else None, owner)
            self._tasks[key] = task
            self._trim()
            task.future = Future()
            threading.Thread(target=self._run, args=(task, fn), name=f"sammerge-job-{task.id[:8]}",
                             daemon=True).start()
            return task, True

    def _run(self, task: Task, fn) -> None:
        with self._slots:
            task.status = "running"
            task._write(force=True)
            error: BaseException | None = None
            try:
                task.result = fn(task.report, task.cancel_event)
                task.status = "done"
            except JobCancelled as exc:
                task.status, task.error, error = "cancelled", str(exc), exc
            except BaseException as exc:
                traceback.print_exc()  # the server log keeps the traceback; the page shows the one-line error
                task.status, task.error = "failed", f"{exc}" if isinstance(exc, Exception) else type(exc).__name__
                error = exc
            task.finished = now()
            task._write(force=True)  # the record is final before anyone waiting on the task wakes up
            if error is None:
                task.future.set_result(task.result)
            else:
                task.future.set_exception(error)

    def _trim(self) -> None:
        done = [k for k, t in self._tasks.items() if not t.active]
        for k in done[:max(0, len(done) - self.keep_finished)]:
            del self._tasks[k]


_WORKER: Worker | None = None
_WORKER_LOCK = threading.Lock()


def get_worker() -> Worker:
    """The process-wide worker (created on first use; shared by every session of a Streamlit server)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = Worker()
        return _WORKER
