"""A seed dimension inside one zoo: ``VariantSpec.seed`` and ``zoo build --seeds``; extending a finished zoo with a
seed runs only the new fine-tuning and evaluation jobs (checked by the job records)."""
from __future__ import annotations

import json

import pytest

from sammerge.cli import main as cli_main
from sammerge.errors import ConfigError
from sammerge.jobs import list_records
from sammerge.training.build import build_zoo, zoo_jobs
from sammerge.training.knobs import with_knobs
from sammerge.models.presets import VariantSpec, get_preset
from sammerge.zoo import data_sha256, open_zoo


def _runs(root):
    return {r.name: (r.runs, r.started) for r in list_records(root)}


def test_seeds_expand_every_variant():
    recipe = with_knobs(get_preset("tiny"), seeds=[0, 1, 2])
    assert [(v.name, v.seed) for v in recipe.variants] == [
        ("plain", None), ("plain_s1", 1), ("plain_s2", 2), ("sam", None), ("sam_s1", 1), ("sam_s2", 2)]
    assert next(v for v in recipe.variants if v.name == "sam_s2").sam
    # the zoo's seed keeps the variant's name (and bytes); with --seed 5, seed 0 is a seed like any other
    assert [v.name for v in with_knobs(get_preset("tiny"), seed=5, seeds=[0, 5]).variants] == [
        "plain_s0", "plain", "sam_s0", "sam"]
    for bad in ([0, 0], [], [-1]):
        with pytest.raises(ConfigError, match="seeds"):
            with_knobs(get_preset("tiny"), seeds=bad)
    # the seed goes into the fine-tuning job's seeds, nowhere else
    jobs = {j.name: j for j in zoo_jobs(recipe, "d")}
    plain, s1 = jobs["fine-tune latin_upper/plain"].inputs, jobs["fine-tune latin_upper/plain_s1"].inputs
    assert (plain["torch_seed"], plain["batch_seed"]) == (0 + 17, 0 + 7919 * 2)
    assert (s1["torch_seed"], s1["batch_seed"]) == (1 + 17, 1 + 7919 * 2)
    assert jobs["head latin_upper"].inputs["probe_seed"] == 1001


def test_extending_a_zoo_with_a_seed_runs_only_the_new_jobs(tmp_path, smoke_zoo):
    """Two tasks × plain, built; then `zoo build --seeds 0 1 --overwrite` on it: only plain_s1's fine-tuning and
    evaluation jobs run, plain keeps the bytes of the tiny build, plain_s1 differs from it."""
    base = get_preset("tiny")
    small = base.model_copy(update={"tasks": base.tasks[:2], "variants": [VariantSpec(name="plain")]})
    out = tmp_path / "zoo"
    build_zoo(small, out)
    first = _runs(out)
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(small.model_dump_json(), encoding="utf-8")
    assert cli_main(["zoo", "build", "--recipe", str(recipe_file), "--seeds", "0", "1", "--out", str(out),
                     "--overwrite", "--quiet", "--threads", "1"]) == 0
    second = _runs(out)
    assert {n: second[n] for n in first} == first  # nothing finished was redone
    new = sorted(set(second) - set(first))
    assert new == sorted(f"{kind} {t}/plain_s1" for t in small.tasks for kind in ("fine-tune", "evaluate"))
    assert all(second[n][0] == 1 for n in new)

    zoo, ref = open_zoo(out, verify=True), open_zoo(smoke_zoo)
    assert zoo.variants == ["plain", "plain_s1"]
    for task in small.tasks:
        plain, seeded = zoo.manifest.checkpoint(task, "plain"), zoo.manifest.checkpoint(task, "plain_s1")
        assert plain.sha256 == ref.manifest.checkpoint(task, "plain").sha256
        assert seeded.sha256 != plain.sha256 and seeded.method["seed"] == 1 and "seed" not in plain.method
    assert zoo.manifest.recipe.variants[1] == VariantSpec(name="plain_s1", seed=1)
    assert json.loads((out / "zoo.json").read_text())["recipe"]["variants"][0].get("seed") is None
    assert len(second) == len(zoo_jobs(zoo.manifest.recipe, data_sha256(zoo.benchmark)))
