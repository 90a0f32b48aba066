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


def test_a_failing_compile_leaves_the_eager_forward(zoo, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("inductor exploded")
    monkeypatch.setattr(compiled_mod.torch, "compile", broken)
    monkeypatch.setattr(compiled_mod, "compiler_missing", lambda: None)
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=16, compile=True, device="cpu")
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
