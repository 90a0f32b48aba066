"""One progress-callback signature for the whole library: ``progress(done, total, stage="")``.

``done`` of ``total`` units of the current ``stage`` (a short human-readable name) are finished.
The CLI draws a bar from it, the app a progress widget, a job view its record.
"""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int, stage: str = "") -> None: ...


# -- progress of long library calls that have no callback argument (a merge method's direction) ----------------------
import contextlib as _contextlib
import contextvars as _contextvars

_CURRENT: _contextvars.ContextVar[Progress | None] = _contextvars.ContextVar("sammerge_progress", default=None)


@_contextlib.contextmanager
def reporting(progress: Progress | None):
    """Within the block, :func:`report` calls (e.g. a method's per-layer loop) go to ``progress``."""
    token = _CURRENT.set(progress)
    try:
        yield progress
    finally:
        _CURRENT.reset(token)


def report(done: int, total: int, stage: str = "") -> None:
    """Tell the progress callback of the enclosing :func:`reporting` block, if any (else nothing)."""
    progress = _CURRENT.get()
    if progress is not None:
        progress(done, total, stage)
