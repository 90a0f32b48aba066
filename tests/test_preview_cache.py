"""The linearized zoo's instant preview on disk: same logits as a fresh computation and as an explicit
f(θ0) + J(θ − θ0) forward of the merged parameters; keyed by the zoo's hashes; one background job, cancellable,
never a partial file."""
from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch
from torch.func import functional_call, jvp

from sammerge.evaluation import preview_cache as pc
from sammerge.explorer import instant_preview as ip
from sammerge.evaluation.evaluator import Evaluator
from sammerge.evaluation.linear_preview import LinearPreview
from sammerge.evaluation.subset import EvalSubset
from sammerge.explorer.service import Explorer
from sammerge.io import save_state_dict, sha256_file
from sammerge.jobs.runner import JobCancelled
from sammerge.jobs.worker import Worker
from sammerge.merging import LAMBDA, MergeSpec, merge_zoo
from sammerge.merging.spec import task_id
from sammerge.zoo import open_zoo

SUBSET = EvalSubset("val", 24, 0)


@pytest.fixture
def lin_copy(linear_zoo, tmp_path):
    """A private copy of the linearized tiny zoo, without any cache other tests wrote."""
    dest = tmp_path / "lin_copy"
    shutil.copytree(linear_zoo.path, dest, ignore=shutil.ignore_patterns("analysis"))
    return open_zoo(dest)


def cache_files(zoo) -> list[str]:
    """Every file (temp files included) the preview could have left in the zoo's cache folder."""
    folder = zoo.path / "analysis" / "cache"
    return sorted(p.name for p in folder.iterdir() if pc.KIND in p.name) if folder.is_dir() else []


def reference_logits(zoo, spec, subset) -> dict[str, torch.Tensor]:
    """Per-task logits of the merged linearized model: heads(f(θ0) + J f(θ0)(θ − θ0)), with θ = merge_zoo(spec) and
    one explicit torch.func.jvp of a fresh encoder per task's images (no preview code involved)."""
    theta0, theta = zoo.pretrained(), merge_zoo(zoo, spec)
    encoder = zoo.create_encoder().eval()
    keys = [k for k, v in theta0.items() if v.is_floating_point()]
    fixed = {k: v for k, v in theta0.items() if not v.is_floating_point()}
    out = {}
    for task in zoo.tasks:
        x = zoo.split(task, subset.split).subset(subset.n_per_task, subset.seed).images

        def f(*tensors):
            return functional_call(encoder, {**fixed, **dict(zip(keys, tensors))}, (x,))
        with torch.no_grad():
            f0, jdelta = jvp(f, tuple(theta0[k] for k in keys), tuple(theta[k] - theta0[k] for k in keys))
            out[task] = zoo.heads[task](f0 + jdelta)
    return out


def preview_logits(zoo, tensors: pc.PreviewTensors, spec, subset) -> dict[str, torch.Tensor]:
    """Per-task logits from stored f(θ0), J τ_t: task arithmetic c_t = λ (no direction is computed here)."""
    ev = Evaluator.from_zoo(zoo, split=subset.split, n_per_task=subset.n_per_task, seed=subset.seed, device="cpu")
    preview = LinearPreview(ev)
    preview.preload(tensors.base, tensors.jvps)

    def never():
        raise AssertionError("a precomputed J τ was recomputed")
    feats = preview.features([(t.id, never, spec.params[LAMBDA]) for t in spec.tasks])
    assert preview.jvp_count == 0
    with torch.no_grad():
        return {t: ev.heads[t](feats[ev.slices[t]]) for t in zoo.tasks}


