"""Regime diagnostics against hand computations (numpy norms, plain forward passes) on the tiny zoo."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sammerge.analytics.diagnostics import diagnose_zoo, gap_closed, vector_stats
from sammerge.errors import ConfigError
from sammerge.zoo import open_zoo

SETTINGS = {"n_per_task": 48, "lambdas": [0.0, 0.2, 0.4, 1.0], "alphas": [0.0, 0.5, 1.0]}


def _np(sd):
    return np.concatenate([v.double().numpy().ravel() for k, v in sorted(sd.items()) if v.is_floating_point()])


def _hand_acc(zoo, params, task, n=48):
    """Accuracy of ``params`` on the task's val subset: load into a fresh encoder, plain forward, head, argmax."""
    part = zoo.split(task, "val").subset(n, 0)
    enc = zoo.create_encoder()
    enc.load_state_dict({k: v.clone() for k, v in params.items()})
    with torch.no_grad():
        logits = zoo.heads[task](enc(part.images))
    return float((logits.argmax(1) == part.labels).float().mean())


def test_gap_closed_formula():
    assert gap_closed(0.6, 0.4, 0.8) == pytest.approx(0.5)
    assert gap_closed(0.3, 0.4, 0.8) == pytest.approx(-0.25)
    assert math.isnan(gap_closed(0.5, 0.4, 0.4))


def test_vector_stats_by_hand(tiny_zoo):
    zoo = open_zoo(tiny_zoo)
    theta0 = zoo.pretrained()
    tvs = {t: zoo.task_vector(t, "plain") for t in zoo.tasks}
    stats = vector_stats(theta0, tvs)
    base = np.linalg.norm(_np(theta0))

    def by_hand(flats):
        rel = {t: np.linalg.norm(flats[t]) / base for t in zoo.tasks}
        cos = [flats[a] @ flats[b] / (np.linalg.norm(flats[a]) * np.linalg.norm(flats[b]))
               for i, a in enumerate(zoo.tasks) for b in zoo.tasks[i + 1:]]
        return rel, float(np.mean(cos))

    # Exactly (float64 numpy) on the float32 task vectors the function was given ...
    rel, mean_cos = by_hand({t: _np(tvs[t]) for t in zoo.tasks})
    for t in zoo.tasks:
        assert stats["rel_norm"][t] == pytest.approx(rel[t], rel=1e-9)
    assert stats["mean_pairwise_cosine"] == pytest.approx(mean_cos, rel=1e-9)
    # ... and against θ_t − θ0 taken in float64, up to the float32 rounding of τ_t (~1e-7 per entry).
    rel, mean_cos = by_hand({t: _np(zoo.finetuned(t, "plain")) - _np(theta0) for t in zoo.tasks})
    for t in zoo.tasks:
        assert stats["rel_norm"][t] == pytest.approx(rel[t], rel=1e-6)
    assert stats["mean_pairwise_cosine"] == pytest.approx(mean_cos, rel=1e-6)
    assert stats["cosine"]["matrix"][0][0] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def diag(tiny_zoo):
    return diagnose_zoo(open_zoo(tiny_zoo), settings=SETTINGS, device="cpu", use_cache=False)


def test_merge_curve_and_summary_by_hand(tiny_zoo, diag):
    zoo = open_zoo(tiny_zoo)
    theta0 = zoo.pretrained()
    tasks = zoo.tasks
    v = diag["variants"]["sam"]
    tvs = {t: zoo.task_vector(t, "sam") for t in tasks}

    def merged(lam):
        return {k: theta0[k] + lam * sum(tvs[t][k] for t in tasks) for k in theta0}

    hand_curve = [np.mean([_hand_acc(zoo, merged(lam), t) for t in tasks]) for lam in SETTINGS["lambdas"]]
    assert v["merge_curve"]["mean"] == pytest.approx(hand_curve, abs=1e-6)
    best = SETTINGS["lambdas"][int(np.argmax(np.round(hand_curve, 12)))]
    assert v["summary"]["best_lambda"] == best
    third = np.mean([_hand_acc(zoo, merged(1 / len(tasks)), t) for t in tasks])
    assert v["summary"]["merged_at_1/T"] == pytest.approx(third, abs=1e-6)
    pre = np.mean([_hand_acc(zoo, theta0, t) for t in tasks])
    ind = np.mean([_hand_acc(zoo, zoo.finetuned(t, "sam"), t) for t in tasks])
    assert v["summary"]["pretrained"] == pytest.approx(pre, abs=1e-6)
    assert v["summary"]["individual"] == pytest.approx(ind, abs=1e-6)
    assert v["summary"]["gap_closed_best"] == pytest.approx((max(hand_curve) - pre) / (ind - pre), abs=1e-6)


