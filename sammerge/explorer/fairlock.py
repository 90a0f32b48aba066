"""A re-entrant lock that serves waiting threads in arrival order.

The explorer evaluates one merge at a time for all sessions of a server. ``threading.RLock`` makes no promise
about which waiter goes next, so under load one browser session could wait for many others' merges in a row (seen
as 30 s stalls with 8 sessions on 2 cores); with first come, first served a session waits at most one round.
"""
from __future__ import annotations

import threading
from collections import deque


class FairRLock:
    """Re-entrant; ``acquire``/``release`` and ``with`` like ``threading.RLock``, waiters woken in FIFO order."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._queue: deque[int] = deque()  # waiting threads' tickets, oldest first
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
            ticket = self._next_ticket
            self._next_ticket += 1
            self._queue.append(ticket)
            ok = self._cond.wait_for(lambda: self._owner is None and self._queue[0] == ticket,
                                     None if timeout < 0 else timeout)
            if not ok:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may be free to go now
                return False
            self._queue.popleft()
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