def test_cached_preview_gives_the_logits_of_a_fresh_one_and_of_the_merged_linearized_model(lin_copy):
    zoo = lin_copy
    assert cache_files(zoo) == []
    path = pc.precompute_preview(zoo, SUBSET)
    assert path.is_file() and cache_files(zoo) == [path.name]
    stored, fresh = pc.load_preview(zoo, SUBSET), pc.compute_preview(zoo, SUBSET, device="cpu")
    assert stored is not None and set(stored.jvps) == {task_id(t, v) for t in zoo.tasks for v in zoo.variants}
    variants = {t: zoo.variants[i % len(zoo.variants)] for i, t in enumerate(zoo.tasks)}
    for lam in (0.2, 0.7, 1.3):
        spec = MergeSpec.for_zoo(zoo, "task_arithmetic", {LAMBDA: lam}, variants)
        ref = reference_logits(zoo, spec, SUBSET)
        from_disk, from_fresh = preview_logits(zoo, stored, spec, SUBSET), preview_logits(zoo, fresh, spec, SUBSET)
        for t in zoo.tasks:
            torch.testing.assert_close(from_disk[t], from_fresh[t], rtol=0, atol=1e-6)
            torch.testing.assert_close(from_disk[t], ref[t], rtol=1e-4, atol=1e-4)
            assert torch.equal(from_disk[t].argmax(1), ref[t].argmax(1)), (lam, t)
    # reused, not recomputed: the same file, untouched
    mtime = path.stat().st_mtime_ns
    assert pc.precompute_preview(zoo, SUBSET) == path and path.stat().st_mtime_ns == mtime


def test_changing_a_checkpoint_invalidates_the_cache(lin_copy):
    zoo = lin_copy
    old_path = pc.precompute_preview(zoo, SUBSET)
    old = pc.load_preview(zoo, SUBSET)
    task, variant = zoo.tasks[0], zoo.variants[-1]
    record = zoo.manifest.checkpoint(task, variant)
    theta = {k: v.clone() for k, v in zoo.finetuned(task, variant).items()}
    name = next(k for k, v in theta.items() if v.is_floating_point() and v.ndim > 1)
    theta[name] += 0.05 * torch.randn(theta[name].shape, generator=torch.Generator().manual_seed(0))
    save_state_dict(theta, zoo.path / record.file)
    manifest = json.loads((zoo.path / "zoo.json").read_text())
    for entry in manifest["checkpoints"]:
        if entry["file"] == record.file:
            entry["sha256"] = sha256_file(zoo.path / record.file)
    (zoo.path / "zoo.json").write_text(json.dumps(manifest))
    changed = open_zoo(zoo.path)
    assert pc.preview_path(changed, SUBSET) != old_path
    assert pc.load_preview(changed, SUBSET) is None
    # an old entry copied under the new name is not read either (its key is inside the file)
    shutil.copy(old_path, pc.preview_path(changed, SUBSET))
    assert pc.load_preview(changed, SUBSET) is None
    pc.precompute_preview(changed, SUBSET)
    new = pc.load_preview(changed, SUBSET)
    assert new is not None
    assert not torch.allclose(new.jvps[task_id(task, variant)], old.jvps[task_id(task, variant)], atol=1e-4)
    torch.testing.assert_close(new.base, old.base, rtol=0, atol=0)
    other = task_id(zoo.tasks[1], variant)
    torch.testing.assert_close(new.jvps[other], old.jvps[other], rtol=0, atol=0)


class Gate:
    """Blocks the preview's JVPs after ``after`` of them until released (a job paused midway, deterministically)."""

    def __init__(self, monkeypatch, after: int = 1, fail: bool = False) -> None:
        self.reached, self.go, self.calls, self.after, self.fail = threading.Event(), threading.Event(), 0, after, fail
        real = LinearPreview.jvp

        def gated(preview, key, direction):
            if self.calls == self.after:
                self.reached.set()
                assert self.go.wait(120)
                if self.fail:
                    raise RuntimeError("disk on fire")
            self.calls += 1
            return real(preview, key, direction)
        monkeypatch.setattr(LinearPreview, "jvp", gated)


