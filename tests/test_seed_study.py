"""Seed studies shown beside a zoo: only for the zoo's own recipe, with numbers read back as measured."""
from __future__ import annotations

import json
import statistics

import pytest

from sammerge.analytics.seed_study import (attach_study, fair_table, load_study, recipe_mismatches, study_path,
                                           study_reading, study_table)
from sammerge.errors import ConfigError
from sammerge.models.presets import VariantSpec, get_preset
from sammerge.zoo import open_zoo


def _agg(values):
    return {"mean": statistics.mean(values), "std": statistics.stdev(values), "values": values}


def _study(recipe, merged_delta=(-0.03, -0.02, -0.04)):
    plain = {"individual_test": _agg([0.45, 0.47, 0.44]), "merged_test": _agg([0.37, 0.39, 0.35]),
             "normalized": _agg([0.82, 0.83, 0.80]), "gap_closed": _agg([0.5, 0.52, 0.41]),
             "best_lambda_val": _agg([0.45, 0.3, 0.35]), "label": "plain", "steps": 20}
    sam = {**plain, "merged_test": _agg([0.34, 0.37, 0.31]), "label": "SAM ρ=0.05"}
    return {"recipe": recipe.model_dump(mode="json"),
            "summary": {"seeds": [0, 1, 2], "variants": {"plain": plain, "sam": sam},
                        "fair": {"sam": {"equal_steps": {"merged": _agg(list(merged_delta)),
                                                         "individual": _agg([-0.03, -0.03, -0.04])}}}}}


def test_a_study_of_the_same_recipe_with_other_seeds_and_more_variants_belongs_to_the_zoo(tiny_zoo_copy):
    zoo = open_zoo(tiny_zoo_copy)
    recipe = zoo.manifest.recipe.model_copy(update={
        "seed": 7, "preset": "tiny_fair", "variants": [*zoo.manifest.recipe.variants, VariantSpec(name="plain_2x", steps=40)]})
    attach_study(zoo, _study(recipe))
    study = load_study(zoo)
    assert study is not None and study["summary"]["seeds"] == [0, 1, 2]
    table = study_table(study).set_index("variant")
    assert table.loc["plain", "task arithmetic (%)"] == "37.0 ± 2.0"  # mean 0.37, sample std 0.02
    assert table.loc["sam", "best λ per seed"] == "0.45, 0.3, 0.35"
    fair = fair_table(study)
    assert list(fair["merged Δ (pts)"]) == ["-3.0 ± 1.0"]
    assert "below plain on every seed" in study_reading(study) and "-3.0 ± 1.0" in study_reading(study)


def test_a_study_of_another_recipe_is_refused_with_every_difference_named(tiny_zoo_copy):
    zoo = open_zoo(tiny_zoo_copy)
    base = zoo.manifest.recipe
    other = base.model_copy(update={
        "finetune": base.finetune.model_copy(update={"lr": 1e-4}), "tasks": ["digits"],
        "variants": [VariantSpec(name="plain"), VariantSpec(name="sam", sam=True, rho=0.5)]})
    with pytest.raises(ConfigError) as err:
        attach_study(zoo, _study(other))
    message = str(err.value)
    assert "'finetune'" in message and "'tasks'" in message and "variant 'sam' has other settings" in message
    assert not study_path(zoo).exists()


def test_a_study_that_no_longer_matches_is_not_shown(tiny_zoo_copy):
    zoo = open_zoo(tiny_zoo_copy)
    attach_study(zoo, _study(zoo.manifest.recipe))
    data = json.loads(study_path(zoo).read_text())
    data["recipe"]["pretrain"]["steps"] += 1  # e.g. the zoo was rebuilt from a changed recipe
    study_path(zoo).write_text(json.dumps(data))
    assert load_study(zoo) is None


def test_mixed_signs_are_read_as_mixed():
    recipe = get_preset("tiny")
    study = _study(recipe, merged_delta=(0.01, -0.02, 0.005))
    assert "above plain on some seeds and below on others" in study_reading(study)
    assert recipe_mismatches(study["recipe"], recipe.model_dump(mode="json")) == []


def test_the_method_table_reads_every_method_and_its_sign(tiny_zoo_copy):
    from sammerge.analytics.seed_study import method_reading, method_table
    zoo = open_zoo(tiny_zoo_copy)
    study = _study(zoo.manifest.recipe)
    assert method_table(study) is None  # a study measured before the methods were
    study["summary"]["methods"] = {
        "tsv_m": {"label": "TSV-M", "routing": "static",
                  "variants": {"plain": {"merged_test": _agg([0.40, 0.42, 0.38]), "gap_closed": _agg([0.5, 0.6, 0.4])},
                               "sam": {"merged_test": _agg([0.43, 0.44, 0.42]), "gap_closed": _agg([0.6, 0.7, 0.5])}},
                  "fair": {"sam": {"equal_steps": _agg([0.03, 0.02, 0.04]),
                                   "equal_individual": _agg([0.01, -0.01, 0.03])}}},
        "emr": {"label": "EMR", "routing": "task_routed",
                "variants": {"plain": {"merged_test": _agg([0.44, 0.45, 0.43]), "gap_closed": _agg([0.9, 0.9, 0.8])}},
                "fair": {"sam": {"equal_steps": _agg([-0.01, -0.02, -0.03])}}}}
    table = method_table(study).set_index("method")
    assert table.loc["TSV-M", "sam − plain, equal steps (pts)"] == "3.0 ± 1.0"
    assert table.loc["TSV-M", "plain gap closed (%)"] == "50.0 ± 10.0"
    assert table.loc["EMR (task-routed)", "plain merged (%)"] == "44.0 ± 1.0"
    reading = method_reading(study)
    assert "above plain on every seed: tsv_m (+3.0)" in reading and "below plain on every seed: emr (-2.0)" in reading
