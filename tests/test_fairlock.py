"""FairRLock: first come, first served within a level (move, detail, background); re-entrant; timeouts give up their
place. ExactResults.fill on a CPU lets another session's move cut in between the twins of a comparison."""
from __future__ import annotations

import contextlib
import threading
import time

import pytest

from sammerge.explorer.fairlock import FairRLock, background, detail


def wait_until(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


def test_waiters_are_served_in_arrival_order():
    lock, order = FairRLock(), []
    lock.acquire()
    threads = []
    for i in range(8):
        def work(i=i):
            with lock:
                order.append(i)
                time.sleep(0.002)  # hold it a little: late arrivals must still queue
        t = threading.Thread(target=work)
        t.start()
        wait_until(lambda: len(lock._queue) == i + 1)  # thread i is queued before thread i + 1 starts
        threads.append(t)
    lock.release()
    for t in threads:
        t.join(10)
    assert order == list(range(8))


def test_reentrant_and_owner_only_release():
    lock = FairRLock()
    with lock:
        with lock:
            assert lock._depth == 2
        got = []
        t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
        t.start(); t.join()
        assert got == [False]  # still held by this thread after the inner release
    with pytest.raises(RuntimeError):
        lock.release()


def test_a_timed_out_waiter_leaves_the_queue_and_does_not_block_the_next():
    lock = FairRLock()
    lock.acquire()
    assert lock.acquire(blocking=False) is True  # re-entrant for the owner
    lock.release()
    results = []
    t1 = threading.Thread(target=lambda: results.append(("t1", lock.acquire(timeout=0.05))))
    t1.start(); t1.join()
    assert results == [("t1", False)] and not lock._queue
    t2 = threading.Thread(target=lambda: (lock.acquire(), results.append(("t2", True)), lock.release()))
    t2.start()
    wait_until(lambda: len(lock._queue) == 1)
    lock.release()
    t2.join(5)
    assert results[-1] == ("t2", True)


def _queue_thread(lock, order, name, background_work=False, level=None):
    """Start a thread that takes ``lock`` once (inside ``background()`` or ``level()`` if asked) and wait until it
    is queued."""
    def work():
        ctx = level() if level else background() if background_work else contextlib.nullcontext()
        with ctx, lock:
            order.append(name)
    before = len(lock._queue)
    t = threading.Thread(target=work)
    t.start()
    wait_until(lambda: len(lock._queue) == before + 1)
    return t


def test_foreground_waiters_go_before_background_ones_fifo_within_each():
    lock, order = FairRLock(), []
    lock.acquire()
    threads = [_queue_thread(lock, order, "prefetch 1", background_work=True),
               _queue_thread(lock, order, "move A"),
               _queue_thread(lock, order, "prefetch 2", background_work=True),
               _queue_thread(lock, order, "move B")]
    lock.release()
    for t in threads:
        t.join(10)
    assert order == ["move A", "move B", "prefetch 1", "prefetch 2"]


def test_background_is_per_thread_and_restored():
    from sammerge.explorer import fairlock
    seen = []
    with background():
        seen.append(fairlock._priority.level)
        t = threading.Thread(target=lambda: seen.append(getattr(fairlock._priority, "level", 0)))
        t.start(); t.join()
        with background():
            pass
        seen.append(fairlock._priority.level)
    seen.append(fairlock._priority.level)
    assert seen == [fairlock.BACKGROUND, fairlock.MOVE, fairlock.BACKGROUND, fairlock.MOVE]


def test_the_explorers_background_items_run_as_background():
    from types import SimpleNamespace

    from sammerge.explorer import fairlock
    from sammerge.explorer.service import Explorer
    seen = []
    fake = SimpleNamespace(_run_background_item=lambda kind, spec: seen.append((kind, fairlock._priority.level)))
    Explorer._run_background(fake, "exact", None)
    assert seen == [("exact", fairlock.BACKGROUND)] and getattr(fairlock._priority, "level", 0) == fairlock.MOVE


def test_moves_before_details_before_background_fifo_within_each():
    lock, order = FairRLock(), []
    lock.acquire()
    threads = [_queue_thread(lock, order, "prefetch 1", level=background),
               _queue_thread(lock, order, "twins A", level=detail),
               _queue_thread(lock, order, "move B"),
               _queue_thread(lock, order, "twins B", level=detail),
               _queue_thread(lock, order, "prefetch 2", level=background),
               _queue_thread(lock, order, "move C")]
    lock.release()
    for t in threads:
        t.join(10)
    assert order == ["move B", "move C", "twins A", "twins B", "prefetch 1", "prefetch 2"]


def test_the_explorers_comparison_runs_as_detail():
    from types import SimpleNamespace

    from sammerge.explorer import fairlock, scorers
    from sammerge.explorer.service import Explorer
    seen = []
    fake = SimpleNamespace(scorer=lambda spec, allow: SimpleNamespace(exact=True), twins=lambda spec: {},
                           tasks=(), variants=(), split="val")
    original = scorers.compare
    scorers.compare = lambda *a: seen.append(fairlock._priority.level) or "cmp"
    try:
        assert Explorer.compare(fake, None) == "cmp"
    finally:
        scorers.compare = original
    assert seen == [fairlock.DETAIL] and getattr(fairlock._priority, "level", 0) == fairlock.MOVE


def test_a_move_cuts_in_between_the_twins_of_another_session_on_cpu():
    """Session A's comparison (3 uncached merges) is running; session B's move arrives while A's first twin is
    evaluated: B's merge is evaluated next, before A's other twins (one lock hold per merge on a CPU)."""
    from types import SimpleNamespace

    from sammerge.explorer.scorers import ExactResults
    shared = ExactResults(None, SimpleNamespace(device=SimpleNamespace(type="cpu")), "", cache_size=16)
    order, started, go = [], threading.Event(), threading.Event()

    def spec(name):
        return SimpleNamespace(key=lambda: name)

    def compute(specs):
        names = [s.key() for s in specs]
        order.append(names)
        if names == ["A twin 1"]:
            started.set()
            assert go.wait(10)
        return [{"acc": n} for n in names]
    got = {}

    def session_a():
        with detail():  # the page's comparison
            got["A"] = shared.fill([spec(f"A twin {i}") for i in (1, 2, 3)], compute)
    a = threading.Thread(target=session_a)
    a.start()
    assert started.wait(10)
    b = threading.Thread(target=lambda: got.update(B=shared.fill([spec("B move")], compute)))
    b.start()
    wait_until(lambda: len(shared.lock._queue) == 1)  # B waits for A's first twin
    go.set()
    a.join(10); b.join(10)
    assert order == [["A twin 1"], ["B move"], ["A twin 2"], ["A twin 3"]]
    assert [r["acc"] for r in got["A"]] == ["A twin 1", "A twin 2", "A twin 3"] and got["B"] == [{"acc": "B move"}]


def test_a_move_waits_for_one_reference_model_not_all_of_them():
    """The references (θ0 and every fine-tuned model) are measured one model per lock hold: a move arriving while
    the first one runs is evaluated right after it."""
    from types import SimpleNamespace

    from sammerge.explorer.scorers import ExactResults
    order, started, go = [], threading.Event(), threading.Event()

    def evaluate(name):
        order.append(name)
        if name == "pretrained":
            started.set()
            assert go.wait(10)
        return {"a": name, "b": name}
    zoo = SimpleNamespace(tasks=["a", "b"], variants=["plain", "sam"], pretrained=lambda: "pretrained",
                          finetuned=lambda t, v: f"{t}/{v}")
    shared = ExactResults(zoo, SimpleNamespace(device=SimpleNamespace(type="cpu"), evaluate=evaluate), "", 16)
    shared.task_evaluator = lambda task: SimpleNamespace(evaluate=evaluate)
    refs = {}
    r = threading.Thread(target=lambda: refs.update(out=shared.references()))
    r.start()
    assert started.wait(10)
    move = threading.Thread(target=lambda: shared.fill([SimpleNamespace(key=lambda: "move")],
                                                       lambda specs: [evaluate("move")]))
    move.start()
    wait_until(lambda: len(shared.lock._queue) == 1)
    go.set()
    r.join(10); move.join(10)
    assert order == ["pretrained", "move", "a/plain", "b/plain", "a/sam", "b/sam"]
    pre, ft = refs["out"]
    assert pre == {"a": "pretrained", "b": "pretrained"} and ft["sam"]["b"] == "b/sam" and shared.references() is refs["out"]