def test_a_cancelled_job_leaves_no_cache_file_and_can_be_started_again(lin_copy, monkeypatch):
    zoo, worker = lin_copy, Worker()
    gate = Gate(monkeypatch, after=1)
    task = ip.submit_preview_job(zoo, SUBSET, device="cpu", worker=worker)
    assert gate.reached.wait(120)
    assert task.status == "running" and 1 <= task.progress.done < task.progress.total  # midway
    task.cancel()
    gate.go.set()
    with pytest.raises(JobCancelled):
        task.wait(120)
    assert task.status == "cancelled" and cache_files(zoo) == [] and pc.load_preview(zoo, SUBSET) is None
    monkeypatch.undo()
    again = ip.submit_preview_job(zoo, SUBSET, device="cpu", worker=worker)
    assert again is not task
    again.wait(120)
    assert again.status == "done" and pc.load_preview(zoo, SUBSET) is not None


def test_a_failed_job_leaves_no_cache_file(lin_copy, monkeypatch):
    zoo, worker = lin_copy, Worker()
    gate = Gate(monkeypatch, after=2, fail=True)
    task = ip.submit_preview_job(zoo, SUBSET, device="cpu", worker=worker)
    assert gate.reached.wait(120)
    gate.go.set()
    with pytest.raises(RuntimeError, match="disk on fire"):
        task.wait(120)
    assert task.status == "failed" and "disk on fire" in task.error and cache_files(zoo) == []


def submit_again(zoo, worker):
    return ip.submit_preview_job(zoo, SUBSET, device="cpu", worker=worker)


def test_two_requests_start_one_job(lin_copy, monkeypatch):
    zoo, worker = lin_copy, Worker(max_workers=2)
    gate = Gate(monkeypatch, after=0)
    first = ip.submit_preview_job(zoo, SUBSET, device="cpu", worker=worker)
    assert gate.reached.wait(120)
    second = ip.submit_preview_job(open_zoo(zoo.path), SUBSET, device="cpu", worker=worker)
    assert second is first and len(worker.tasks()) == 1
    gate.go.set()
    first.wait(120)
    assert gate.calls == len(zoo.tasks) * len(zoo.variants)  # one JVP per checkpoint, computed once
    assert submit_again(zoo, worker) is first  # done, file on disk: nothing to do
    pc.preview_path(zoo, SUBSET).unlink()
    rerun = submit_again(zoo, worker)  # the file has gone: computed again
    assert rerun is not first
    rerun.wait(120)
    assert pc.load_preview(zoo, SUBSET) is not None
    # another subset is another piece of work
    other = ip.submit_preview_job(zoo, EvalSubset("val", 8, 1), device="cpu", worker=worker)
    assert other is not first
    other.wait(120)


def test_explorer_evaluates_exactly_until_the_preview_is_ready_then_loads_it(lin_copy, monkeypatch):
    zoo = lin_copy
    gate = Gate(monkeypatch, after=0)
    ex = Explorer(zoo, n_per_task=SUBSET.n_per_task)
    ex.prefetch_enabled = False
    assert gate.reached.wait(120)
    assert ex.preview is None and ex.instant.status == "running"
    assert "prepared in a background job" in ex.describe_evaluation()
    twin = Explorer(open_zoo(zoo.path), n_per_task=SUBSET.n_per_task)  # another session: the same job
    assert twin.instant.task is ex.instant.task
    spec = ex.default_spec().with_params(**{LAMBDA: 0.6})
    before = ex.evaluator.forward_count
    exact = ex.evaluate(spec)
    assert ex.evaluator.forward_count == before + 1  # a forward pass: evaluated exactly
    gate.go.set()
    assert ex.instant.wait(120) is not None and ex.instant.status == "ready"
    assert "instantly" in ex.describe_evaluation()
    moved = spec.with_params(**{LAMBDA: 0.9})
    before = ex.evaluator.forward_count
    got = ex.evaluate(moved)
    assert ex.evaluator.forward_count == before and ex.preview.jvp_count == 0  # answered by the preview
    want = Evaluator.from_zoo(zoo, split="val", n_per_task=SUBSET.n_per_task, seed=0).evaluate(merge_zoo(zoo, moved))
    for t in zoo.tasks:
        assert got[t].accuracy == want[t].accuracy and got[t].loss == pytest.approx(want[t].loss, abs=1e-5)
    assert set(exact) == set(zoo.tasks)
    # a later explorer (a restarted server) loads it from disk: no job
    later = Explorer(open_zoo(zoo.path), n_per_task=SUBSET.n_per_task)
    assert later.instant.task is None and later.preview is not None


