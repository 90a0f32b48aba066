"""The explorer's estimate-first path on a small timm ViT zoo: the estimate is a plain forward on the first k images of
the fixed subset with the Wilson interval of its counts; the background refinement gives exact evaluation."""
from __future__ import annotations

import statistics
import threading

import pytest
import torch

from import_fixtures import write_image_folders
from sammerge.evaluation.estimate import wilson_interval
from sammerge.evaluation.evaluator import Evaluator
from sammerge.explorer.exports import model_card
from sammerge.explorer.service import Explorer
from sammerge.merging import LAMBDA, merge_zoo

K = 5  # images per task of an estimate


@pytest.fixture(scope="module")
def vit_zoo(tmp_path_factory):
    from test_import_timm import TASKS, write_timm
    from sammerge.importing import import_zoo, load_import_spec

    root = tmp_path_factory.mktemp("vit_estimate")
    spec_path, _ = write_timm(root / "user")
    for i, task in enumerate(TASKS):  # 8 images per class and split instead of 3 (same files first)
        write_image_folders(root / "user" / "data" / task, per_class=8, seed=i)
    return import_zoo(load_import_spec(spec_path), root / "zoo")


@pytest.fixture
def gate(monkeypatch):
    """Holds the background refinement back until set, so that a test sees the estimate state for sure."""
    release = threading.Event()
    references = Explorer.references

    def gated(self):
        if threading.current_thread().name == "sammerge-prefetch":
            release.wait(300)
        return references(self)
    monkeypatch.setattr(Explorer, "references", gated)
    yield release
    release.set()


def plain_counts(zoo, state, images: dict) -> dict[str, int]:
    """Correct predictions per task by a fresh timm module with ``state`` loaded (no Evaluator, no functional_call)."""
    model = zoo.create_encoder()
    model.load_state_dict(state)
    out = {}
    with torch.no_grad():
        for task, (x, y) in images.items():
            out[task] = int((zoo.heads[task](model(x)).argmax(1) == y).sum())
    return out


def look_results(ex, spec):
    return ex.estimates.evaluate_many([spec])[0]


def subset(zoo, k: int | None = None) -> dict:
    """The explorer's fixed validation subset (256 per task, seed 0), each task's first ``k`` images."""
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=256, seed=0, device="cpu")
    return {t: (ev.images[ev.slices[t]][:k], ev.labels[ev.slices[t]][:k]) for t in ev.tasks}


def test_estimate_first_then_exact(vit_zoo, gate):
    zoo = vit_zoo
    ex = Explorer(zoo, estimate_n_per_task=K, latency_target_s=0.0)  # any exact evaluation counts as slow
    assert ex.images_per_task() == 24 and ex.estimate_size() == K
    assert ex.estimating() and ex.images_per_s > 0
    spec = ex.default_spec().with_params(**{LAMBDA: 0.7})
    merged = merge_zoo(zoo, spec)

    look = ex.first_look(spec)
    assert not look.exact and look.n_per_task == K
    counts = plain_counts(zoo, merged, subset(zoo, K))
    for t in spec.task_names:
        assert look.intervals[t] == wilson_interval(counts[t], K)
        assert look.intervals[t].low <= look.intervals[t].estimate <= look.intervals[t].high
    assert look.intervals["mean"] == wilson_interval(sum(counts.values()), K * len(counts))
    assert look.summary.mean == pytest.approx(statistics.mean(c / K for c in counts.values()))
    assert look.text().startswith(f"≈ {sum(counts.values()) / (K * len(counts)):.1%} [")
    assert f"({K} images/task, 95% CI)" in look.text()

    # the estimate comparison says what it is, down to the export
    cmp = ex.compare(spec, allow_estimate=True)
    assert not cmp.exact and cmp.n_per_task == K and "ESTIMATE" in cmp.evaluation
    assert cmp.results["current"] == look_results(ex, spec)
    rec = cmp.results_record()
    iv = cmp.intervals()["mean"]
    assert (rec["_mean"]["val_accuracy_ci95_low"], rec["_mean"]["val_accuracy_ci95_high"]) == pytest.approx(
        (iv.low, iv.high), abs=1e-6)
    assert all(rec[t]["val_n"] == K for t in spec.task_names)
    assert "ESTIMATE" in model_card(cmp, zoo) and "ESTIMATE" in ex.export_spec(spec, allow_estimate=True).notes
    assert ex.refining(spec) and not ex.is_exact_ready(spec)

    # the refinement, queued on the background thread: afterwards the numbers are exact
    gate.set()
    assert ex.wait_prefetched(timeout=300)
    assert ex.is_exact_ready(spec) and not ex.refining(spec)
    exact = ex.first_look(spec)
    assert exact.exact and exact.n_per_task == 24 and exact.text() == f"{exact.summary.mean:.1%}"
    full = plain_counts(zoo, merged, subset(zoo))
    assert {t: round(r.accuracy * r.n) for t, r in ex.evaluate(spec).items()} == full
    reference = Evaluator.from_zoo(zoo, split="val", n_per_task=256, seed=0, device="cpu").evaluate(merged)
    for t in spec.task_names:
        assert exact.intervals[t] == wilson_interval(full[t], 24)
        assert ex.evaluate(spec)[t].accuracy == reference[t].accuracy
        assert ex.evaluate(spec)[t].loss == pytest.approx(reference[t].loss, abs=1e-5)
    cmp = ex.compare(spec, allow_estimate=True)
    assert cmp.exact and cmp.n_per_task == 24 and "ESTIMATE" not in ex.export_spec(spec, allow_estimate=True).notes
    # the references are the fine-tuned models on their own task's images
    for t in zoo.tasks:
        ft = plain_counts(zoo, zoo.finetuned(t, "sam"), {t: subset(zoo)[t]})[t]
        assert round(cmp.individual["sam"][t].accuracy * 24) == ft


def test_exact_override_and_fast_zoos_skip_the_estimate(vit_zoo):
    slow = Explorer(vit_zoo, estimate_n_per_task=K, latency_target_s=0.0)
    spec = slow.default_spec()
    look = slow.first_look(spec, allow_estimate=False)  # the page's "always evaluate exactly"
    assert look.exact and look.n_per_task == 24 and not slow.is_estimated(spec)
    assert slow.compare(spec.with_params(**{LAMBDA: 0.4})).exact  # compare is exact unless asked

    fast = Explorer(vit_zoo, estimate_n_per_task=K, latency_target_s=1e9)  # every evaluation within the target
    assert not fast.estimating()
    assert fast.first_look(spec).exact and not fast.is_estimated(spec)
    assert fast.compare(spec, allow_estimate=True).exact

    whole = Explorer(vit_zoo, estimate_n_per_task=64, latency_target_s=0.0)  # k would cover every image
    assert not whole.estimating() and whole.first_look(spec).exact


def test_a_newer_refinement_replaces_the_older(vit_zoo, gate):
    ex = Explorer(vit_zoo, estimate_n_per_task=K, latency_target_s=0.0)
    first, second = (ex.default_spec().with_params(**{LAMBDA: v}) for v in (0.2, 0.9))
    assert not ex.first_look(first).exact
    assert not ex.first_look(second).exact  # replaces what the first refinement has not started
    gate.set()
    assert ex.wait_prefetched(timeout=300)
    assert ex.is_exact_ready(second) and not ex.is_cached(first)
    assert ex.first_look(second).exact
