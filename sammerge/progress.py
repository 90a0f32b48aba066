"""One progress-callback signature for the whole library: ``progress(done, total, stage="")``.

``done`` of ``total`` units of the current ``stage`` (a short human-readable name) are finished.
The CLI draws a bar from it, the app a progress widget, a job view its record.
"""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int, stage: str = "") -> None: ...