def test_cli_precomputes_and_refuses_ordinary_zoos(lin_copy, tiny_zoo, capsys):
    from sammerge.cli import main

    assert main(["preview", str(lin_copy.path), "--n-per-task", "24", "--quiet"]) == 0
    assert pc.load_preview(lin_copy, SUBSET) is not None
    assert str(pc.preview_path(lin_copy, SUBSET)) in capsys.readouterr().out
    assert main(["preview", str(lin_copy.path), "--n-per-task", "24", "--quiet"]) == 0
    assert "stored, reused" in capsys.readouterr().out
    assert main(["preview", str(tiny_zoo), "--quiet"]) == 2
    assert "not a linearized zoo" in capsys.readouterr().err
    assert main(["preview", str(lin_copy.path), "--n-per-task", "0", "--threads", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--n-per-task" in err and "--threads" in err


def test_a_read_only_zoo_gets_the_preview_in_memory(lin_copy, monkeypatch):
    zoo = lin_copy

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(pc, "save_state_dict", refuse)
    with pytest.raises(Exception, match="cannot write the instant preview"):
        pc.precompute_preview(zoo, SUBSET, device="cpu")
    ex = Explorer(zoo, n_per_task=SUBSET.n_per_task)
    ex.prefetch_enabled = False
    assert ex.instant.wait(120) is not None and cache_files(zoo) == []
    spec = ex.default_spec().with_params(**{LAMBDA: 0.4})
    got = ex.evaluate(spec)
    assert ex.evaluator.forward_count == 0  # scored by the in-memory preview
    want = Evaluator.from_zoo(zoo, split="val", n_per_task=SUBSET.n_per_task, seed=0).evaluate(merge_zoo(zoo, spec))
    assert {t: r.accuracy for t, r in got.items()} == {t: r.accuracy for t, r in want.items()}


def test_the_benchmark_measures_cold_precompute_load_and_updates(lin_copy, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "linear_preview.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "linear_preview.py"), str(lin_copy.path),
                           "--updates", "3", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["updates_with_identical_accuracy"] == r["updates"] == 3 and r["jvps"] == 6
    assert r["precompute_cold_s"] > r["precompute_forward_and_jvps_s"] > 0 and r["load_ms"] > 0
    assert pc.load_preview(open_zoo(lin_copy.path), EvalSubset()) is not None


def test_the_job_runs_beside_exact_linearized_evaluations_in_another_thread(lin_copy):
    """Forward-mode AD has one dual level per process: a job using torch.func.jvp breaks (and is broken by) the
    explorer's exact evaluation of the linearized model (also a jvp) running at the same time in another thread."""
    zoo = lin_copy
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=SUBSET.n_per_task, seed=0, device="cpu")
    merged = merge_zoo(zoo, MergeSpec.for_zoo(zoo, "task_arithmetic", {LAMBDA: 0.5}, zoo.variants[-1]))
    want = ev.evaluate(merged)
    stop, errors, results = threading.Event(), [], []

    def exact_loop():
        i = 0
        while not stop.is_set():
            i += 1
            try:
                results.append(ev.evaluate(merged, key=f"run {i}"))  # a new key: evaluated again
            except Exception as exc:  # noqa: BLE001 — recorded for the assertion
                errors.append(exc)
                return
    thread = threading.Thread(target=exact_loop)
    thread.start()
    try:
        task = ip.submit_preview_job(zoo, SUBSET, device="cpu", worker=Worker())
        try:
            task.wait(300)
        except Exception:  # noqa: BLE001 — the status below says what happened
            pass
    finally:
        stop.set()
        thread.join(120)
    assert task.status == "done", task.error
    assert errors == [] and results and all(r == want for r in results)
    assert pc.load_preview(zoo, SUBSET) is not None
