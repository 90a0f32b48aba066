"""Background jobs: records, skip-when-finished, cancel, failure; resumable and extendable zoo builds; the
app's shared worker; sweeps cached by content; the jobs CLI."""
from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from sammerge.cli import main as cli_main
from sammerge.errors import SammergeError
from sammerge.jobs import (Job, JobCancelled, JobFailed, list_records, read_record, request_cancel, run_job,
                           run_local)
from sammerge.jobs.record import record_path
from sammerge.jobs.worker import Worker
from sammerge.training.build import build_zoo, stage_dir, zoo_jobs
from sammerge.models.presets import VariantSpec, get_preset
from sammerge.zoo import data_sha256, open_zoo


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- job functions (top level, as jobs must be) ---------------------------------------------------------------
def write_words(ctx, inp):
    for i in range(inp["steps"]):
        ctx.progress(i + 1, inp["steps"], "writing")
    ctx.path(inp["out"]).write_text(" ".join(inp["words"]))
    return {"n_words": len(inp["words"])}


def slow_steps(ctx, inp):
    for i in range(10_000):
        time.sleep(0.002)
        ctx.progress(i + 1, 10_000, "slow")
    return {}


def boom(ctx, inp):
    raise ValueError("disk on fire")


def test_job_record_outputs_and_skip(tmp_path):
    job = Job("demo", "write words", write_words, {"words": ["a", "b"], "steps": 3, "out": "w.txt"}, outputs=("w.txt",))
    rec = run_job(job, tmp_path)
    on_disk = json.loads(record_path(tmp_path, job.id).read_text())
    assert on_disk["status"] == "done" and on_disk["outputs"] == {"w.txt": _sha(tmp_path / "w.txt")}
    assert on_disk["metrics"] == {"n_words": 2} and on_disk["runs"] == 1 and on_disk["attempts"] == 1
    assert (tmp_path / "w.txt").read_text() == "a b" and rec.wall_time_s >= 0
    # finished and verified → skipped: the function does not run again
    again = run_job(job, tmp_path)
    assert again.runs == 1 and again.started == rec.started
    # an output that no longer matches its hash → the job runs again
    (tmp_path / "w.txt").write_text("tampered")
    third = run_job(job, tmp_path)
    assert third.runs == 2 and (tmp_path / "w.txt").read_text() == "a b"
    # different inputs → a different job id
    other = Job("demo", "write words", write_words, {"words": ["a"], "steps": 3, "out": "w.txt"}, outputs=("w.txt",))
    assert other.id != job.id


def test_job_failure_is_recorded(tmp_path):
    job = Job("demo", "explode", boom, {})
    with pytest.raises(ValueError):
        run_job(job, tmp_path)
    rec = read_record(record_path(tmp_path, job.id))
    assert rec.status == "failed" and rec.error == "ValueError: disk on fire" and rec.runs == 0
    with pytest.raises(JobFailed, match="job 'explode' failed: ValueError: disk on fire"):
        run_local([job], tmp_path)
    assert read_record(record_path(tmp_path, job.id)).attempts == 2


def test_cancel_flag_stops_a_running_job(tmp_path):
    job = Job("demo", "slow", slow_steps, {})
    threading.Timer(0.3, lambda: request_cancel(tmp_path, job.id)).start()
    with pytest.raises(JobCancelled):
        run_job(job, tmp_path)
    rec = read_record(record_path(tmp_path, job.id))
    assert rec.status == "cancelled" and 0 < rec.progress.done < 10_000


# -- zoo builds as job graphs -------------------------------------------------------------------------------
def _runs(root: Path) -> dict[str, tuple[int, str]]:
    return {r.name: (r.runs, r.started) for r in list_records(root)}