def test_own_gain_and_damage_curves_by_hand(tiny_zoo, diag):
    zoo = open_zoo(tiny_zoo)
    theta0 = zoo.pretrained()
    tasks = zoo.tasks
    curves = diag["variants"]["plain"]["curves"]
    tvs = {t: zoo.task_vector(t, "plain") for t in tasks}
    t = tasks[1]
    others = [s for s in tasks if s != t]
    for a, own, dmg in zip(SETTINGS["alphas"], curves["own"][t], curves["damage"][t]):
        own_params = {k: theta0[k] + a * tvs[t][k] for k in theta0}
        dmg_params = {k: theta0[k] + a * sum(tvs[s][k] for s in others) for k in theta0}
        assert own == pytest.approx(_hand_acc(zoo, own_params, t), abs=1e-6)
        assert dmg == pytest.approx(_hand_acc(zoo, dmg_params, t), abs=1e-6)
    # α = 0 is the pretrained model, α = 1 on the own curve is the fine-tuned model
    assert curves["own"][t][0] == pytest.approx(diag["variants"]["plain"]["pretrained_per_task"][t])
    assert curves["own"][t][-1] == pytest.approx(diag["variants"]["plain"]["individual_per_task"][t], abs=1e-6)


def test_diagnostics_cached_and_checked(tiny_zoo_copy):
    zoo = open_zoo(tiny_zoo_copy)
    quick = {"n_per_task": 16, "lambdas": [0.0, 0.5], "alphas": [0.0, 1.0]}
    first = diagnose_zoo(zoo, variants=["plain"], settings=quick, device="cpu")
    files = list((tiny_zoo_copy / "analysis" / "cache").glob("diagnostics-*.json"))
    assert len(files) == 1
    again = diagnose_zoo(zoo, variants=["plain"], settings=quick, device="cpu")
    assert again == first
    with pytest.raises(ConfigError, match="unknown variant"):
        diagnose_zoo(zoo, variants=["nope"], settings=quick)
    with pytest.raises(ConfigError, match="unknown setting"):
        diagnose_zoo(zoo, settings={"n_images": 3})


def test_view_tables_and_figures_read_the_numbers(tiny_zoo, diag):
    from sammerge.explorer.diagnostics_view import (merge_curve_figure, own_and_damage_figure, per_task_table, reading,
                                                    summary_table)
    table = summary_table(diag)
    assert list(table["variant"]) == ["plain", "SAM"]
    sam = diag["variants"]["sam"]["summary"]
    assert table.loc[1, "gap closed (%)"] == pytest.approx(100 * sam["gap_closed_best"])
    assert table.loc[1, "best λ"] == sam["best_lambda"]
    assert len(per_task_table(diag)) == 2 * len(diag["tasks"])
    fig = merge_curve_figure(diag)
    assert [list(t.y) for t in fig.data] == [[100 * m for m in diag["variants"][v]["merge_curve"]["mean"]]
                                             for v in ("plain", "sam")]
    task = diag["tasks"][0]
    fig = own_and_damage_figure(diag, task)
    assert list(fig.data[1].y) == [100 * a for a in diag["variants"]["plain"]["curves"]["damage"][task]]
    assert f"λ = {sam['best_lambda']:g}" in reading(diag)


def test_diagnose_cli(tiny_zoo_copy, capsys, tmp_path):
    from sammerge.cli import main
    assert main(["diagnose", str(tiny_zoo_copy), "--quick", "--quiet", "--variants", "plain"]) == 0
    out = capsys.readouterr().out
    assert "gap closed (%)" in out and "digits" in out
    assert main(["diagnose", str(tmp_path / "missing"), "--quick"]) == 2
    assert "error:" in capsys.readouterr().err


