"""An EfficientNet-Lite0 zoo built in the background: the fine-tunes run in parallel worker processes ("lanes").

    build_lite0_zoo(Lite0ZooRecipe(tasks=(...)), out, lanes=2, progress=..., cancel_event=...)

This process loads the data, encodes it with the frozen prefix and fits the heads (:class:`Lite0Build`), then
splits the (task, variant) fine-tunes over ``lanes`` processes (``python -m sammerge.training.lite0_zoo --units``,
one torch thread each, niced so that a server's slider moves come first), longest first onto the least-loaded lane;
a SAM or ASAM step costs two passes. Lanes print one line per step, which becomes this build's progress. Last, this
process writes the zoo (every checkpoint evaluated as stored) and removes the work dir.

The work dir ``.{name}.lite0-build`` beside ``out`` holds the heads and every finished task vector: a cancelled,
killed or failed build resumes there (a lane that fails stops the others at once), and one build at a time works
in it (a lock).
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
from sammerge.training.lite0_zoo import PASSES, STEP_LINE, Lite0Build, Lite0ZooRecipe

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


class _Lane:
    """One worker process and the reader thread that turns its step lines into per-unit progress."""

    def __init__(self, units: list[tuple[str, str]], recipe: Lite0ZooRecipe, work: Path, nice: int) -> None:
        self.steps: dict[tuple[str, str], int] = {u: 0 for u in units}
        self.current: str | None = None
        self.tail: deque[str] = deque(maxlen=20)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(Path(sammerge.__file__).resolve().parents[1]),
                                              *filter(None, [os.environ.get("PYTHONPATH")])])}
        cmd = [sys.executable, "-m", "sammerge.training.lite0_zoo", "--work", str(work),
               "--recipe", recipe.model_dump_json(), "--progress-lines", "--nice", str(nice),
               "--units", *[f"{t}:{v}" for t, v in units]]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(STEP_LINE + " "):
                _, task, variant, step, _steps = line.split()
                self.steps[(task, variant)] = int(step)
                self.current = f"{task}/{variant} step {step}/{_steps}"
            else:
                self.tail.append(line.rstrip())

    def running(self) -> list[str]:
        return [self.current] if self.current and self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def build_lite0_zoo(recipe: Lite0ZooRecipe, out: str | os.PathLike, lanes: int = 2, progress: Progress | None = None,
                    cancel_event: threading.Event | None = None, nice: int = 10, name: str | None = None,
                    log=lambda _msg: None, poll_s: float = 0.5) -> Path:
    """Build the zoo of ``recipe`` at ``out`` (module doc); ``progress(done, total, stage)`` in pass-steps.
    Cancelling (``cancel_event``, or a progress callback that raises) stops the lanes; finished units are kept."""
    out = Path(out)
    work = work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda *_: None)
    with open(work / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ZooError(f"{out}: another build is writing this zoo (work dir {work})") from None
        costs = {(t, v): unit_cost(recipe, v) for v in recipe.variants for t in recipe.tasks}
        total = SETUP_UNITS + sum(costs.values()) + WRITE_UNITS
        report(0, total, "loading the images, encoding them with the frozen prefix, fitting the heads")
        build = Lite0Build(recipe, work, log=log)
        build.heads()
        todo = build.units()
        done_before = sum(c for u, c in costs.items() if u not in todo)
        lane_plan = plan_lanes(todo, recipe, lanes)
        started = [_Lane(units, recipe, work, nice) for units in lane_plan if units]
        try:
            while True:
                codes = [lane.proc.poll() for lane in started]
                finished = all(c is not None for c in codes) or any(c not in (None, 0) for c in codes)
                if cancel_event is not None and cancel_event.is_set():
                    raise JobCancelled(f"building {out.name}: cancelled (finished fine-tunes are kept in {work})")
                steps = {u: s * PASSES[u[1]] for lane in started for u, s in lane.steps.items()}
                running = [r for lane in started for r in lane.running()]
                report(SETUP_UNITS + done_before + sum(steps.values()), total,
                       f"fine-tuning on {len(started)} processes" + (": " + ", ".join(running) if running else ""))
                if finished:
                    break
                time.sleep(poll_s)
        finally:
            for lane in started:
                lane.stop()
        for lane in started:
            lane.reader.join(5)
        failed = [lane for lane in started if lane.proc.returncode not in (0, -signal.SIGTERM)] or [
            lane for lane in started if lane.proc.returncode != 0]  # the lane that failed, not those stopped after it
        if failed:
            raise ZooError(f"building {out.name}: " + "; ".join(
                f"fine-tuning {', '.join(f'{t}/{v}' for t, v in lane.steps)} failed (exit {lane.proc.returncode}): "
                + (" | ".join(list(lane.tail)[-3:]) or "no output") for lane in failed))
        missing = build.units()
        if missing:
            raise ZooError(f"building {out.name}: no task vector for {', '.join(f'{t}/{v}' for t, v in missing)}")
        report(total - WRITE_UNITS, total, "writing the zoo: evaluating every checkpoint as stored")
        build.write(out, name=name)
        report(total, total, "done")
    shutil.rmtree(work, ignore_errors=True)
    return out