def test_interrupted_build_resumes_without_redoing_finished_jobs(tmp_path, smoke_zoo):
    recipe = get_preset("tiny")
    out = tmp_path / "zoo"
    cancel = threading.Event()

    def progress(done, total, stage=""):
        if "fine-tuning latin_upper" in stage:
            cancel.set()  # stop in the middle of the second task

    with pytest.raises(JobCancelled):
        build_zoo(recipe, out, progress=progress, cancel_event=cancel)
    assert not out.exists()  # nothing half-built where the zoo goes
    stage = stage_dir(out)
    before = {r.name: r for r in list_records(stage)}
    finished = {n for n, r in before.items() if r.status == "done"}
    assert {"pretrain θ0", "head digits", "fine-tune digits/plain", "fine-tune digits/sam"} <= finished
    assert before["fine-tune latin_upper/plain"].status == "cancelled"

    zoo = build_zoo(recipe, out)
    assert zoo.checkpoint_hashes() == open_zoo(smoke_zoo).checkpoint_hashes()  # same bytes as a one-shot build
    after = {r.name: r for r in list_records(out)}
    for name in finished:  # not redone: one run, same start time
        assert after[name].runs == 1 and after[name].started == before[name].started
    assert after["fine-tune latin_upper/plain"].attempts == 2 and after["fine-tune latin_upper/plain"].runs == 1
    assert not stage.exists()


def test_zoo_is_extended_with_a_task_and_a_variant(tmp_path, smoke_zoo):
    """Build 2 tasks × plain, then the full recipe (3 tasks × plain, SAM) into the same zoo: only the new jobs run,
    and the result equals the one-shot build byte for byte."""
    full = get_preset("tiny")
    small = full.model_copy(update={"tasks": full.tasks[:2], "variants": [VariantSpec(name="plain")]})
    out = tmp_path / "zoo"
    build_zoo(small, out)
    first = _runs(out)
    assert len(first) == 1 + 2 * 4  # pretrain; per task: head, θ0 evaluation, fine-tune, its evaluation
    zoo = build_zoo(full, out, overwrite=True)
    assert zoo.checkpoint_hashes() == open_zoo(smoke_zoo).checkpoint_hashes()
    second = _runs(out)
    assert {n: second[n] for n in first} == first  # every earlier job kept as it was
    assert len(second) == len(zoo_jobs(full, data_sha256(zoo.benchmark)))
    assert all(runs == 1 for runs, _ in second.values())


def test_failed_rebuild_keeps_the_previous_zoo(tmp_path, tiny_zoo, monkeypatch):
    import shutil

    import sammerge.training.train as train

    out = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, out)
    good = open_zoo(out).checkpoint_hashes()

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash during fine-tuning")

    monkeypatch.setattr(train, "finetune", crash)
    other = get_preset("tiny").model_copy(update={"seed": 5})
    with pytest.raises(SammergeError, match="fine-tune digits/plain.*simulated crash"):
        build_zoo(other, out, overwrite=True)
    assert open_zoo(out, verify=True).checkpoint_hashes() == good


# -- the shared worker ----------------------------------------------------------------------------------------
def test_worker_runs_one_job_per_key(tmp_path):
    worker = Worker()
    calls, release = [], threading.Event()

    def work(progress, cancel_event):
        calls.append(1)
        for i in range(50):
            progress(i, 50, "working")
            release.wait(0.01)
        return "result"

    a, created_a = worker.submit("k", work, "job", record_root=tmp_path, owner="session-1")
    b, created_b = worker.submit("k", work, "job", record_root=tmp_path, owner="session-2")
    assert a is b and created_a and not created_b
    assert a.wait(30) == "result" and calls == [1]
    rec = read_record(record_path(tmp_path, a.id))
    assert rec.status == "done" and rec.metrics["owner"] == "session-1"
    c, created = worker.submit("k", work, "job")
    assert c is a and not created  # a finished task is reused


def test_worker_cancel_and_retry(tmp_path):
    worker = Worker()

    def forever(progress, cancel_event):
        for i in range(100_000):
            progress(i, 100_000, "spinning")
            time.sleep(0.001)

    task, _ = worker.submit("spin", forever, "spin", record_root=tmp_path)
    time.sleep(0.1)
    task.cancel()
    with pytest.raises(JobCancelled):
        task.wait(30)
    assert task.status == "cancelled" and read_record(record_path(tmp_path, task.id)).status == "cancelled"
    again, created = worker.submit("spin", lambda progress, cancel_event: 7, "spin")
    assert created and again is not task and again.wait(30) == 7


