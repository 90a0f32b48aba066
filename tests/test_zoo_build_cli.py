"""`sammerge zoo build`: its help lists every preset, and --linearized / --precision / --seeds land in the recipe it
builds (the build itself is tested in test_jobs.py, test_seeds.py and test_precision.py)."""
from __future__ import annotations

import pytest

from sammerge.cli import main as cli_main
from sammerge.errors import ZooError
from sammerge.training import build
from sammerge.models.presets import PRESETS, describe_preset, get_preset


def test_help_lists_every_preset(capsys):
    with pytest.raises(SystemExit):
        cli_main(["zoo", "build", "--help"])
    out = capsys.readouterr().out
    assert set(PRESETS) == {"demo", "demo_fair", "tiny", "test", "glyphs7"}
    for name in PRESETS:
        line = next(l for l in out.splitlines() if l.strip().startswith(name + " "))
        assert describe_preset(name) in line and len(describe_preset(name)) > 20
    for flag in ("--linearized", "--precision", "--seeds"):
        assert flag in out


@pytest.fixture
def recipe_built(monkeypatch):
    """The recipe `zoo build` hands to build_zoo (which then stops with a ZooError instead of building)."""
    seen = []

    def fake_build(recipe, out, **kwargs):
        seen.append(recipe)
        raise ZooError("stopped by the test")

    monkeypatch.setattr(build, "build_zoo", fake_build)
    return seen


def test_flags_land_in_the_recipe(tmp_path, recipe_built, capsys):
    args = ["zoo", "build", "--preset", "tiny", "--out", str(tmp_path / "z"), "--quiet"]
    assert cli_main(args + ["--linearized", "--seeds", "0", "3", "--steps", "7"]) == 2
    assert cli_main(args + ["--precision", "bf16", "--rho", "0.1"]) == 2
    assert cli_main(args) == 2
    lin, bf16, plain = recipe_built
    assert lin.finetune.linearized and lin.finetune.precision == "fp32" and lin.finetune.steps == 7
    assert [(v.name, v.seed) for v in lin.variants] == [("plain", None), ("plain_s3", 3), ("sam", None), ("sam_s3", 3)]
    assert bf16.finetune.precision == "bf16" and not bf16.finetune.linearized
    assert next(v for v in bf16.variants if v.sam).rho == 0.1
    assert plain == get_preset("tiny")
    assert capsys.readouterr().err.count("stopped by the test") == 3
    # linearized fine-tuning stays fp32: refused before anything runs, naming the field
    assert cli_main(args + ["--linearized", "--precision", "bf16"]) == 2
    assert "linearized fine-tuning runs in fp32" in capsys.readouterr().err and len(recipe_built) == 3
