"""A re-entrant lock that serves waiting threads in arrival order, foreground before background.

The explorer evaluates one merge at a time for all sessions of a server. ``threading.RLock`` makes no promise
about which waiter goes next, so under load one browser session could wait for many others' merges in a row (seen
as 30 s stalls with 8 sessions on 2 cores); with first come, first served a session waits at most one round.
Work a thread does inside :func:`background` (the explorer's prefetch and refinement queue) waits behind every
foreground waiter: a slider move never queues behind a guess at some session's next move, only behind the one
item already running (soak: benchmarks/soak.py).
"""
from __future__ import annotations

import contextlib
import threading

__all__ = ["FairRLock", "background", "held_in_background"]

_priority = threading.local()  # .level: 0 foreground (default), 1 background


@contextlib.contextmanager
def background():
    """Within this block the calling thread's acquisitions wait behind every foreground waiter."""
    before = getattr(_priority, "level", 0)
    _priority.level = 1
    try:
        yield
    finally:
        _priority.level = before


@contextlib.contextmanager
def held_in_background(lock: "FairRLock"):
    """``lock`` held for this block, taken at background priority (after every waiting foreground thread)."""
    with background(), lock:
        yield


class FairRLock:
    """Re-entrant; ``acquire``/``release`` and ``with`` like ``threading.RLock``; waiters woken in FIFO order,
    every foreground waiter before any background one (:func:`background`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: list[tuple[int, int]] = []  # waiting threads' (priority, ticket); the smallest goes next
        self._next_ticket = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._queue:
                self._owner, self._depth = me, 1
                return True
            if not blocking:
                return False
            place = (getattr(_priority, "level", 0), self._next_ticket)
            self._next_ticket += 1
            self._queue.append(place)
            ok = self._cond.wait_for(lambda: self._owner is None and min(self._queue) == place,
                                     None if timeout < 0 else timeout)
            self._queue.remove(place)
            if not ok:
                self._cond.notify_all()  # the next in line may be free to go now
                return False
            self._owner, self._depth = me, 1
            return True

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a FairRLock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> "FairRLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
