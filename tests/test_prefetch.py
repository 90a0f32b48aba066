"""Background prefetch of the explorer: the next slider steps are evaluated while the user looks."""
from __future__ import annotations

import pytest

from sammerge.evaluation.evaluator import Evaluator
from sammerge.explorer.service import Explorer
from sammerge.merging import LAMBDA, merge_zoo
from sammerge.zoo import open_zoo


@pytest.fixture()
def explorer(tiny_zoo):
    return Explorer(open_zoo(tiny_zoo), n_per_task=64)


def test_neighbours_are_the_next_slider_steps_within_range(explorer):
    spec = explorer.default_spec().with_params(**{LAMBDA: 0.3})
    assert sorted(n.params[LAMBDA] for n in explorer.neighbours(spec, steps=2)) == pytest.approx([0.2, 0.25, 0.35, 0.4])
    lam = next(p for p in spec.spec.global_params if p.name == LAMBDA)
    hi = lam.slider_range[1]
    top = spec.with_params(**{LAMBDA: hi})
    assert [n.params[LAMBDA] for n in explorer.neighbours(top)] == pytest.approx([hi - lam.step])
    assert explorer.neighbours(explorer.default_spec().with_method("model_stock")) == []


def test_prefetch_fills_the_cache_with_correct_results(explorer, tiny_zoo):
    spec = explorer.default_spec()
    nxt = explorer.neighbours(spec)
    assert not any(explorer.is_cached(s) for n in nxt for s in explorer.twins(n).values())
    explorer.prefetch(nxt)
    assert explorer.wait_prefetched(timeout=120)
    assert all(explorer.is_cached(s) for n in nxt for s in explorer.twins(n).values())
    # the prefetched numbers are those of an independent evaluation of the same merge
    zoo = open_zoo(tiny_zoo)
    ref = Evaluator.from_zoo(zoo, split="val", n_per_task=64, seed=0)
    for n in nxt:
        got = explorer.evaluate(n)
        want = ref.evaluate(merge_zoo(zoo, n))
        assert {t: r.accuracy for t, r in got.items()} == {t: r.accuracy for t, r in want.items()}


def test_a_newer_request_replaces_the_older_and_the_worker_ends_when_idle(explorer):
    explorer.background.idle_exit_s = 0.05
    spec = explorer.default_spec()
    far = spec.with_params(**{LAMBDA: 0.9})
    explorer.prefetch([spec.with_params(**{LAMBDA: v}) for v in (0.1, 0.15, 0.2, 0.25)])
    explorer.prefetch([far])  # replaces what the first call has not started
    assert explorer.wait_prefetched(timeout=120)
    assert explorer.is_cached(far)
    assert sum(explorer.is_cached(spec.with_params(**{LAMBDA: v})) for v in (0.1, 0.15, 0.2, 0.25)) <= 1
    thread = explorer.background.thread
    if thread is not None:
        thread.join(timeout=30)
    assert explorer.background.thread is None
    explorer.prefetch([spec])  # and starts again on the next request
    assert explorer.wait_prefetched(timeout=120) and explorer.is_cached(spec)


def test_explorer_sweeps_are_kept_on_disk_and_found_by_a_new_server(tiny_zoo_copy):
    import shutil

    from sammerge.jobs.sweeps import load_cached_sweep

    shutil.rmtree(tiny_zoo_copy / "analysis", ignore_errors=True)
    zoo = open_zoo(tiny_zoo_copy)
    first = Explorer(zoo)  # the explorer's own evaluation settings: what `sammerge sweep` caches
    spec = first.default_spec()
    assert first.cached_sweeps(spec) is None and load_cached_sweep(zoo, spec) is None
    computed = first.sweeps(spec)
    on_disk = load_cached_sweep(zoo, spec)
    assert on_disk is not None and on_disk.val_mean == pytest.approx(computed["current"].val_mean)
    again = Explorer(open_zoo(tiny_zoo_copy)).cached_sweeps(spec)  # a new server process, no computation
    assert again is not None and again["current"].best_lambda == computed["current"].best_lambda


def test_a_script_that_exits_while_the_background_thread_evaluates_ends_cleanly(tiny_zoo):
    """A daemon thread still inside torch at interpreter exit aborted the process ("terminate called without an
    active exception", 2 of 3 runs before the fix); at exit explorers drop queued work and finish the running one."""
    import subprocess
    import sys

    script = (
        "from sammerge.zoo import open_zoo\n"
        "from sammerge.explorer.service import Explorer\n"
        f"ex = Explorer(open_zoo({str(tiny_zoo)!r}))\n"
        "ex.prefetch(ex.neighbours(ex.default_spec(), steps=4))\n"
        "print('exiting', flush=True)\n")
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and "exiting" in run.stdout, run.stderr[-2000:]
        assert "terminate called" not in run.stderr, run.stderr[-2000:]


def test_light_prefetch_evaluates_the_neighbours_own_merges_only(explorer):
    explorer.prefetch_twins = False
    spec = explorer.default_spec()
    nxt = explorer.neighbours(spec)
    explorer.prefetch(nxt)
    assert explorer.wait_prefetched(timeout=120)
    assert all(explorer.is_cached(n) for n in nxt)
    others = [t for n in nxt for t in explorer.twins(n).values() if t.key() != n.key()]
    assert others and not any(explorer.is_cached(t) for t in others)


@pytest.mark.parametrize("env, cores, mode", [(None, 2, "light"), (None, 8, "full"), ("0", 8, "off"), ("off", 2, "off"),
                                              ("1", 2, "full"), ("light", 8, "light"), ("FULL", 2, "full"),
                                              ("bogus", 2, "light")])
def test_prefetch_mode_from_the_environment_and_the_core_count(monkeypatch, env, cores, mode):
    from sammerge.webapp import ui
    if env is None:
        monkeypatch.delenv("SAMMERGE_PREFETCH", raising=False)
    else:
        monkeypatch.setenv("SAMMERGE_PREFETCH", env)
    monkeypatch.setattr(ui.os, "cpu_count", lambda: cores)
    assert ui.prefetch_by_default() == mode
