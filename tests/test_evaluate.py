"""Evaluator, λ search and `sammerge eval`: batched equals one-by-one, numbers match a direct computation."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from sammerge.cli import main as cli_main
from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator, params_digest
from sammerge.merging import get_method
from sammerge.evaluation.evaluator import mean_accuracy
from sammerge.evaluation.protocol import evaluate_spec, paper_table
from sammerge.evaluation.search import lambda_grid, sweep_shared_lambda
from sammerge.merging import MergeSpec
from sammerge.zoo import open_zoo


@pytest.fixture(scope="module")
def zoo(tiny_zoo):
    return open_zoo(tiny_zoo)


@pytest.fixture(scope="module")
def val_eval(zoo):
    return Evaluator.from_zoo(zoo, split="val", n_per_task=64)


def _direct(zoo, params, split, n, seed=0):
    """Reference: a fresh module, load_state_dict, per-task forward — the naive way."""
    encoder = zoo.create_encoder()
    encoder.load_state_dict(params)
    out = {}
    with torch.no_grad():
        for task in zoo.tasks:
            part = zoo.split(task, split).subset(n, seed)
            logits = zoo.heads[task](encoder(part.images))
            out[task] = (float((logits.argmax(1) == part.labels).float().mean()),
                         float(F.cross_entropy(logits, part.labels)))
    return out


def test_evaluate_matches_naive_reference(zoo, val_eval):
    params = zoo.finetuned("digits", "sam")
    result = val_eval.evaluate(params)
    ref = _direct(zoo, params, "val", 64)
    for task in zoo.tasks:
        assert result[task].accuracy == ref[task][0]
        assert result[task].loss == pytest.approx(ref[task][1], rel=1e-5, abs=1e-6)
        assert result[task].n == 64


def test_batched_equals_one_by_one(zoo):
    theta0 = zoo.pretrained()
    tvs = [zoo.task_vector(t, "plain") for t in zoo.tasks]
    configs = [get_method("task_arithmetic")(theta0, tvs, **{"lambda": lam}) for lam in (0.0, 0.3, 0.6, 1.0, 1.4)]
    one = Evaluator.from_zoo(zoo, split="val", n_per_task=64)
    many = Evaluator.from_zoo(zoo, split="val", n_per_task=64)
    singles = [one.evaluate(c) for c in configs]
    batched = many.evaluate_many(configs, chunk_size=3, strategy="vmap")
    looped = Evaluator.from_zoo(zoo, split="val", n_per_task=64, chunk_size=40).evaluate_many(configs, strategy="loop")
    for s, b, c in zip(singles, batched, looped):
        assert s == c  # the chunked forward gives bit-identical results
        for task in zoo.tasks:
            assert s[task].accuracy == b[task].accuracy  # identical predictions
            assert s[task].loss == pytest.approx(b[task].loss, rel=1e-5, abs=1e-6)


def test_cache_and_digest(zoo, val_eval):
    theta0 = zoo.pretrained()
    val_eval.evaluate(theta0)
    before = val_eval.forward_count
    val_eval.evaluate({k: v.clone() for k, v in theta0.items()})  # same values → cache hit
    assert val_eval.forward_count == before
    changed = {k: v.clone() for k, v in theta0.items()}
    key = next(k for k, v in changed.items() if v.is_floating_point())
    changed[key] = changed[key] + 1e-3
    assert params_digest(changed) != params_digest(theta0)
    val_eval.evaluate(changed)
    assert val_eval.forward_count == before + 1


def test_subsets_are_deterministic(zoo):
    a = Evaluator.from_zoo(zoo, split="val", n_per_task=32, seed=3)
    b = Evaluator.from_zoo(zoo, split="val", n_per_task=32, seed=3)
    c = Evaluator.from_zoo(zoo, split="val", n_per_task=32, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_bad_evaluator_input(zoo):
    with pytest.raises(ConfigError, match="split"):
        Evaluator.from_zoo(zoo, split="dev")
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        Evaluator.from_zoo(zoo, tasks=["nope"])


def test_shared_lambda_sweep_picks_argmax(zoo, val_eval):
    theta0 = zoo.pretrained()
    tvs = [zoo.task_vector(t, "sam") for t in zoo.tasks]
    test_eval = Evaluator.from_zoo(zoo, split="test", n_per_task=64)
    sweep = sweep_shared_lambda(val_eval, "task_arithmetic", theta0, tvs, test_evaluator=test_eval,
                                task_ids=zoo.tasks)
    assert sweep.lambdas == lambda_grid("task_arithmetic") and len(sweep.val_mean) == 21
    assert sweep.best_val_mean == max(sweep.val_mean)
    assert sweep.best_lambda == lambda_grid("task_arithmetic")[sweep.val_mean.index(max(sweep.val_mean))]
    # the reported test accuracy is that of the merge at the chosen λ, computed directly
    direct = get_method("task_arithmetic")(theta0, tvs, **{"lambda": sweep.best_lambda})
    expected = test_eval.evaluate(direct)
    for task in zoo.tasks:
        assert sweep.test[task].accuracy == pytest.approx(expected[task].accuracy, abs=1 / 64 + 1e-9)
    # λ = 0 is the pretrained model
    pre = val_eval.evaluate(theta0)
    assert sweep.val_mean[0] == pytest.approx(mean_accuracy(pre))


def test_paper_table(zoo):
    table = paper_table(zoo, methods=("weight_average", "task_arithmetic", "ties"), n_val=32, n_test=32)
    assert set(table["variant"]) == set(zoo.variants)
    assert len(table) == len(zoo.variants) * 5
    ind = table[table["method"] == "individual fine-tuned"]
    assert (ind["normalized"] == 1.0).all()
    for _, row in table.iterrows():
        assert row["mean"] == pytest.approx(sum(row[t] for t in zoo.tasks) / len(zoo.tasks))


def test_eval_cli_json_and_csv(zoo, tmp_path, capsys):
    config = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.4},
                               {"digits": "sam", "latin_upper": "plain", "symbols": "sam"})
    path = tmp_path / "merge.yaml"
    config.save(path)
    assert cli_main(["eval", str(zoo.path), str(path), "--split", "val", "--n-per-task", "64"]) == 0
    data = json.loads(capsys.readouterr().out)
    results, individual, _, _ = evaluate_spec(zoo, config, split="val", n_per_task=64)
    assert data["mean_accuracy"] == pytest.approx(sum(r.accuracy for r in results.values()) / 3)
    by_task = {row["task"]: row for row in data["per_task"]}
    assert by_task["digits"]["variant"] == "sam"
    assert by_task["digits"]["accuracy"] == pytest.approx(results["digits"].accuracy)
    # normalized accuracy: numerator and denominator on the same 64 images (an independent plain evaluation)
    from sammerge.evaluation.evaluator import Evaluator
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=64, tasks=["digits"])
    own = ev.evaluate(zoo.finetuned("digits", "sam"))["digits"].accuracy
    assert individual["digits"].accuracy == pytest.approx(own)
    assert by_task["digits"]["normalized"] == pytest.approx(results["digits"].accuracy / own)
    out = tmp_path / "r.csv"
    assert cli_main(["eval", str(zoo.path), str(path), "--format", "csv", "--out", str(out), "--n-per-task", "64",
                     "--split", "val"]) == 0
    assert out.read_text().splitlines()[0].startswith("task,variant,split,accuracy,loss,n")


def test_eval_cli_bad_inputs(zoo, tmp_path, capsys):
    assert cli_main(["eval", str(zoo.path), str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    config = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.4})
    data = config.to_dict()
    data["tasks"][0]["checkpoint"] = str(tmp_path / "gone.safetensors")
    data["tasks"][0]["sha256"] = None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    assert cli_main(["eval", str(zoo.path), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "gone.safetensors" in err and "not found" in err
    with pytest.raises(ConfigError, match="unknown variant"):
        MergeSpec.for_zoo(zoo, "task_arithmetic", variants={"digits": "asam"})


def test_table_cli(zoo, tmp_path, capsys):
    out = tmp_path / "table.csv"
    assert cli_main(["table", str(zoo.path), "--methods", "task_arithmetic", "ties", "--n-val", "32",
                     "--n-test", "32", "--format", "csv", "--out", str(out), "--quiet"]) == 0
    import pandas as pd
    frame = pd.read_csv(out)
    assert list(frame["variant"].unique()) == zoo.variants
    assert set(frame["method"]) == {"pretrained (zero-shot heads)", "individual fine-tuned", "Task arithmetic",
                                    "TIES merging"}
    direct = paper_table(zoo, methods=("task_arithmetic", "ties"), n_val=32, n_test=32)
    for (_, a), (_, b) in zip(frame.iterrows(), direct.iterrows()):
        assert a["mean"] == pytest.approx(100 * b["mean"], abs=0.01)
    assert cli_main(["table", str(zoo.path), "--methods", "nope"]) == 2
    assert "unknown merge method 'nope'" in capsys.readouterr().err
    assert cli_main(["table", str(zoo.path), "--methods", "task_arithmetic", "--n-val", "16", "--n-test", "16",
                     "--format", "latex", "--quiet"]) == 0
    assert "\\begin{tabular}" in capsys.readouterr().out


# -- the protocol against independent computations ------------------------------------------------------------

def test_paper_table_against_a_hand_computed_protocol(zoo):
    """Brute force, independently: λ by argmax of *validation* mean over the grid (ties → smaller λ), plain
    tensor arithmetic, a fresh module per model; test accuracy at that λ; the pretrained and individual rows."""
    n_val, n_test = 16, 64
    table = paper_table(zoo, methods=("task_arithmetic",), variants=["plain"], n_val=n_val, n_test=n_test)
    theta0 = zoo.pretrained()
    taus = [zoo.task_vector(t, "plain") for t in zoo.tasks]
    grid = [round(0.05 * i, 2) for i in range(21)]

    def model(lam):
        return {k: v + lam * sum(t[k] for t in taus) if v.is_floating_point() else v for k, v in theta0.items()}

    val = {lam: _direct(zoo, model(lam), "val", n_val) for lam in grid}
    val_mean = {lam: sum(a for a, _ in r.values()) / len(r) for lam, r in val.items()}
    best = max(grid, key=lambda lam: (round(val_mean[lam], 12), -lam))
    test_at = {lam: _direct(zoo, model(lam), "test", n_test) for lam in grid}
    test_best = max(grid, key=lambda lam: (sum(a for a, _ in test_at[lam].values()), -lam))
    row = table[table["method_id"] == "task_arithmetic"].iloc[0]
    assert row["best λ"] == best
    assert row["val mean"] == pytest.approx(val_mean[best], abs=1e-6)
    for t in zoo.tasks:
        assert row[t] == pytest.approx(test_at[best][t][0], abs=1e-6)
    # this data separates the two protocols: choosing λ on test would give another row
    assert best != test_best
    pre = _direct(zoo, theta0, "test", n_test)
    ind = {t: _direct(zoo, zoo.finetuned(t, "plain"), "test", n_test)[t][0] for t in zoo.tasks}
    pre_row = table[table["method"].str.startswith("pretrained")].iloc[0]
    ind_row = table[table["method"] == "individual fine-tuned"].iloc[0]
    for t in zoo.tasks:
        assert pre_row[t] == pytest.approx(pre[t][0], abs=1e-6)
        assert ind_row[t] == pytest.approx(ind[t], abs=1e-6)
    assert row["normalized"] == pytest.approx(sum(test_at[best][t][0] / ind[t] for t in zoo.tasks) / len(zoo.tasks))
    assert pre_row["normalized"] == pytest.approx(sum(pre[t][0] / ind[t] for t in zoo.tasks) / len(zoo.tasks))


def test_normalized_accuracy_is_undefined_not_zero_for_a_zero_reference():
    import math

    from sammerge.evaluation.evaluator import TaskResult
    from sammerge.evaluation.protocol import normalized_accuracy, summarize

    assert normalized_accuracy(0.3, 0.6) == pytest.approx(0.5)
    assert math.isnan(normalized_accuracy(0.3, 0.0))
    s = summarize({"a": TaskResult(0.5, 1.0, 10), "b": TaskResult(0.2, 2.0, 10)}, {"a": 1.0, "b": 0.4})
    assert s.mean == pytest.approx(0.35) and s.normalized == pytest.approx(0.5) and s.mean_loss == pytest.approx(1.5)


def test_evaluate_many_returns_every_result_when_the_cache_overflows(tiny_zoo):
    """A cached setting evicted while K others are evaluated (K near the cache size) is still returned."""
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.zoo import open_zoo

    zoo = open_zoo(tiny_zoo)
    ev = Evaluator.from_zoo(zoo, split="val", n_per_task=8, seed=0)
    ev.cache_size = 3
    theta0 = zoo.pretrained()
    first = ev.evaluate(theta0)
    others = [{k: (v * (1 + 0.01 * i) if v.is_floating_point() else v) for k, v in theta0.items()} for i in range(1, 5)]
    fresh = Evaluator.from_zoo(zoo, split="val", n_per_task=8, seed=0)
    for strategy in ("loop", "vmap"):
        results = ev.evaluate_many([theta0, *others], strategy=strategy)
        assert len(results) == 5
        for got, params in zip(results, [theta0, *others]):  # θ0 was cached, then evicted meanwhile
            want = first if params is theta0 else fresh.evaluate(params)
            assert all(got[t].accuracy == want[t].accuracy and abs(got[t].loss - want[t].loss) < 1e-5 for t in want)