def test_second_session_waits_for_the_same_build(monkeypatch, tmp_path):
    """Another session started the demo build: this page shows that it waits for that job and starts none."""
    from streamlit.testing.v1 import AppTest

    from sammerge.jobs.worker import get_worker
    from sammerge.training.build import ensure_zoo, preset_zoo_dir
    from sammerge.webapp.ui import demo_build_key

    root = Path(__file__).resolve().parents[1]
    monkeypatch.delenv("SAMMERGE_ZOO", raising=False)
    monkeypatch.setenv("SAMMERGE_PRESET", "tiny")
    monkeypatch.setenv("SAMMERGE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(root)
    target = preset_zoo_dir("tiny")
    calls = []

    def build(progress, cancel_event):
        calls.append(1)
        time.sleep(1.0)
        return ensure_zoo("tiny", progress=progress, cancel_event=cancel_event).path

    task, created = get_worker().submit(demo_build_key(target), build, "building the tiny zoo",
                                        record_root=target.parent, owner="another-session")
    assert created
    at = AppTest.from_file(str(root / "app.py"), default_timeout=300).run()
    assert not at.exception, at.exception
    assert any("another session started" in i.value for i in at.info)
    assert at.status and "tiny zoo ready" in at.status[0].label
    assert calls == [1] and task.status == "done"


# -- sweeps ---------------------------------------------------------------------------------------------------
def test_sweeps_cached_by_content_match_the_explorer(tiny_zoo_copy):
    from sammerge.explorer.service import Explorer
    from sammerge.jobs.sweeps import run_sweeps, sweeps_dir
    from sammerge.merging import MergeSpec

    zoo = open_zoo(tiny_zoo_copy)
    spec = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.4}, "sam")
    assert Explorer(zoo).cached_sweeps(spec) is None  # a fresh explorer reads the sweeps on disk
    specs = [spec, spec.with_variants("plain", zoo)]
    run_sweeps(zoo, specs, chunk_size=4)  # 21 λ values → 6 jobs per sweep
    records = list_records(sweeps_dir(zoo))
    assert len(records) == 12 and all(r.status == "done" and r.runs == 1 for r in records)
    cached = Explorer(zoo).cached_sweeps(spec.with_params(**{"lambda": 0.9}))  # from disk; λ is not part of a sweep
    live = Explorer(zoo).sweeps(spec)
    assert set(cached) == set(live) == {"current", "plain", "sam"}
    for name in live:
        assert cached[name].lambdas == live[name].lambdas
        assert cached[name].val_mean == live[name].val_mean
        assert cached[name].val_per_task == live[name].val_per_task
        assert cached[name].best_lambda == live[name].best_lambda
    run_sweeps(zoo, specs, chunk_size=4)  # cached: nothing runs again
    assert all(r.runs == 1 for r in list_records(sweeps_dir(zoo)))
    # the cache follows the content, not the path: a changed checkpoint is a different sweep
    assert Explorer(zoo).cached_sweeps(MergeSpec.for_zoo(zoo, "ties", None, "sam")) is None


