"""Precision: the evaluator's bf16 autocast (checked on the CPU's bf16 autocast) against a plain fp32 forward pass,
and fine-tuning precision as a recipe field that leaves every existing fingerprint and job id alone."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator
from sammerge.io import load_state_dict
from sammerge.training.build import build_zoo, zoo_jobs
from sammerge.training.knobs import with_knobs
from sammerge.models.presets import PRESETS, FinetuneRecipe, VariantSpec, get_preset
from sammerge.zoo import open_zoo


def _plain_forward(zoo, params, images):
    """Reference: a fresh encoder with ``params`` loaded, one ordinary fp32 forward pass."""
    model = zoo.create_encoder()
    model.load_state_dict(params)
    with torch.no_grad():
        return model.eval()(images)


def test_fp32_and_auto_on_cpu_are_the_plain_forward_pass(tiny_zoo):
    zoo = open_zoo(tiny_zoo)
    params = zoo.finetuned("digits", "sam")
    fp32 = Evaluator.from_zoo(zoo, n_per_task=64, device="cpu")
    auto = Evaluator.from_zoo(zoo, n_per_task=64, device="cpu", precision="auto")
    assert fp32.precision == "fp32" and fp32.autocast_dtype is None and auto.autocast_dtype is None
    ref = _plain_forward(zoo, params, fp32.images)
    assert torch.equal(fp32.features(params), ref) and torch.equal(auto.features(params), ref)
    for ev in (fp32, auto):
        result = ev.evaluate(params)
        for task in zoo.tasks:
            sl = ev.slices[task]
            logits = zoo.heads[task](ref[sl])
            assert result[task].accuracy == float((logits.argmax(1) == ev.labels[sl]).float().mean())
            assert result[task].loss == float(F.cross_entropy(logits, ev.labels[sl]))


def test_bf16_autocast_agrees_with_fp32_on_most_images(tiny_zoo):
    """Every checkpoint of the tiny zoo on every task's whole validation split: bf16 predictions agree with the fp32
    forward pass on ≥ 90 % of the images (measured: 95.7–98.2 %), losses within 0.03 (measured ≤ 0.007), features
    returned in fp32."""
    zoo = open_zoo(tiny_zoo)
    bf16 = Evaluator.from_zoo(zoo, n_per_task=None, device="cpu", precision="bf16")
    assert bf16.autocast_dtype == torch.bfloat16
    for task in zoo.tasks:
        for variant in zoo.variants:
            params = zoo.finetuned(task, variant)
            ref = _plain_forward(zoo, params, bf16.images)
            feats = bf16.features(params)
            assert feats.dtype == torch.float32 and not torch.equal(feats, ref)  # bf16 really ran
            result = bf16.score(feats)
            for t in zoo.tasks:
                sl = bf16.slices[t]
                logits = zoo.heads[t](ref[sl])
                agreement = float((zoo.heads[t](feats[sl]).argmax(1) == logits.argmax(1)).float().mean())
                assert agreement >= 0.90, (task, variant, t, agreement)
                assert abs(result[t].loss - float(F.cross_entropy(logits, bf16.labels[sl]))) < 0.03
    # the batched (vmap) path runs under autocast too and agrees with the fp32 results
    params = [zoo.finetuned(t, "plain") for t in zoo.tasks]
    many = bf16.evaluate_many(params, strategy="vmap")
    exact = Evaluator.from_zoo(zoo, n_per_task=None, device="cpu").evaluate_many(params)
    for got, want in zip(many, exact):
        for t in zoo.tasks:
            assert abs(got[t].accuracy - want[t].accuracy) <= 0.05 and abs(got[t].loss - want[t].loss) < 0.03


def test_bad_precision_is_refused(tiny_zoo):
    zoo = open_zoo(tiny_zoo)
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        Evaluator.from_zoo(zoo, n_per_task=8, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="linearized"):
        Evaluator(zoo.create_encoder(), zoo.heads, {"digits": (zoo.split("digits", "val").images[:4],
                                                               zoo.split("digits", "val").labels[:4])},
                  device="cpu", linearize_at=zoo.pretrained(), precision="bf16")
    with pytest.raises(ConfigError, match="linearized fine-tuning runs in fp32"):
        with_knobs(get_preset("tiny"), linearized=True, precision="bf16")


def _reference_fingerprint(recipe, data: str) -> str:
    """The fingerprint formula before the precision and variant-seed fields existed: recipe JSON minus the fields
    added later (at their defaults)."""
    dump = recipe.model_dump(mode="json")
    for key in ("linearized", "trainable", "precision"):
        dump["finetune"].pop(key)
    for v in dump["variants"]:
        v.pop("seed")
    return hashlib.sha256(json.dumps({"recipe": dump, "data": data}, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("name", list(PRESETS))
def test_new_fields_at_default_keep_every_fingerprint(name):
    recipe = get_preset(name)
    assert recipe.finetune.precision == "fp32" and all(v.seed is None for v in recipe.variants)
    assert recipe.fingerprint("d") == _reference_fingerprint(recipe, "d")
    assert with_knobs(recipe, precision="bf16").fingerprint("d") != recipe.fingerprint("d")
    seeded = recipe.model_copy(update={"variants": [*recipe.variants, VariantSpec(name="extra_s1", seed=1)]})
    assert seeded.fingerprint("d") != recipe.fingerprint("d")
    # nor the build's job ids: the finetune and variant inputs do not name the new fields at their default
    for job in zoo_jobs(recipe, "d"):
        if job.kind == "finetune":
            assert "precision" not in job.inputs["finetune"] and "seed" not in job.inputs["variant"]
            assert FinetuneRecipe.model_validate(job.inputs["finetune"]) == recipe.finetune


def test_bf16_finetuning_builds_on_cpu(tmp_path, smoke_zoo):
    """One task, plain and SAM, fine-tuned under bf16 autocast: finite, different from fp32, same θ0 and heads, and a
    task vector that points where the fp32 one points."""
    base = get_preset("tiny")
    recipe = with_knobs(base.model_copy(update={"tasks": base.tasks[:1]}), precision="bf16")
    zoo = build_zoo(recipe, tmp_path / "bf16")
    ref = open_zoo(smoke_zoo)
    assert zoo.manifest.pretrained.sha256 == ref.manifest.pretrained.sha256
    theta0 = zoo.pretrained()
    task = recipe.tasks[0]
    for variant in ("plain", "sam"):
        got, want = zoo.finetuned(task, variant), ref.finetuned(task, variant)
        assert all(torch.isfinite(v).all() for v in got.values())
        assert any(not torch.equal(got[k], want[k]) for k in got)
        tau_bf16 = torch.cat([(got[k] - theta0[k]).flatten() for k in theta0 if theta0[k].is_floating_point()])
        tau_fp32 = torch.cat([(want[k] - theta0[k]).flatten() for k in theta0 if theta0[k].is_floating_point()])
        assert tau_bf16.norm() > 0 and float(F.cosine_similarity(tau_bf16, tau_fp32, dim=0)) > 0.8  # measured 0.95
        record = zoo.manifest.checkpoint(task, variant)
        assert record.method["precision"] == "bf16"
        assert load_state_dict(zoo.path / record.file).keys() == want.keys()
    assert zoo.manifest.recipe.finetune.precision == "bf16"


def test_eval_and_sweep_cli_take_a_precision(tiny_zoo_copy, tmp_path, capsys):
    """`sammerge eval --precision bf16` says so in its output and stays close to fp32; `sammerge sweep --precision
    bf16` caches its sweep apart from the explorer's fp32 sweep (never shown as fp32 numbers)."""
    from sammerge.cli import main as cli_main
    from sammerge.jobs.sweeps import evaluation_settings, load_cached_sweep, load_cached_sweep_by_key, sweep_key, \
        sweeps_dir
    from sammerge.merging import MergeSpec

    zoo = open_zoo(tiny_zoo_copy)
    spec = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.4}, "sam")
    config = tmp_path / "merge.json"
    config.write_text(spec.to_json(), encoding="utf-8")
    out = {}
    for precision in ("fp32", "bf16"):
        assert cli_main(["eval", str(tiny_zoo_copy), str(config), "--split", "val", "--n-per-task", "128",
                         "--precision", precision]) == 0
        out[precision] = json.loads(capsys.readouterr().out)
        assert out[precision]["precision"] == precision
    rows = {p: {r["task"]: r for r in out[p]["per_task"]} for p in out}
    assert any(rows["fp32"][t]["loss"] != rows["bf16"][t]["loss"] for t in zoo.tasks)  # bf16 really ran
    for t in zoo.tasks:
        assert abs(rows["fp32"][t]["accuracy"] - rows["bf16"][t]["accuracy"]) <= 0.05
        assert abs(rows["fp32"][t]["loss"] - rows["bf16"][t]["loss"]) < 0.03

    assert cli_main(["sweep", str(tiny_zoo_copy), "--method", "task_arithmetic", "--variants", "sam", "--chunk", "21",
                     "--precision", "bf16", "--quiet"]) == 0
    assert "kept apart from the explorer" in capsys.readouterr().out
    assert load_cached_sweep(zoo, spec) is None  # the explorer's (fp32) key finds nothing
    key = sweep_key(zoo, spec, evaluation_settings("bf16"))
    bf16 = load_cached_sweep_by_key(sweeps_dir(zoo), key)
    assert json.loads((sweeps_dir(zoo) / f"{key}.json").read_text())["evaluation"]["precision"] == "bf16"
    assert cli_main(["sweep", str(tiny_zoo_copy), "--method", "task_arithmetic", "--variants", "sam", "--chunk", "21",
                     "--quiet"]) == 0
    fp32 = load_cached_sweep(zoo, spec)
    assert fp32.lambdas == bf16.lambdas and fp32.val_mean != bf16.val_mean
    assert max(abs(a - b) for a, b in zip(fp32.val_mean, bf16.val_mean)) <= 0.05
