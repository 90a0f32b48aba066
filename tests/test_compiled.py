"""The compiled evaluator forward: equal to a plain forward pass, padded chunks, and every fallback to eager."""
from __future__ import annotations

import pytest
import torch

from sammerge.evaluation import compiled as compiled_mod
from sammerge.evaluation import evaluator as evaluator_mod
from sammerge.evaluation.evaluator import Evaluator
from sammerge.merging import MergeSpec, merge_zoo
from sammerge.zoo import open_zoo


@pytest.fixture(scope="module")
def zoo(tiny_zoo):
    return open_zoo(tiny_zoo)


def plain_forward(zoo, params, images):
    """Reference: a fresh module with load_state_dict, one eager forward."""
    encoder = zoo.create_encoder()
    encoder.load_state_dict(params)
    with torch.no_grad():
        return encoder.eval()(images)


def merged(zoo, lam):
    spec = MergeSpec.default_for_zoo(zoo).with_params(**{"lambda": lam})
    return merge_zoo(zoo, spec, zoo.task_vector)


@pytest.mark.skipif(compiled_mod.compiler_missing() is not None, reason="no C++ compiler for inductor")
def test_compiled_forward_equals_a_plain_forward_pass_on_padded_chunks(zoo):
    # 3 tasks x 20 images in chunks of 32 on 2 worker threads: the second chunk is padded with zeros, padding dropped
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=20, chunk_size=32, compile=True, device="cpu", workers=2)
    assert len(ev.images) % 32 != 0
    first = ev.evaluate(merged(zoo, 0.3))  # eager; starts the background compile
    assert ev.compiled.calls == 0
    assert ev.compiled.wait(600), ev.compiled.status
    for lam in (0.3, 0.7):
        params = merged(zoo, lam)
        feats = ev.features(params)
        ref = plain_forward(zoo, params, ev.images)
        assert feats.shape == ref.shape
        torch.testing.assert_close(feats, ref, rtol=1e-4, atol=1e-5)
    assert ev.compiled.calls == 2  # both answered by the compiled graph
    again = ev.evaluate(merged(zoo, 0.3), key="fresh")  # same merge, now compiled: same accuracy
    assert {t: r.accuracy for t, r in again.items()} == {t: r.accuracy for t, r in first.items()}
    # another parameter set (an extra tensor) would need a new graph: the eager path answers, correctly
    extra = dict(merged(zoo, 0.5), **{"not_a_weight": torch.zeros(1)})
    assert ev.compiled(extra, ev.images) is None


class TraceLog:
    """Every torch.fx trace in this process (AOT autograd's make_fx among them), and whether it ran inside the
    compiled forward's ``exclusive()``."""

    def __init__(self, monkeypatch):
        import contextlib
        import torch.fx._symbolic_trace as fx_trace
        self.traces, self.inside = [], False
        real = fx_trace.Tracer.trace

        def trace(tracer, *args, **kwargs):
            self.traces.append(self.inside)
            return real(tracer, *args, **kwargs)
        monkeypatch.setattr(fx_trace.Tracer, "trace", trace)

        @contextlib.contextmanager
        def exclusive():
            self.inside = True
            try:
                yield
            finally:
                self.inside = False
        self.exclusive = exclusive


@pytest.mark.skipif(compiled_mod.compiler_missing() is not None, reason="no C++ compiler for inductor")
def test_the_server_process_never_traces_beside_its_forwards(zoo, monkeypatch, tmp_path):
    """Tracing patches nn.Module.__call__ for the whole process (a forward in another thread then fails): the cold
    compile runs in a child process, and this process compiles from its caches without a single fx trace."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # cold: nothing compiled before
    log = TraceLog(monkeypatch)
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=12, chunk_size=24, compile=True, device="cpu", workers=2)
    ev.compiled.exclusive = log.exclusive
    params = merged(zoo, 0.4)
    ev.features(params)
    assert ev.compiled.wait(600), ev.compiled.status
    assert log.traces == []
    assert 0 < ev.compiled.exclusive_s <= ev.compiled.compile_s
    torch.testing.assert_close(ev.features(params), plain_forward(zoo, params, ev.images), rtol=1e-4, atol=1e-5)
    assert ev.compiled.calls == 1


@pytest.mark.skipif(compiled_mod.compiler_missing() is not None, reason="no C++ compiler for inductor")
def test_without_a_warm_up_every_trace_is_inside_exclusive(zoo, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    log = TraceLog(monkeypatch)
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=10, chunk_size=16, compile=True, device="cpu")
    ev.compiled.warm_up, ev.compiled.exclusive = None, log.exclusive
    ev.features(merged(zoo, 0.4))
    assert ev.compiled.wait(600), ev.compiled.status
    assert log.traces and all(log.traces)  # it traced (cold), and only while nothing else could run


def test_a_failing_warm_up_names_the_problem_and_stays_eager(zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(compiled_mod, "compiler_missing", lambda: None)
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=8, compile=True, device="cpu")
    ev.compiled.warm_up = compiled_mod.warm_up_from_zoo(tmp_path / "no-such-zoo")
    params = merged(zoo, 0.4)
    ev.features(params)
    assert ev.compiled.wait(120) is False
    assert ev.compiled.status.startswith("failed: RuntimeError: warm-up compile: warm_compile: "), ev.compiled.status
    assert "no-such-zoo" in ev.compiled.status
    assert ev.compiled.calls == 0
    torch.testing.assert_close(ev.features(params), plain_forward(zoo, params, ev.images), rtol=1e-4, atol=1e-5)


def test_a_failing_compile_leaves_the_eager_forward(zoo, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("inductor exploded")
    monkeypatch.setattr(compiled_mod.torch, "compile", broken)
    monkeypatch.setattr(compiled_mod, "compiler_missing", lambda: None)
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=16, compile=True, device="cpu")
    ev.compiled.warm_up = None  # the child process would compile with the real torch.compile
    params = merged(zoo, 0.4)
    ev.features(params)
    assert ev.compiled.wait(60) is False
    assert ev.compiled.status.startswith("failed: RuntimeError: inductor exploded")
    torch.testing.assert_close(ev.features(params), plain_forward(zoo, params, ev.images), rtol=1e-4, atol=1e-5)


def test_no_compile_without_a_compiler_or_for_a_slow_encoder(zoo, monkeypatch):
    monkeypatch.setattr(compiled_mod.shutil, "which", lambda name: None)
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=16, compile=True, device="cpu")
    ev.features(merged(zoo, 0.4))
    assert ev.compiled.status.startswith("off: no C++ compiler")
    monkeypatch.undo()
    monkeypatch.setattr(evaluator_mod, "COMPILE_MAX_EAGER_S", 0.0)
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=16, compile=True, device="cpu")
    ev.features(merged(zoo, 0.4))
    assert ev.compiled.status.startswith("off: one eager pass took over")


def test_compile_is_off_by_default_and_for_linearized_zoos(zoo, linear_zoo):
    assert Evaluator.from_zoo(zoo, split="val", n_per_task=8).compiled is None
    assert Evaluator.from_zoo(linear_zoo, split="val", n_per_task=8, compile=True).compiled is None
