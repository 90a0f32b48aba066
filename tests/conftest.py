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


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """Path of a `tiny` preset zoo, built once per session. Do not modify; use `tiny_zoo_copy`."""
    from sammerge.training.presets import get_preset
    from sammerge.training.build import build_zoo

    out = tmp_path_factory.mktemp("zoo") / "tiny"
    build_zoo(get_preset("tiny"), out)
    return out


@pytest.fixture(scope="session")
def linear_zoo(tmp_path_factory):
    """The `tiny` preset built with linearized fine-tuning (f(θ0) + J(θ − θ0)), opened; built once per session."""
    from sammerge.training.build import build_zoo
    from sammerge.training.presets import get_preset
    from sammerge.zoo import open_zoo

    recipe = get_preset("tiny")
    recipe = recipe.model_copy(update={"finetune": recipe.finetune.model_copy(update={"linearized": True})})
    out = tmp_path_factory.mktemp("linzoo") / "lin"
    build_zoo(recipe, out)
    return open_zoo(out)


@pytest.fixture
def tiny_zoo_copy(tiny_zoo, tmp_path) -> Path:
    """A private copy of the tiny zoo that a test may corrupt, without the caches other tests wrote into the shared
    one (analyses, sweeps, diagnostics): a copy starts as built, whatever ran before."""
    dest = tmp_path / "tiny_copy"
    shutil.copytree(tiny_zoo, dest, ignore=shutil.ignore_patterns("analysis"))
    return dest