def test_fair_sam_comparisons_by_hand():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_regime.py"
    spec = importlib.util.spec_from_file_location("demo_regime_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def v(ind, merged, norm=0.9):
        return {"individual_test": ind, "merged_test": merged, "normalized": norm}

    variants = {"plain_half": v(0.50, 0.40), "plain": v(0.60, 0.44), "plain_2x": v(0.70, 0.46),
                "sam": v(0.65, 0.47, 0.95)}
    fair = mod.fair_comparisons(variants)["sam"]
    assert fair["equal_steps"]["merged"] == pytest.approx(0.03)
    assert fair["equal_steps"]["individual"] == pytest.approx(0.05)
    assert fair["equal_compute"]["merged"] == pytest.approx(0.01)
    # plain family interpolated at SAM's individual 0.65: halfway between 0.44 and 0.46
    assert fair["equal_individual"]["plain_merged_at"] == pytest.approx(0.45)
    assert fair["equal_individual"]["merged"] == pytest.approx(0.02)
    assert fair["equal_individual"]["interpolated"] is True
    # outside the plain family's range: extrapolated from the nearest segment, and flagged
    fair = mod.fair_comparisons({**variants, "sam": v(0.80, 0.50)})["sam"]
    assert fair["equal_individual"]["plain_merged_at"] == pytest.approx(0.48)
    assert fair["equal_individual"]["interpolated"] is False


def test_runs_of_one_seed_are_united():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_regime.py"
    spec = importlib.util.spec_from_file_location("demo_regime_bench2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run(seed, variants, build, pre=0.3):
        return {"seed": seed, "pretrained_test": pre, "build_time_s": build, "pretrain_time_s": 10.0,
                "variants": {n: {"individual_test": i, "merged_test": m, "normalized": m / i, "steps": s}
                             for n, (i, m, s) in variants.items()}}

    runs = mod.merge_runs([run(0, {"plain": (0.6, 0.45, 150), "sam": (0.58, 0.46, 150)}, 100.0),
                           run(0, {"plain_2x": (0.66, 0.47, 300)}, 60.0),
                           run(1, {"plain": (0.62, 0.44, 150)}, 90.0)])
    assert [r["seed"] for r in runs] == [0, 1]
    assert list(runs[0]["variants"]) == ["plain", "plain_2x", "sam"]
    assert runs[0]["build_time_s"] == pytest.approx(150.0)  # θ0 and heads (10 s) counted once
    assert runs[0]["fair"]["sam"]["equal_compute"]["merged"] == pytest.approx(-0.01)
    with pytest.raises(SystemExit, match="pretrained"):
        mod.merge_runs([run(0, {"plain": (0.6, 0.45, 150)}, 1.0), run(0, {"sam": (0.6, 0.45, 150)}, 1.0, pre=0.31)])


# -- degenerate on purpose: weights constructed so the case holds on every machine ------------------------------------
def _zoo_with_sam_at_theta0(path):
    """The fixture zoo with every SAM checkpoint replaced by θ0 itself: individual == pretrained on every task."""
    import json
    import shutil

    from sammerge.io import sha256_file
    from sammerge.zoo import MANIFEST_NAME

    manifest = json.loads((path / MANIFEST_NAME).read_text())
    pre = path / manifest["pretrained"]["file"]
    for c in manifest["checkpoints"]:
        if c["variant"] == "sam":
            shutil.copyfile(pre, path / c["file"])
            c["sha256"] = sha256_file(path / c["file"])
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    return open_zoo(path)


def test_no_gain_means_no_gap_to_close(tiny_zoo_copy):
    from sammerge.explorer.diagnostics_view import reading, summary_table

    zoo = _zoo_with_sam_at_theta0(tiny_zoo_copy)
    assert all(torch.equal(zoo.finetuned(t, "sam")[k], zoo.pretrained()[k]) for t in zoo.tasks for k in zoo.pretrained())
    diag = diagnose_zoo(zoo, settings=SETTINGS, device="cpu", use_cache=False)
    s = diag["variants"]["sam"]["summary"]
    assert s["individual"] == s["pretrained"]  # exactly: the same weights on the same images
    assert s["gap_closed_best"] is None or math.isnan(s["gap_closed_best"])
    # every λ gives θ0 (Σ τ = 0): a flat curve at the pretrained accuracy, best λ the smallest (ties → smaller λ)
    assert diag["variants"]["sam"]["merge_curve"]["mean"] == [s["pretrained"]] * len(SETTINGS["lambdas"])
    assert s["best_lambda"] == SETTINGS["lambdas"][0]
    table = summary_table(diag)
    assert math.isnan(table.loc[1, "gap closed (%)"])
    text = reading(diag)
    assert "fine-tuning gained nothing, so there is no gap to close" in text and "n/a % of the gap closed" in text
    # plain is untouched: its gap is a number
    assert not math.isnan(diag["variants"]["plain"]["summary"]["gap_closed_best"])
