"""webapp.reruns against the installed Streamlit's own ScriptRequests: which pending reruns end a fragment run."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests

from sammerge.webapp import reruns


def _ctx(*requests: RerunData, fragments=("explorer",)):
    script_requests = ScriptRequests()
    for data in requests:
        script_requests.request_rerun(data)
    return SimpleNamespace(script_requests=script_requests, fragment_ids_this_run=list(fragments))


def test_a_slider_move_inside_the_fragment_waits_and_streamlit_would_not_preempt_it():
    ctx = _ctx(RerunData(fragment_id_queue=["explorer"]))  # what a widget change inside a fragment requests
    assert reruns.newer_move_waiting(ctx)
    # the reason for the module: Streamlit lets the running fragment run draw to its end before this rerun starts
    assert ctx.script_requests.on_scriptrunner_yield() is None
    assert reruns.newer_move_waiting(ctx)  # still waiting after the yield point


def test_nothing_waiting_a_timer_poll_or_a_stop_do_not_count():
    assert not reruns.newer_move_waiting(_ctx())
    assert not reruns.newer_move_waiting(_ctx(RerunData(fragment_id_queue=["explorer"], is_auto_rerun=True)))
    stopped = _ctx()
    stopped.script_requests.request_stop()
    assert not reruns.newer_move_waiting(stopped)
    assert not reruns.newer_move_waiting(SimpleNamespace())  # an unknown layout reads as nothing waiting
    assert reruns.newer_move_waiting(_ctx(RerunData()))      # a full rerun the user made


def test_a_user_move_coalesced_with_a_pending_poll_still_counts():
    ctx = _ctx(RerunData(fragment_id_queue=["explorer"], is_auto_rerun=True), RerunData(fragment_id_queue=["explorer"]))
    assert reruns.newer_move_waiting(ctx)


def test_in_fragment_run():
    assert reruns.in_fragment_run(_ctx())
    assert not reruns.in_fragment_run(_ctx(fragments=()))
    assert not reruns.in_fragment_run(SimpleNamespace())


@pytest.mark.parametrize("fragments, pending, gives_way", [
    (("explorer",), [RerunData(fragment_id_queue=["explorer"])], True),
    (("explorer",), [], False),
    ((), [RerunData()], False),  # a full page run always runs to its end
    (("explorer",), [RerunData(fragment_id_queue=["explorer"], is_auto_rerun=True)], False),
])
def test_give_way_reruns_the_fragment_only_for_a_waiting_user_move(monkeypatch, fragments, pending, gives_way):
    import streamlit.runtime.scriptrunner_utils.script_run_context as run_context
    ctx = _ctx(*pending, fragments=fragments)
    monkeypatch.setattr(run_context, "get_script_run_ctx", lambda *a, **k: ctx)
    calls = []
    monkeypatch.setattr(reruns.st, "rerun", lambda **kw: calls.append(kw))
    reruns.give_way()
    assert calls == ([{"scope": "fragment"}] if gives_way else [])
