"""The explorer's one background queue, on its own: refinements before prefetches, newer lists replace unstarted
items, a failing item is dropped, the thread ends when idle and on close."""
from __future__ import annotations

import threading

from sammerge.explorer.background import BackgroundQueue


def _gated():
    """A queue whose first item blocks until released, recording what ran in order."""
    ran, started, release = [], threading.Event(), threading.Event()

    def run(kind, payload):
        if payload == "block":
            started.set()
            release.wait(30)
        if payload == "boom":
            raise RuntimeError("boom")
        ran.append((kind, payload))
    return BackgroundQueue(run), ran, started, release


def test_refinements_run_before_prefetches_and_newer_lists_replace_older():
    q, ran, started, release = _gated()
    q.prefetch([("exact", "block")])
    assert started.wait(10)  # the worker is busy: what follows queues
    q.prefetch([("exact", "p1"), ("exact", "p2")])
    q.prefetch([("exact", "p3")])                      # replaces p1, p2 (not started)
    q.refine([("exact", "r1")])
    q.refine([("references", None), ("exact", "r2")])  # replaces r1
    assert not q.idle() and len(q.pending()) == 3
    release.set()
    assert q.wait_idle(30)
    assert ran == [("exact", "block"), ("references", None), ("exact", "r2"), ("exact", "p3")]


def test_a_failing_item_is_dropped_and_the_rest_runs():
    q, ran, _, _ = _gated()
    q.refine([("exact", "boom"), ("exact", "after")])
    assert q.wait_idle(30) and ran == [("exact", "after")]


def test_the_thread_ends_when_idle_and_restarts_on_new_work():
    q, ran, _, _ = _gated()
    q.idle_exit_s = 0.05
    q.refine([("exact", "a")])
    assert q.wait_idle(30)
    thread = q.thread
    if thread is not None:
        thread.join(10)
    assert q.thread is None
    q.prefetch([("estimate", "b")])
    assert q.wait_idle(30) and ran == [("exact", "a"), ("estimate", "b")]


def test_close_drops_queued_work_and_waits_for_the_running_item():
    q, ran, started, release = _gated()
    q.refine([("exact", "block"), ("exact", "never")])
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    q.close(timeout=30)
    assert ran == [("exact", "block")] and q.thread is None
    q.refine([("exact", "after close")])  # a closed queue takes no new work
    assert q.pending() == [] and q.thread is None and ran == [("exact", "block")]
