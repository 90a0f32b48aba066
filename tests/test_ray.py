"""The Ray backend on a local Ray (2 CPUs): same bytes as the local build, retries, resume, sweeps fan out."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'sammerge[ray]'); Ray backend untested")

from sammerge.errors import SammergeError  # noqa: E402
from sammerge.jobs import Job, JobCancelled, list_records, run_graph  # noqa: E402
from sammerge.training.build import build_zoo, stage_dir  # noqa: E402
from sammerge.models.presets import get_preset  # noqa: E402
from sammerge.zoo import open_zoo  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    # the test's own job functions travel by value (a worker cannot import this test module)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def fail_once(ctx, inp):
    """Fails on its first attempt (leaves a marker), succeeds on the next: a flaky node."""
    marker = ctx.root / "attempted"
    if not marker.exists():
        marker.write_text("1")
        raise RuntimeError("flaky worker")
    ctx.path("out.txt").write_text("ok")
    return {"pid": ctx.record.pid}


def always_fails(ctx, inp):
    raise RuntimeError("broken for good")


def test_tiny_build_on_ray_equals_the_local_build(tmp_path, smoke_zoo):
    zoo = build_zoo(get_preset("tiny"), tmp_path / "zoo", backend="ray", threads=1)
    assert zoo.checkpoint_hashes() == open_zoo(smoke_zoo).checkpoint_hashes()
    records = list_records(zoo.path)
    assert len(records) == 19 and {r.backend for r in records} == {"ray"}
    assert {r.status for r in records} == {"done"}
    for a, b in zip(zoo.manifest.checkpoints, open_zoo(smoke_zoo).manifest.checkpoints):
        assert (a.accuracy, a.pretrained_accuracy, a.final_train_loss) == \
               (b.accuracy, b.pretrained_accuracy, b.final_train_loss)


def test_a_job_that_fails_once_is_retried(tmp_path):
    job = Job("demo", "flaky", fail_once, {"n": 1}, outputs=("out.txt",), max_retries=1)
    records = run_graph([job], tmp_path, backend="ray")
    rec = records[job.id]
    assert rec.status == "done" and rec.attempts == 2 and rec.runs == 1 and rec.backend == "ray"
    assert (tmp_path / "out.txt").read_text() == "ok"
    bad = Job("demo", "broken", always_fails, {}, max_retries=1)
    with pytest.raises(SammergeError, match="job 'broken' failed.*broken for good"):
        run_graph([bad], tmp_path, backend="ray")
    assert [r.attempts for r in list_records(tmp_path) if r.name == "broken"] == [2]


def test_interrupted_build_resumes_on_ray(tmp_path, smoke_zoo):
    """Stopped locally after the first task; resumed on Ray: finished jobs are not redone (their records say
    local, one run), the rest run on Ray, and the zoo equals the one-shot build."""
    out = tmp_path / "zoo"
    cancel = threading.Event()
    with pytest.raises(JobCancelled):
        build_zoo(get_preset("tiny"), out, threads=1, cancel_event=cancel,
                  progress=lambda d, t, s="": cancel.set() if "latin_upper" in s else None)
    done_before = {r.name: r.started for r in list_records(stage_dir(out)) if r.status == "done"}
    assert "fine-tune digits/sam" in done_before
    zoo = build_zoo(get_preset("tiny"), out, backend="ray", threads=1)
    assert zoo.checkpoint_hashes() == open_zoo(smoke_zoo).checkpoint_hashes()
    after = {r.name: r for r in list_records(out)}
    for name, started in done_before.items():
        assert after[name].backend == "local" and after[name].started == started and after[name].runs == 1
    assert {r.backend for n, r in after.items() if n not in done_before} == {"ray"}


def test_sweep_fans_out_on_ray_and_matches_local(tiny_zoo, tmp_path):
    import shutil

    from sammerge.jobs.sweeps import run_sweeps, sweeps_dir
    from sammerge.merging import MergeSpec

    results = {}
    for backend in ("local", "ray"):
        path = tmp_path / backend
        shutil.copytree(tiny_zoo, path, ignore=shutil.ignore_patterns("analysis"))  # no caches of other tests
        zoo = open_zoo(path)
        specs = [MergeSpec.for_zoo(zoo, m, None, v) for m in ("task_arithmetic", "ties") for v in zoo.variants]
        results[backend] = run_sweeps(zoo, specs, backend=backend, chunk_size=6)
        records = list_records(sweeps_dir(zoo))
        assert len(records) == 2 * (4 + 5) and {r.backend for r in records} == {backend}
    assert results["local"].keys() == results["ray"].keys()
    for key, local in results["local"].items():
        remote = results["ray"][key]
        assert (remote.lambdas, remote.val_mean, remote.val_per_task, remote.best_lambda) == \
               (local.lambdas, local.val_mean, local.val_per_task, local.best_lambda)


def test_cancel_on_ray_then_resume_locally(tmp_path, smoke_zoo):
    out = tmp_path / "zoo"
    cancel = threading.Event()
    with pytest.raises(JobCancelled):
        build_zoo(get_preset("tiny"), out, backend="ray", threads=1, cancel_event=cancel,
                  progress=lambda d, t, s="": cancel.set() if "fine-tuning" in s else None)
    before = {r.name: r for r in list_records(stage_dir(out))}
    assert before["pretrain θ0"].status == "done" and "cancelled" in {r.status for r in before.values()}
    assert len(before) < 19 and not out.exists()
    zoo = build_zoo(get_preset("tiny"), out, threads=1)
    assert zoo.checkpoint_hashes() == open_zoo(smoke_zoo).checkpoint_hashes()
    after = {r.name: r for r in list_records(out)}
    assert after["pretrain θ0"].backend == "ray" and after["pretrain θ0"].runs == 1


def test_planner_groups_on_ray_equal_the_local_ones(tmp_path, tiny_zoo):
    import shutil

    from sammerge.planner.compat import measure_groups, pairs, planner_dir
    here, there = (shutil.copytree(tiny_zoo, tmp_path / name, ignore=shutil.ignore_patterns("analysis"))
                   for name in ("local", "ray"))
    local_zoo, ray_zoo = open_zoo(here), open_zoo(there)
    groups = pairs(local_zoo.tasks)
    local = measure_groups(local_zoo, "plain", groups, ["task_arithmetic"])
    on_ray = measure_groups(ray_zoo, "plain", groups, ["task_arithmetic"], backend="ray")
    assert on_ray == local and len(on_ray) == len(groups) + len(local_zoo.tasks)
    records = list_records(planner_dir(ray_zoo))
    assert len(records) == len(groups) + 1 and {r.backend for r in records} == {"ray"}
    assert {r.status for r in records} == {"done"}