def test_sweep_and_jobs_cli(tiny_zoo_copy, capsys):
    assert cli_main(["sweep", str(tiny_zoo_copy), "--method", "task_arithmetic", "--variants", "sam",
                     "digits:plain,symbols:sam", "--chunk", "11", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "task_arithmetic" in out and "digits:plain,symbols:sam" in out
    assert cli_main(["jobs", "list", str(tiny_zoo_copy), "--all"]) == 0
    listing = capsys.readouterr().out
    assert "4 jobs, 4 done" in listing and "λ sweep task_arithmetic" in listing
    assert cli_main(["sweep", str(tiny_zoo_copy), "--variants", "digits:nope", "--quiet"]) == 2
    assert "unknown variant 'nope' for task 'digits'" in capsys.readouterr().err
    assert cli_main(["sweep", str(tiny_zoo_copy), "--method", "ties", "--param", "lambda=1", "--param", "rho=2",
                     "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "λ is what a sweep varies" in err and "method 'ties' has no global parameter 'rho'" in err
    assert cli_main(["jobs", "cancel", str(tiny_zoo_copy)]) == 0
    flag = tiny_zoo_copy / "analysis" / "sweeps" / ".jobs" / "CANCEL"
    assert flag.exists()
    assert cli_main(["sweep", str(tiny_zoo_copy), "--method", "weight_average", "--variants", "plain", "--quiet"]) == 0
    assert not flag.exists() and "weight_average" in capsys.readouterr().out  # a new run clears an old cancel
    assert cli_main(["zoo", "build", "--preset", "tiny", "--out", str(tiny_zoo_copy.parent / "z"),
                     "--address", "auto", "--quiet"]) == 2
    assert "--address is only used with --backend ray" in capsys.readouterr().err
    assert not (tiny_zoo_copy.parent / "z").exists() and not (tiny_zoo_copy.parent / ".z.build").exists()


def test_failed_demo_build_is_reported_and_resumed(monkeypatch, tmp_path):
    """A build that failed (here: in a previous attempt) shows its error and a resume button; resuming builds the
    zoo through the shared worker."""
    from streamlit.testing.v1 import AppTest

    from sammerge.jobs.worker import get_worker
    from sammerge.training.build import preset_zoo_dir
    from sammerge.webapp.ui import demo_build_key

    root = Path(__file__).resolve().parents[1]
    monkeypatch.delenv("SAMMERGE_ZOO", raising=False)
    monkeypatch.setenv("SAMMERGE_PRESET", "tiny")
    monkeypatch.setenv("SAMMERGE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(root)
    target = preset_zoo_dir("tiny")

    def broken(progress, cancel_event):
        raise OSError("no space left on device")

    task, _ = get_worker().submit(demo_build_key(target), broken, "building the tiny zoo", record_root=target.parent)
    with pytest.raises(OSError):
        task.wait(30)
    at = AppTest.from_file(str(root / "app.py"), default_timeout=300).run()
    assert not at.exception, at.exception
    assert at.error and "build failed: no space left on device" in at.error[0].value
    assert read_record(record_path(target.parent, task.id)).status == "failed"
    at.button(key="resume-demo-build").click().run()  # the button's run asks for a rerun, which builds
    assert not at.exception, at.exception
    assert (target / "zoo.json").is_file()
    assert get_worker().get(demo_build_key(target)).status == "done"
    assert not at.error and set(at.dataframe[0].value["task"]) == {"digits", "latin_upper", "symbols"}


def test_explorer_sweep_saved_and_reloaded(tiny_zoo_copy):
    from sammerge.explorer.service import Explorer
    from sammerge.jobs.sweeps import load_cached_sweep, save_sweep
    from sammerge.merging import MergeSpec

    zoo = open_zoo(tiny_zoo_copy)
    spec = MergeSpec.for_zoo(zoo, "ties", None, "plain")
    live = Explorer(zoo).sweeps(spec)["current"]
    save_sweep(zoo, spec, live)
    again = load_cached_sweep(open_zoo(tiny_zoo_copy), spec.with_params(**{"lambda": 2.0}))
    assert (again.lambdas, again.val_mean, again.val_per_task, again.best_lambda, again.n_evaluations) == \
           (live.lambdas, live.val_mean, live.val_per_task, live.best_lambda, live.n_evaluations)


def test_killed_job_is_listed_as_interrupted(tmp_path, capsys):
    """A record left 'running' by a process that no longer exists (a killed server) is shown as interrupted."""
    import subprocess
    import sys

    from sammerge.jobs.record import write_record

    job = Job("demo", "write words", write_words, {"words": ["a"], "steps": 1, "out": "a.txt"}, outputs=("a.txt",))
    rec = run_job(job, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    rec.status, rec.pid = "running", int(dead.stdout)
    write_record(tmp_path, rec)
    assert cli_main(["jobs", "list", str(tmp_path)]) == 0
    assert "interrupted" in capsys.readouterr().out
    assert run_job(job, tmp_path).runs == 2  # not trusted: it runs again
