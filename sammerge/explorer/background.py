"""The explorer's one background queue: a worker thread that refines estimates to exact numbers, computes merged
directions and prefetches the merges a user is likely to ask for next.

Two lists, served in this order: *refinements* (what is on screen now) before *prefetches* (what may come next).
Each call replaces the items of its list that have not started (the page only wants its latest state). The thread
starts on the first item, ends after ``idle_exit_s`` without work (it would keep the explorer alive otherwise) and
never fails: an item that raises is dropped (asked for on demand, the same work reports its error).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

__all__ = ["BackgroundQueue"]

Item = tuple[str, Any]  # (kind, payload), run by the owner's ``run(kind, payload)``


class BackgroundQueue:
    idle_exit_s = 30.0

    def __init__(self, run: Callable[[str, Any], None], name: str = "sammerge-background") -> None:
        self._run, self._name = run, name
        self._cv = threading.Condition()
        self._refine: list[Item] = []
        self._prefetch: list[Item] = []
        self._closing = False
        self.thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def refine(self, items: Sequence[Item]) -> None:
        """Replace the pending refinements (served before any prefetch); ignored once closed."""
        with self._cv:
            self._refine = [] if self._closing else list(items)
            self._wake()

    def prefetch(self, items: Sequence[Item]) -> None:
        """Replace the pending prefetches; ignored once closed."""
        with self._cv:
            self._prefetch = [] if self._closing else list(items)
            self._wake()

    def pending(self) -> list[Item]:
        with self._cv:
            return self._refine + self._prefetch

    def idle(self) -> bool:
        """True when nothing is queued or running."""
        return self._idle.is_set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running (tests, benchmarks); False on timeout."""
        return self._idle.wait(timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Drop queued work, let the item in progress finish (waiting at most ``timeout`` s), end the thread."""
        with self._cv:
            self._closing = True
            self._refine, self._prefetch = [], []
            thread = self.thread
            self._cv.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _wake(self) -> None:  # with _cv held
        if self._closing or (not self._refine and not self._prefetch):
            return
        self._idle.clear()
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, daemon=True, name=self._name)
            self.thread.start()
        self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._closing:
                    self.thread = None
                    self._idle.set()
                    return
                if not self._refine and not self._prefetch:
                    self._idle.set()
                    self._cv.wait(self.idle_exit_s)
                    if not self._refine and not self._prefetch:  # idle (or closing): the thread ends
                        self.thread = None
                        return
                kind, payload = (self._refine or self._prefetch).pop(0)
            try:
                self._run(kind, payload)
            except Exception:  # noqa: BLE001 - a background item never fails the page
                pass
