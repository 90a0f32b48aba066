"""An EfficientNet-Lite0 zoo built in the background: the fine-tunes run in parallel worker processes ("lanes").

    build_lite0_zoo(Lite0ZooRecipe(tasks=(...)), out, lanes=2, progress=..., cancel_event=...)

A worker process loads the data, encodes it with the frozen prefix and fits the heads (:class:`Lite0Build`), then
the (task, variant) fine-tunes are split over ``lanes`` processes (``python -m sammerge.training.lite0_zoo --units``,
one torch thread each, niced so that a server's slider moves come first), longest first onto the least-loaded lane;
a SAM or ASAM step costs two passes. Lanes print one line per step, which becomes this build's progress. Last, this
process writes the zoo (every checkpoint evaluated as stored) and removes the work dir.

The work dir ``.{name}.lite0-build`` beside ``out`` holds the recipe, the heads and every finished task vector
(another recipe's are removed, never reused): a cancelled,
killed or failed build resumes there (a lane that fails stops the others at once; lanes whose build process died
stop at their next step), and one build at a time works in it (a lock).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import sammerge
from sammerge.errors import ZooError
from sammerge.jobs.runner import JobCancelled
from sammerge.progress import Progress
from sammerge.training.lite0_zoo import HEADS_FILE, PASSES, STEP_LINE, Lite0Build, Lite0ZooRecipe, tv_file

SETUP_UNITS, WRITE_UNITS = 40, 40  # progress weight of loading + heads, and of writing (in pass-steps)


def unit_cost(recipe: Lite0ZooRecipe, variant: str) -> int:
    """Forward-backward passes of one fine-tune: steps × (2 for SAM / ASAM, else 1)."""
    return (recipe.variant(variant).steps or recipe.steps) * PASSES[variant]


def plan_lanes(units: list[tuple[str, str]], recipe: Lite0ZooRecipe, lanes: int) -> list[list[tuple[str, str]]]:
    """Longest-processing-time-first: each unit, costliest first, onto the lane with the least work so far."""
    plan: list[list[tuple[str, str]]] = [[] for _ in range(max(1, min(lanes, len(units))))]
    load = [0] * len(plan)
    for unit in sorted(units, key=lambda u: -unit_cost(recipe, u[1])):
        i = load.index(min(load))
        plan[i].append(unit)
        load[i] += unit_cost(recipe, unit[1])
    return plan


def missing_requirements(recipe: Lite0ZooRecipe) -> list[str]:
    """Everything a build of ``recipe`` lacks here (the encoder's weights package, each task's image source)."""
    from sammerge.errors import SammergeError
    from sammerge.models import lite0
    from sammerge.training import real_tasks
    problems = []
    try:
        lite0.package_weights_path()
    except SammergeError as exc:
        problems.append(str(exc))
    return problems + real_tasks.missing_sources(recipe.tasks)


def work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.lite0-build"


RECIPE_FILE = "recipe.json"


def claim_work_dir(work: Path, recipe: Lite0ZooRecipe) -> list[str]:
    """Make ``work`` this recipe's: heads and task vectors left there by a build of another recipe are removed (never
    reused for this one), then the recipe is recorded. Returns the names of the removed files."""
    from sammerge.io import atomic_write_text
    recorded = work / RECIPE_FILE
    removed = []
    if recorded.is_file() and recorded.read_text() != recipe.model_dump_json():
        for f in sorted(work.glob("*.safetensors")):
            f.unlink()
            removed.append(f.name)
    atomic_write_text(recorded, recipe.model_dump_json())
    return removed


class _Lane:
    """One worker process (``units``: its fine-tunes; none: it fits the heads) and the reader thread that turns its
    step lines into per-unit progress."""

    def __init__(self, units: list[tuple[str, str]], recipe: Lite0ZooRecipe, work: Path, nice: int) -> None:
        self.steps: dict[tuple[str, str], int] = {u: 0 for u in units}
        self.current: str | None = None
        self.tail: deque[str] = deque(maxlen=20)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(Path(sammerge.__file__).resolve().parents[1]),
                                              *filter(None, [os.environ.get("PYTHONPATH")])])}
        cmd = [sys.executable, "-m", "sammerge.training.lite0_zoo", "--work", str(work),
               "--recipe", recipe.model_dump_json(), "--progress-lines", "--exit-with-parent", "--nice", str(nice),
               *(["--units", *[f"{t}:{v}" for t, v in units]] if units else ["--train"])]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(STEP_LINE + " "):
                _, task, variant, step, steps = line.split()
                self.steps[(task, variant)] = int(step)
                self.current = f"{task}/{variant} step {step}/{steps}"
            else:
                self.tail.append(line.rstrip())

    def running(self) -> list[str]:
        return [self.current] if self.current and self.proc.poll() is None else []

    def describe(self) -> str:
        return (f"fine-tuning {', '.join(f'{t}/{v}' for t, v in self.steps)}" if self.steps else "fitting the heads") \
            + f" failed (exit {self.proc.returncode}): " + (" | ".join(list(self.tail)[-3:]) or "no output")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _run_lanes(lanes: list[_Lane], on_poll, cancel_event, poll_s: float, what: str) -> None:
    """Wait for ``lanes`` (``on_poll()`` between polls); stop them all when one fails, on cancel, or when
    ``on_poll`` raises; ZooError naming the lane that failed and its last output lines."""
    try:
        while True:
            codes = [lane.proc.poll() for lane in lanes]
            if cancel_event is not None and cancel_event.is_set():
                raise JobCancelled(f"{what}: cancelled (finished fine-tunes are kept)")
            on_poll()
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(poll_s)
    finally:
        for lane in lanes:
            lane.stop()
    for lane in lanes:
        lane.reader.join(5)
    failed = [lane for lane in lanes if lane.proc.returncode not in (0, -signal.SIGTERM)] or [
        lane for lane in lanes if lane.proc.returncode != 0]  # the lane that failed, not those stopped after it
    if failed:
        raise ZooError(f"{what}: " + "; ".join(lane.describe() for lane in failed))


def build_lite0_zoo(recipe: Lite0ZooRecipe, out: str | os.PathLike, lanes: int = 2, progress: Progress | None = None,
                    cancel_event: threading.Event | None = None, nice: int = 10, name: str | None = None,
                    log=lambda _msg: None, poll_s: float = 0.5) -> Path:
    """Build the zoo of ``recipe`` at ``out`` (module doc); ``progress(done, total, stage)`` in pass-steps.
    Cancelling (``cancel_event``, or a progress callback that raises) stops the lanes; finished units are kept.
    Heads and fine-tunes all run in one-thread worker processes, so the task vectors do not depend on the
    calling process's thread count (the same recipe gives the same bytes)."""
    build_start, out = time.perf_counter(), Path(out)
    work = work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda *_: None)
    what = f"building {out.name}"
    with open(work / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ZooError(f"{out}: another build is writing this zoo (work dir {work})") from None
        claim_work_dir(work, recipe)
        costs = {(t, v): unit_cost(recipe, v) for v in recipe.variants for t in recipe.tasks}
        total = SETUP_UNITS + sum(costs.values()) + WRITE_UNITS
        stage = "loading the images, encoding them with the frozen prefix, fitting the heads (one worker process)"
        report(0, total, stage)
        if not (work / HEADS_FILE).is_file():
            _run_lanes([_Lane([], recipe, work, nice)], lambda: report(0, total, stage), cancel_event, poll_s, what)
        todo = [u for u in costs if not tv_file(work, *u).is_file()]
        done_before = SETUP_UNITS + sum(c for u, c in costs.items() if u not in todo)
        started = [_Lane(units, recipe, work, nice) for units in plan_lanes(todo, recipe, lanes) if units]

        def fine_tuning_progress() -> None:
            running = [r for lane in started for r in lane.running()]
            report(done_before + sum(s * PASSES[u[1]] for lane in started for u, s in lane.steps.items()), total,
                   f"fine-tuning on {len(started)} processes" + (": " + ", ".join(running) if running else ""))
        _run_lanes(started, fine_tuning_progress, cancel_event, poll_s, what)
        missing = [u for u in costs if not tv_file(work, *u).is_file()]
        if missing:
            raise ZooError(f"{what}: no task vector for {', '.join(f'{t}/{v}' for t, v in missing)}")
        report(total - WRITE_UNITS, total, "writing the zoo: evaluating every checkpoint as stored")
        Lite0Build(recipe, work, log=log).write(out, name=name, started=build_start)
        report(total, total, "done")
    shutil.rmtree(work, ignore_errors=True)
    return out
