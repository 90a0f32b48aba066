"""Shared fixtures: one tiny zoo built per test session (seconds), copied where a test mutates it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# The test models are tiny: one thread is faster than two (and immune to a busy machine).
torch.set_num_threads(1)
# The app evaluates exactly unless a test asks for the estimate-first path (a busy machine could otherwise make the
# measured throughput of the tiny zoo look slow enough for estimates: explorer/estimates.py).
os.environ.setdefault("SAMMERGE_LATENCY_TARGET_S", "inf")
# the app compiles its evaluator's forward in the background; on 2 cores that would compete with every test's server
# (tests/test_compiled.py covers it)
os.environ.setdefault("SAMMERGE_COMPILE", "0")


# torch threads of the fixture builds (their bytes depend on it: float sums); the suite must pass at 1 and at 2
FIXTURE_THREADS = int(os.environ.get("SAMMERGE_FIXTURE_THREADS", "1"))
# what the tests rely on, checked when the fixture is built, with a margin over float-rounding differences between
# CPUs and thread counts (measured at 1 and 2 threads: gains +3.5 to +17 points per task, variant and split, the mean
# gain per variant +6 to +13; pretrained 27-35 % against chance 7.7-10 %)
MIN_GAIN = 0.02            # every task, every variant, val and test: fine-tuned minus pretrained accuracy
MIN_MEAN_GAIN = 0.04       # every variant: the mean over tasks of that gain, on test
MIN_PRETRAINED_OVER_CHANCE = 2.0  # pretrained accuracy ≥ 2 × chance on every task


def check_fixture_zoo(path: Path) -> None:
    """Fail the session, saying what failed, when a fixture zoo lacks the properties the tests rely on."""
    from sammerge.zoo import read_manifest

    m = read_manifest(path)
    classes = {t.name: len(t.class_names) for t in m.tasks}
    problems = []
    for c in m.checkpoints:
        chance = 1.0 / classes[c.task]
        for split in ("val", "test"):
            pre, ft = getattr(c.pretrained_accuracy, split), getattr(c.accuracy, split)
            if ft - pre < MIN_GAIN:
                problems.append(f"{c.task}/{c.variant} {split}: fine-tuned {ft:.3f} gains {ft - pre:+.3f} over "
                                f"pretrained {pre:.3f} (need ≥ {MIN_GAIN:+.2f})")
            if pre < MIN_PRETRAINED_OVER_CHANCE * chance:
                problems.append(f"{c.task} {split}: pretrained {pre:.3f} is not well above chance {chance:.3f}")
    for variant in {c.variant for c in m.checkpoints}:
        gains = [c.accuracy.test - c.pretrained_accuracy.test for c in m.checkpoints if c.variant == variant]
        if sum(gains) / len(gains) < MIN_MEAN_GAIN:
            problems.append(f"{variant}: mean test gain {sum(gains) / len(gains):+.3f} (need ≥ {MIN_MEAN_GAIN:+.2f})")
    if problems:
        pytest.fail(f"fixture zoo {path.name} (torch threads {m.threads}) does not learn as the tests need:\n  "
                    + "\n  ".join(sorted(set(problems))), pytrace=False)


@pytest.fixture(scope="session")
def smoke_zoo(tmp_path_factory) -> Path:
    """Path of a `tiny` preset zoo (seconds to build, barely learns), built once per session at one torch thread:
    the byte-for-byte reference of the tests of the build machinery (resume, extend, Ray, determinism). Do not modify."""
    from sammerge.models.presets import get_preset
    from sammerge.training.build import build_zoo

    out = tmp_path_factory.mktemp("smoke") / "smoke"
    build_zoo(get_preset("tiny"), out, threads=1)
    return out


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """Path of a `test` preset zoo (a small zoo that learns), built once per session and checked (:func:`check_fixture_zoo`). Do not modify;
    use `tiny_zoo_copy`."""
    from sammerge.models.presets import get_preset
    from sammerge.training.build import build_zoo

    out = tmp_path_factory.mktemp("zoo") / "tiny"
    build_zoo(get_preset("test"), out, threads=FIXTURE_THREADS)
    check_fixture_zoo(out)
    return out


@pytest.fixture(scope="session")
def linear_zoo(tmp_path_factory):
    """The `tiny` preset built with linearized fine-tuning (f(θ0) + J(θ − θ0)), opened; built once per session."""
    from sammerge.training.build import build_zoo
    from sammerge.models.presets import get_preset
    from sammerge.zoo import open_zoo

    recipe = get_preset("tiny")
    recipe = recipe.model_copy(update={"finetune": recipe.finetune.model_copy(update={"linearized": True})})
    out = tmp_path_factory.mktemp("linzoo") / "lin"
    build_zoo(recipe, out, threads=FIXTURE_THREADS)
    return open_zoo(out)


@pytest.fixture
def tiny_zoo_copy(tiny_zoo, tmp_path) -> Path:
    """A private copy of the tiny zoo that a test may corrupt, without the caches other tests wrote into the shared
    one (analyses, sweeps, diagnostics): a copy starts as built, whatever ran before."""
    dest = tmp_path / "tiny_copy"
    shutil.copytree(tiny_zoo, dest, ignore=shutil.ignore_patterns("analysis"))
    return dest
