"""The compiled evaluator forward (an AOTInductor package built in a child process, loaded by this one): equal to a
plain forward pass, padded chunks, no trace in this process, the package cache, and every fallback to eager."""
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


@pytest.fixture(autouse=True)
def compile_cache(tmp_path_factory, monkeypatch):
    """One package cache for this module's tests (the first compile builds, the others load)."""
    path = tmp_path_factory.getbasetemp() / "compiled-packages"
    monkeypatch.setenv("SAMMERGE_COMPILE_CACHE", str(path))
    return path


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
    """Every torch.fx trace and every torch.compile call in this process."""

    def __init__(self, monkeypatch):
        import torch.fx._symbolic_trace as fx_trace
        self.traces, self.compiles = [], []
        real_trace, real_compile = fx_trace.Tracer.trace, torch.compile

        def trace(tracer, *args, **kwargs):
            self.traces.append(type(tracer).__name__)
            return real_trace(tracer, *args, **kwargs)

        def compile_(*args, **kwargs):
            self.compiles.append(args)
            return real_compile(*args, **kwargs)
        monkeypatch.setattr(fx_trace.Tracer, "trace", trace)
        monkeypatch.setattr(torch, "compile", compile_)


@pytest.mark.skipif(compiled_mod.compiler_missing() is not None, reason="no C++ compiler for inductor")
def test_the_server_process_never_traces_and_reuses_the_package(zoo, monkeypatch, compile_cache):
    """Tracing patches nn.Module.__call__ for the whole process (a forward in another thread then fails): the package
    is built in a child process, and this process only loads it — not one fx trace, no torch.compile. A second
    evaluator of the same encoder and shapes finds it in the cache (no child process)."""
    log = TraceLog(monkeypatch)
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=12, chunk_size=24, compile=True, device="cpu", workers=2)
    params = merged(zoo, 0.4)
    ev.features(params)
    assert ev.compiled.wait(600), ev.compiled.status
    assert log.traces == [] and log.compiles == []
    assert ev.compiled.package.parent == compile_cache and ev.compiled.package.suffix == ".pt2"
    assert 0 < ev.compiled.load_s <= ev.compiled.compile_s
    torch.testing.assert_close(ev.features(params), plain_forward(zoo, params, ev.images), rtol=1e-4, atol=1e-5)
    assert ev.compiled.calls == 1
    again = Evaluator.from_zoo(zoo, split="val", n_per_task=12, chunk_size=24, compile=True, device="cpu", workers=2)
    again.compiled.warm_up = None  # no child: only the cache can answer
    again.features(params)
    assert again.compiled.wait(60), again.compiled.status
    assert again.compiled.package == ev.compiled.package and log.traces == []
    torch.testing.assert_close(again.features(params), plain_forward(zoo, params, ev.images), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(compiled_mod.compiler_missing() is not None, reason="no C++ compiler for inductor")
def test_a_damaged_package_is_removed_and_the_forward_stays_eager(zoo, compile_cache):
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=10, chunk_size=16, compile=True, device="cpu")
    params = merged(zoo, 0.4)
    key = compiled_mod.package_key(ev.encoder, params, ev.images[:16], torch.get_num_threads())
    damaged = compile_cache / f"{key}.pt2"
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(b"not a package")
    ev.compiled.warm_up = None
    ev.features(params)
    assert ev.compiled.wait(60) is False
    assert ev.compiled.status.startswith("failed: RuntimeError: compiled package") and "removed" in ev.compiled.status
    assert not damaged.exists() and ev.compiled.calls == 0
    torch.testing.assert_close(ev.features(params), plain_forward(zoo, params, ev.images), rtol=1e-4, atol=1e-5)


def test_a_failing_warm_up_names_the_problem_and_stays_eager(zoo, tmp_path, monkeypatch):
    monkeypatch.setattr(compiled_mod, "compiler_missing", lambda: None)
    monkeypatch.setenv("SAMMERGE_COMPILE_CACHE", str(tmp_path / "empty"))  # nothing to load: the child must build
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=8, compile=True, device="cpu")
    ev.compiled.warm_up = compiled_mod.warm_up_from_zoo(tmp_path / "no-such-zoo")
    params = merged(zoo, 0.4)
    ev.features(params)
    assert ev.compiled.wait(120) is False
    assert ev.compiled.status.startswith("failed: RuntimeError: warm-up compile: warm_compile: "), ev.compiled.status
    assert "no-such-zoo" in ev.compiled.status
    assert ev.compiled.calls == 0
    torch.testing.assert_close(ev.features(params), plain_forward(zoo, params, ev.images), rtol=1e-4, atol=1e-5)


def test_a_failing_compile_leaves_the_eager_forward(zoo, monkeypatch, tmp_path):
    def broken(sample, threads, path):
        raise RuntimeError("inductor exploded")
    monkeypatch.setattr(compiled_mod, "compiler_missing", lambda: None)
    monkeypatch.setenv("SAMMERGE_COMPILE_CACHE", str(tmp_path / "empty"))
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=16, compile=True, device="cpu")
    ev.compiled.warm_up = broken
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
