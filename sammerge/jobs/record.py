"""Job records: one JSON file per job, ``ROOT/.jobs/{id}.json``, written atomically.

A record holds the job's id (a hash of its inputs), status, progress, metrics, the sha256 of every output
file and of every upstream file it read, timings, attempts and the error message of a failure. A job whose
record says ``done`` and whose output and input files still hash to the recorded values is finished: it is
skipped, never redone.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from sammerge.io import atomic_write_text, sha256_file

JOBS_DIR = ".jobs"
CANCEL_ALL = "CANCEL"
Status = Literal["pending", "running", "done", "failed", "cancelled"]


class JobProgress(BaseModel):
    model_config = ConfigDict(extra="forbid")
    done: int = 0
    total: int = 1
    stage: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / max(1, self.total))


class JobRecord(BaseModel):
    """What one job did (or is doing)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    kind: str
    name: str
    inputs: dict[str, Any]
    deps: list[str] = []
    status: Status = "pending"
    progress: JobProgress = JobProgress()
    metrics: dict[str, Any] = {}
    outputs: dict[str, str] = {}       # relative path → sha256 (when done)
    input_files: dict[str, str] = {}   # upstream files read → sha256 at the time
    attempts: int = 0
    runs: int = 0                      # how many times the job's function actually ran to completion
    backend: str = "local"
    host: str = ""
    pid: int = 0
    threads: int | None = None
    started: str | None = None
    finished: str | None = None
    wall_time_s: float | None = None
    updated: str | None = None
    error: str | None = None


def job_id(kind: str, inputs: dict[str, Any], deps: list[str] | tuple[str, ...] = ()) -> str:
    """sha256 over the kind, the inputs (canonical JSON) and the upstream job ids: same work → same id."""
    payload = json.dumps({"kind": kind, "inputs": inputs, "deps": list(deps)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def jobs_dir(root: str | os.PathLike) -> Path:
    return Path(root) / JOBS_DIR


def record_path(root: str | os.PathLike, jid: str) -> Path:
    return jobs_dir(root) / f"{jid}.json"


def write_record(root: str | os.PathLike, record: JobRecord) -> None:
    record.updated = now()
    atomic_write_text(record_path(root, record.id), record.model_dump_json(indent=1))


def read_record(path: str | os.PathLike) -> JobRecord | None:
    """The record at ``path``; None when missing or unreadable (a record is rewritten, never trusted half-way)."""
    try:
        return JobRecord.model_validate_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError):
        return None


def list_records(root: str | os.PathLike) -> list[JobRecord]:
    """Every readable record under ``ROOT/.jobs``, oldest start first."""
    d = jobs_dir(root)
    if not d.is_dir():
        return []
    records = [r for p in sorted(d.glob("*.json")) if (r := read_record(p)) is not None]
    return sorted(records, key=lambda r: (r.started or "~", r.name))


class HashCache:
    """sha256 of files, remembered per (path, size, mtime) so one graph run hashes each file once."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, int, int], str] = {}

    def __call__(self, path: Path) -> str | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._seen:
            self._seen[key] = sha256_file(path)
        return self._seen[key]


def is_finished(record: JobRecord | None, root: str | os.PathLike, hashes: HashCache | None = None) -> bool:
    """Done, and every output and every upstream file it read still has the recorded sha256."""
    if record is None or record.status != "done":
        return False
    hashes = hashes or HashCache()
    files = {**record.outputs, **record.input_files}
    return all(hashes(Path(root) / rel) == sha for rel, sha in files.items())


def is_stale(record: JobRecord) -> bool:
    """Says running (or pending) but its process on this host is gone: a killed server or CLI. The next run of
    the same work redoes it (only ``done`` records are trusted)."""
    if record.status not in ("running", "pending") or not record.pid or record.host != socket.gethostname():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def shown_status(record: JobRecord) -> str:
    """The status to show: ``interrupted`` for a stale running record."""
    return "interrupted" if is_stale(record) else record.status


def cancel_requested(root: str | os.PathLike, jid: str | None = None) -> bool:
    """A cancel flag for every job under ROOT (``.jobs/CANCEL``) or for one job (``.jobs/{id}.cancel``)."""
    d = jobs_dir(root)
    return (d / CANCEL_ALL).exists() or (jid is not None and (d / f"{jid}.cancel").exists())


def request_cancel(root: str | os.PathLike, jid: str | None = None) -> Path:
    """Ask the jobs under ROOT (or one job) to stop at their next step; returns the flag file."""
    flag = jobs_dir(root) / (f"{jid}.cancel" if jid else CANCEL_ALL)
    atomic_write_text(flag, now())
    return flag


def clear_cancel(root: str | os.PathLike) -> None:
    """Remove every cancel flag (a new run was asked for)."""
    d = jobs_dir(root)
    for flag in [d / CANCEL_ALL, *d.glob("*.cancel")] if d.is_dir() else []:
        flag.unlink(missing_ok=True)
