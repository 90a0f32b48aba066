"""A re-entrant lock that serves waiting threads in arrival order within three priority levels.

The explorer evaluates one merge at a time for all sessions of a server. ``threading.RLock`` makes no promise
about which waiter goes next, so under load one browser session could wait for many others' merges in a row (seen
as 30 s stalls with 8 sessions on 2 cores); with first come, first served a session waits at most one round.
The levels, smallest first:

* ``MOVE`` (the default): the number a session's user is waiting for — the merge just asked for;
* ``DETAIL`` (:func:`detail`): what a session draws after that number — the same merge on every variant (the
  twins), the export's comparison;
* ``BACKGROUND`` (:func:`background`): the prefetch and refinement queue, a guess at some session's next move.

So a move queues behind the other sessions' moves and the one item already running, never behind their twins or
prefetches (soak, benchmarks/soak.py: with FIFO across levels, four sessions' moves waited behind up to three
sessions' twin batches — p95 4.2 s with one CPU hog on 2 cores).
"""
from __future__ import annotations

import contextlib
import threading

__all__ = ["FairRLock", "MOVE", "DETAIL", "BACKGROUND", "priority", "detail", "background"]

MOVE, DETAIL, BACKGROUND = 0, 1, 2
_priority = threading.local()  # .level: the calling thread's level (MOVE when unset)


@contextlib.contextmanager
def priority(level: int):
    """Within this block the calling thread's acquisitions wait behind every waiter of a smaller level."""
    before = getattr(_priority, "level", MOVE)
    _priority.level = level
    try:
        yield
    finally:
        _priority.level = before


def detail():
    """Acquisitions in this block wait behind every session's move (``MOVE``), before any background work."""
    return priority(DETAIL)


def background():
    """Acquisitions in this block wait behind every move and every detail."""
    return priority(BACKGROUND)


class FairRLock:
    """Re-entrant; ``acquire``/``release`` and ``with`` like ``threading.RLock``; waiters served by level (module
    doc), in arrival order within a level."""

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
            place = (getattr(_priority, "level", MOVE), self._next_ticket)
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
