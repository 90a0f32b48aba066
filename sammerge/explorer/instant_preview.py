"""A linearized zoo's instant preview for the explorer: loaded from the zoo's cache, or prepared once by a job of the
server's shared worker (:mod:`sammerge.jobs.worker`) while the explorer evaluates exactly
(:mod:`sammerge.evaluation.preview_cache` computes and stores the tensors)."""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from sammerge.errors import ZooError
from sammerge.evaluation.evaluator import Evaluator
from sammerge.evaluation.linear_preview import LinearPreview
from sammerge.evaluation.preview_cache import (PreviewTensors, _require_linearized, compute_preview, load_preview,
                                               preview_key, preview_path, save_preview)
from sammerge.evaluation.subset import EXPLORER_SUBSET, EvalSubset
from sammerge.jobs.worker import get_worker

__all__ = ["InstantPreview", "submit_preview_job", "preview_job_key"]


def preview_job_key(zoo, subset: EvalSubset) -> str:
    """The worker key of the preview job: one per zoo directory and cache key."""
    return f"linear-preview:{Path(zoo.path).resolve()}:{preview_key(zoo, subset)[:24]}"


def submit_preview_job(zoo, subset: EvalSubset = EXPLORER_SUBSET, device: str | torch.device = "auto", worker=None,
                       owner: str | None = None):
    """The worker task that precomputes the preview (``jobs.worker``: the running or finished one for this zoo and
    subset if there is one — never two; a failed or cancelled one, or a done one whose file is gone, is started
    again). Its result: the file's path,
    or the tensors themselves when the zoo is not writable."""
    _require_linearized(zoo)
    worker = worker if worker is not None else get_worker()

    def run(progress, cancel_event):
        if load_preview(zoo, subset) is not None:
            return preview_path(zoo, subset)
        tensors = compute_preview(zoo, subset, progress, device)
        try:
            return save_preview(zoo, subset, tensors)
        except ZooError:
            return tensors  # a read-only zoo: the preview lives in this server's memory only

    key = preview_job_key(zoo, subset)
    done = worker.get(key)
    # a finished job whose file has gone since (deleted, zoo rewritten) runs again; one holding the tensors does not
    restart = (done is not None and done.status == "done" and not isinstance(done.result, PreviewTensors)
               and load_preview(zoo, subset) is None)
    task, _ = worker.submit(key, run, label=f"instant preview of {Path(zoo.path).name}", owner=owner, restart=restart)
    return task


class InstantPreview:
    """The explorer's handle on a linearized zoo's preview for its evaluator's images.

    Loaded from disk when stored there; otherwise one background job prepares it (``background``) and :meth:`get`
    returns None — the explorer evaluates exactly — until the job is done, then the preview (loaded once)."""

    def __init__(self, zoo, evaluator: Evaluator, subset: EvalSubset, background: bool = True, worker=None) -> None:
        self.zoo, self.evaluator, self.subset = zoo, evaluator, subset
        self.task = None  # the worker task preparing the preview, if one was started
        self.error: str | None = None
        self._preview: LinearPreview | None = None
        self._lock = threading.Lock()
        if not self._load() and background:
            self.task = submit_preview_job(zoo, subset, device=evaluator.device, worker=worker)

    def _load(self) -> bool:
        done = self.task is not None and self.task.status == "done"
        tensors = self.task.result if done and isinstance(self.task.result, PreviewTensors) else None
        tensors = tensors or load_preview(self.zoo, self.subset)
        if tensors is None:
            return False
        if not torch.equal(tensors.labels, self.evaluator.labels.to("cpu")):
            self.error = "the stored preview was computed on other images than the explorer's; evaluating exactly"
            return False
        preview = LinearPreview(self.evaluator)
        preview.preload(tensors.base, tensors.jvps)
        self._preview = preview
        return True

    def get(self) -> LinearPreview | None:
        """The preview once ready, else None (evaluate exactly)."""
        if self._preview is None and self.task is not None and self.task.status == "done":
            with self._lock:
                if self._preview is None and self.error is None and not self._load():
                    self.error = self.error or "the preview job finished but its file is not readable"
        return self._preview

    def wait(self, timeout: float | None = None) -> LinearPreview | None:
        """Block until the job ends (tests, benchmarks); the preview, or None when it failed or was cancelled."""
        if self._preview is None and self.task is not None:
            try:
                self.task.wait(timeout)
            except Exception:  # noqa: BLE001 — the task keeps its status and error
                pass
        return self.get()

    @property
    def status(self) -> str:
        """ready, queued, running, failed, cancelled or off (not stored and no job started)."""
        if self.get() is not None:
            return "ready"
        if self.task is None:
            return "off"
        return "failed" if self.task.status == "done" else self.task.status

    def describe(self) -> str:
        """One line for the page: how merges of this zoo are being scored right now."""
        status = self.status
        if status == "ready":
            return "every merge scored exactly and instantly from f(θ0) + Σ c J τ (precomputed, cached with the zoo)"
        head = "every merge evaluated exactly by a forward pass of the linearized model"
        if status in ("queued", "running"):
            p = self.task.progress
            return (f"{head} while the instant preview (f(θ0) and one J·τ per checkpoint) is prepared in a background "
                    f"job ({status}, {p.done}/{p.total})")
        why = self.error or (self.task.error if self.task is not None else None) or "not precomputed"
        return f"{head}; instant preview {status}: {why}"
