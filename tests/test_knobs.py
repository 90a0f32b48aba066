"""Recipe knobs (CLI zoo build and the app's zoo builder): each knob lands where the build reads it."""
from __future__ import annotations

import pytest

from sammerge.errors import ConfigError
from sammerge.training.knobs import with_knobs
from sammerge.models.presets import get_preset


def test_no_knobs_keep_the_recipe_and_its_fingerprint():
    r = get_preset("demo")
    assert with_knobs(r) == r and with_knobs(r).fingerprint("d") == r.fingerprint("d")


def test_each_knob():
    r = with_knobs(get_preset("tiny"), seed=3, tasks=["digits", "symbols"], lr=1e-4, steps=7, linearized=True,
                   trainable="last_stage")
    assert (r.seed, r.tasks, r.finetune.lr, r.finetune.steps) == (3, ["digits", "symbols"], 1e-4, 7)
    assert r.finetune.linearized and r.finetune.trainable == "last_stage"
    assert r.fingerprint("d") != get_preset("tiny").fingerprint("d")


def test_asam_takes_the_papers_rho_unless_given():
    asam = with_knobs(get_preset("tiny"), adaptive=True)
    sam = next(v for v in asam.variants if v.sam)
    assert (sam.name, sam.adaptive, sam.rho) == ("asam", True, 0.5)
    assert next(v for v in with_knobs(get_preset("tiny"), adaptive=True, rho=0.2).variants if v.sam).rho == 0.2
    assert next(v for v in with_knobs(get_preset("tiny"), rho=0.1).variants if v.sam).rho == 0.1


def test_a_recipe_with_sam_and_asam_keeps_both():
    """The builder page's defaults (ASAM toggle off, ρ 0.05) on the demo preset once failed validation: its SAM
    variant was renamed 'sam' and so was its ASAM variant."""
    demo = get_preset("demo")
    kinds = {v.name: (v.adaptive, v.rho) for v in demo.variants if v.sam}
    r = with_knobs(demo, rho=0.02, adaptive=False)
    assert {v.name: (v.adaptive, v.rho) for v in r.variants if v.sam} == {**kinds, "sam": (False, 0.02)}
    r = with_knobs(demo, rho=0.7, adaptive=True)
    assert {v.name: (v.adaptive, v.rho) for v in r.variants if v.sam} == {**kinds, "asam": (True, 0.7)}
    assert [v.name for v in with_knobs(get_preset("demo_fair"), rho=0.05, adaptive=False).variants] == \
        [v.name for v in get_preset("demo_fair").variants]


def test_equal_compute_adds_plain_with_twice_the_steps():
    r = with_knobs(get_preset("tiny"), steps=30, equal_compute=True)
    extra = next(v for v in r.variants if v.name == "plain_2x")
    assert extra.steps == 60 and not extra.sam


def test_bad_knobs_are_all_reported():
    with pytest.raises(ConfigError) as err:
        with_knobs(get_preset("tiny"), lr=-1.0, steps=0, tasks=[])
    msg = str(err.value)
    assert "finetune.lr" in msg and "finetune.steps" in msg
