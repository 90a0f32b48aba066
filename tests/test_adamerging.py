"""AdaMerging: entropy goes down, λ moves to the entropy optimum, specs merge as learned and round-trip."""
from __future__ import annotations

import math

import pytest
import torch

from sammerge.errors import ConfigError
from sammerge.evaluation.learners import get_learner
from sammerge.merging import (MergeSpec, from_mergekit_yaml, get_method, layers, merge_zoo,
                              resolve_and_merge, task_vector, to_mergekit_yaml)
from sammerge.merging.common import ties_parts
from sammerge.zoo import open_zoo

FAST = dict(steps=25, images_per_task=24, lr=0.05)


@pytest.fixture(scope="module")
def zoo(tiny_zoo):
    return open_zoo(tiny_zoo)


def plain_entropy(zoo, theta, tasks, n, seed):
    """Mean over tasks of the mean entropy, by an ordinary forward pass of a loaded encoder (independent path)."""
    from sammerge.evaluation.adamerging import unlabeled_images
    enc = zoo.create_encoder()
    enc.load_state_dict(theta)
    values = []
    with torch.no_grad():
        for t in tasks:
            logits = zoo.heads[t](enc(unlabeled_images(zoo, t, n, seed)))
            p = torch.softmax(logits.double(), -1)
            values.append(float((-(p * p.log()).sum(-1)).mean()))
    return sum(values) / len(values)


def test_registered_with_a_schema():
    learner = get_learner("adamerging")
    names = [p.name for p in learner.params]
    assert names == ["granularity", "base", "density", "steps", "lr", "images_per_task", "seed", "init", "clamp_low",
                     "clamp_high", "prior_weight", "holdout_per_task"]
    assert learner.defaults()["prior_weight"] == 0.0 and learner.defaults()["holdout_per_task"] == 0
    assert learner.param("granularity").choices == ("task", "layer")
    assert learner.param("base").choices == ("task_arithmetic", "ties")
    assert learner.defaults()["init"] == 0.3 and learner.to_dict()["kind"] == "learner"
    with pytest.raises(ConfigError, match="adamerging.*learns coefficients"):
        get_method("adamerging")
    with pytest.raises(ConfigError, match="clamp_low"):
        learner.validate_params({"clamp_low": 1.0, "clamp_high": 0.5})
    with pytest.raises(ConfigError, match="init"):
        learner.validate_params({"init": 1.5})
    with pytest.raises(ConfigError, match="unknown parameter 'beta'"):
        learner.validate_params({"beta": 1})


@pytest.mark.parametrize("granularity,base", [("task", "task_arithmetic"), ("layer", "ties")])
def test_entropy_decreases_and_the_spec_merges_as_learned(zoo, granularity, base):
    calls = []
    res = get_learner("adamerging")(zoo, "plain", granularity=granularity, base=base, **FAST,
                                    progress=lambda d, t, s="": calls.append((d, t)))
    assert len(res.entropy) == FAST["steps"] + 1 and not res.stopped
    assert calls[-1] == (FAST["steps"], FAST["steps"])
    assert res.entropy[res.best_step] < res.entropy[0] - 1e-3
    assert res.entropy[-1] < res.entropy[0]
    # the returned spec, merged by the ordinary merge path and scored by a plain forward, has the reported entropy
    merged = merge_zoo(zoo, res.spec)
    assert plain_entropy(zoo, merged, zoo.tasks, FAST["images_per_task"], 0) == pytest.approx(
        res.entropy[res.best_step], abs=1e-4)
    init_spec = res.spec.evolve(tasks=[t.model_copy(update={"weight": 0.3, "layer_weights": None})
                                       for t in res.spec.tasks])
    assert plain_entropy(zoo, merge_zoo(zoo, init_spec), zoo.tasks, 24, 0) == pytest.approx(res.entropy[0], abs=1e-4)
    # every λ in the declared clamp range
    assert all(0.0 <= v <= 1.0 for row in res.coefficients.values() for v in row.values())
    assert res.spec.learned["learner"] == "adamerging" and res.spec.learned["settings"]["base"] == base
    assert "unlabeled validation images" in res.spec.notes


def test_per_layer_merge_equals_hand_built_sum(zoo):
    res = get_learner("adamerging")(zoo, {"digits": "sam", "symbols": "plain"}, granularity="layer", base="ties",
                                    density=0.4, **FAST)
    assert res.groups == layers.group_names(zoo.pretrained())
    assert res.spec.method == "ties" and res.spec.params["vote"] == "unweighted"
    theta0 = zoo.pretrained()
    parts = ties_parts(theta0, [zoo.task_vector("digits", "sam"), zoo.task_vector("symbols", "plain")], 0.4)
    merged = merge_zoo(zoo, res.spec)
    for k, base in theta0.items():
        if base.is_floating_point():
            g = layers.group_of(k)
            want = base + res.coefficients["digits"][g] * parts[0][k] + res.coefficients["symbols"][g] * parts[1][k]
            assert torch.allclose(merged[k], want, atol=1e-6), k
    # task arithmetic base: θ0 + Σ λ_{t,g} τ_{t,g} from the fine-tuned checkpoints themselves
    res = get_learner("adamerging")(zoo, "sam", granularity="layer", **FAST)
    merged = merge_zoo(zoo, res.spec)
    for k, base in theta0.items():
        if base.is_floating_point():
            want = base + sum(res.coefficients[t][layers.group_of(k)] * (zoo.finetuned(t, "sam")[k] - base)
                              for t in zoo.tasks)
            assert torch.allclose(merged[k], want, atol=1e-6), k


def test_layer_wise_with_one_group_equals_task_wise(zoo):
    from sammerge.evaluation.adamerging import learn_coefficients, unlabeled_images
    task = get_learner("adamerging")(zoo, "plain", granularity="task", **FAST)
    theta0 = zoo.pretrained()
    keys = [k for k, v in theta0.items() if v.is_floating_point()]
    lam, trace, best, _, _ = learn_coefficients(
        theta0, [zoo.task_vector(t, "plain") for t in zoo.tasks], zoo.create_encoder(),
        [zoo.heads[t] for t in zoo.tasks], [unlabeled_images(zoo, t, 24, 0) for t in zoo.tasks],
        {"one": keys}, FAST["steps"], FAST["lr"], 0.3, (0.0, 1.0))
    assert trace == task.entropy and best == task.best_step
    assert [round(float(v), 6) for v in lam[:, 0]] == [task.coefficients[t]["all"] for t in zoo.tasks]
    # the task-wise spec (weights) and a per-layer spec with the same λ on every group merge identically
    groups = layers.group_names(theta0)
    as_layers = task.spec.evolve(tasks=[t.model_copy(update={"weight": 1.0,
                                                             "layer_weights": {g: t.weight for g in groups}})
                                        for t in task.spec.tasks])
    a, b = merge_zoo(zoo, task.spec), merge_zoo(zoo, as_layers)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_single_task_lambda_moves_toward_the_grid_optimum(zoo):
    """One task: the learned λ ends nearer the grid search's best λ (same entropy objective, measured by a plain
    forward pass) than the start, and its entropy is within a small margin of the grid's best.

    The objective is not convex in λ (on the tiny zoo entropy first rises with λ, then falls): the start is put on the
    grid optimum's side of the grid's highest point, so plain gradient descent must walk to it."""
    task, n = "digits", 32
    theta0, tv = zoo.pretrained(), zoo.task_vector(task, "plain")
    grid = [round(0.1 * i, 1) for i in range(0, 31)]
    scores = []
    for lam in grid:
        theta = {k: (v + lam * tv[k]) if v.is_floating_point() else v for k, v in theta0.items()}
        scores.append(plain_entropy(zoo, theta, [task], n, 0))
    i_best = min(range(len(grid)), key=scores.__getitem__)
    i_top = max(range(len(grid)), key=scores.__getitem__)
    best = grid[i_best]
    start = grid[(i_top + i_best + 1) // 2]  # between the hill and the optimum
    assert scores[grid.index(start)] > scores[i_best] + 0.01  # a real distance to walk
    res = get_learner("adamerging")(zoo, {task: "plain"}, steps=80, lr=0.05, images_per_task=n, init=start,
                                    clamp_low=0.0, clamp_high=3.0)
    learned = res.coefficients[task]["all"]
    assert abs(learned - best) < abs(start - best) - 0.05
    theta = {k: (v + learned * tv[k]) if v.is_floating_point() else v for k, v in theta0.items()}
    assert plain_entropy(zoo, theta, [task], n, 0) <= min(scores) + 0.02


def test_holdout_picks_the_step_by_the_held_out_entropy(zoo):
    """With held-out images the fitted trajectory is unchanged; the returned step is the held-out entropy's
    argmin, and that entropy is what a plain forward of the returned merge gives on images disjoint from the
    fitted ones."""
    from sammerge.data import unlabeled_draw
    settings = dict(steps=30, lr=0.1, images_per_task=16)
    plain = get_learner("adamerging")(zoo, "plain", **settings)
    held = get_learner("adamerging")(zoo, "plain", holdout_per_task=24, **settings)
    assert held.entropy == plain.entropy and not plain.holdout_entropy
    assert len(held.holdout_entropy) == settings["steps"] + 1
    assert held.best_step == min(range(len(held.holdout_entropy)), key=held.holdout_entropy.__getitem__)
    merged = merge_zoo(zoo, held.spec)
    enc = zoo.create_encoder()
    enc.load_state_dict(merged)
    values = []
    with torch.no_grad():
        for t in zoo.tasks:
            fit, heldout = unlabeled_draw(zoo, t, 16, 24, 0)
            assert len(heldout) == 24
            assert not any(torch.equal(a, b) for a in heldout for b in fit)  # disjoint draws
            p = torch.softmax(zoo.heads[t](enc(heldout)).double(), -1)
            values.append(float((-(p * p.log()).sum(-1)).mean()))
    assert sum(values) / len(values) == pytest.approx(held.holdout_entropy[held.best_step], abs=1e-4)
    assert held.spec.learned["holdout_trace"][held.best_step] == pytest.approx(held.holdout_entropy[held.best_step],
                                                                                abs=1e-5)
    assert "held-out" in held.spec.notes
    with pytest.raises(ConfigError, match="held-out unlabeled images asked for"):
        get_learner("adamerging")(zoo, "plain", steps=2, images_per_task=16, holdout_per_task=10**5)


def test_holdout_that_disagrees_with_the_fitted_images_keeps_the_start():
    """One weight λ·I, head logits = feature + b with b = (2, 0): on the fitted image x = (1, 0) the entropy falls as
    λ grows, on the held-out x = (−1, 0) it rises (logits 2 − λ and 0 meet at λ = 2). Without a holdout the last
    step is returned, with it the start."""
    from sammerge.evaluation.adamerging import learn_coefficients

    encoder = torch.nn.Linear(2, 2, bias=False)
    theta0 = {"weight": torch.zeros(2, 2)}
    tv = {"weight": torch.eye(2)}
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.copy_(torch.tensor([2.0, 0.0]))
    fit, held = [torch.tensor([[1.0, 0.0]])], [torch.tensor([[-1.0, 0.0]])]
    common = dict(groups={"all": ["weight"]}, steps=12, lr=0.05, init=0.3, clamp=(0.0, 1.0))
    alone = learn_coefficients(theta0, [tv], encoder, [head], fit, **common)
    assert alone.best_step == 12 and alone.entropy[-1] < alone.entropy[0]
    chosen = learn_coefficients(theta0, [tv], encoder, [head], fit, holdout=held, **common)
    assert chosen.entropy == alone.entropy  # the holdout does not steer the steps
    assert all(b > a for a, b in zip(chosen.holdout_entropy, chosen.holdout_entropy[1:]))
    assert chosen.best_step == 0 and float(chosen.lam) == pytest.approx(0.3)
    assert float(alone.lam) > 0.8  # 0.3 + 12 Adam steps of ≈ 0.05


def test_prior_weight_pulls_lambda_toward_init(zoo):
    """μ · mean (λ − init)²: the larger μ, the nearer λ stays to init; μ = 0 is the paper's AdaMerging; the returned
    point lowers entropy + penalty (plain forward) below the start's."""
    settings = dict(steps=40, lr=0.05, images_per_task=16, init=0.3, granularity="layer")
    runs = {mu: get_learner("adamerging")(zoo, "plain", prior_weight=mu, **settings) for mu in (0.0, 1.0, 1000.0)}
    assert runs[0.0].entropy == get_learner("adamerging")(zoo, "plain", **settings).entropy

    def offsets(res):
        return [v - 0.3 for row in res.coefficients.values() for v in row.values()]

    dist = {mu: math.sqrt(sum(d * d for d in offsets(r)) / len(offsets(r))) for mu, r in runs.items()}
    assert dist[0.0] > 0.05  # the entropy alone moves λ
    assert dist[1000.0] < dist[1.0] < dist[0.0]
    assert dist[1000.0] < 0.02
    res = runs[1.0]
    objective = plain_entropy(zoo, merge_zoo(zoo, res.spec), zoo.tasks, 16, 0) + 1.0 * dist[1.0] ** 2
    assert objective < res.entropy[0] - 1e-4
    assert "pull μ = 1" in res.spec.notes


def test_stop_returns_best_so_far(zoo):
    seen = []
    res = get_learner("adamerging")(zoo, "plain", steps=100, lr=0.05, images_per_task=16,
                                    should_stop=lambda: len(seen) >= 5, progress=lambda d, t, s="": seen.append(d))
    assert res.stopped and res.steps_run == 4 and res.spec.learned["stopped"] is True
    assert res.entropy[res.best_step] == min(res.entropy)
    assert "stopped early" in res.spec.notes


def test_learned_spec_round_trips(zoo, tmp_path):
    res = get_learner("adamerging")(zoo, "sam", granularity="layer", **FAST)
    spec = res.spec
    back = MergeSpec.from_json(spec.to_json())
    assert back.key() == spec.key() and back.learned == spec.learned
    url, warnings = MergeSpec.from_query(spec.to_query(), zoo)
    assert not warnings and url.key() == spec.key()
    spec.save(tmp_path / "learned.yaml")
    assert MergeSpec.load(tmp_path / "learned.yaml").key() == spec.key()
    # mergekit: task-arithmetic AdaMerging is expressible; reading the export back merges the same weights
    merged, _ = resolve_and_merge(from_mergekit_yaml(to_mergekit_yaml(spec)))
    ours = merge_zoo(zoo, spec)
    assert all(torch.allclose(ours[k], merged[k], atol=1e-6) for k in ours)
    tw = get_learner("adamerging")(zoo, "plain", **FAST).spec
    mk = from_mergekit_yaml(to_mergekit_yaml(tw))
    assert [t.weight for t in mk.tasks] == [t.weight for t in tw.tasks] and not mk.has_layer_weights
    ties = get_learner("adamerging")(zoo, "plain", base="ties", **FAST).spec
    assert "SEMANTICS DIFFER" in to_mergekit_yaml(ties)
    assert math.isfinite(float(task_vector(merge_zoo(zoo, ties), zoo.pretrained())["conv1.weight"].sum()))


# -- the pages -----------------------------------------------------------------------------------------------------

def _run_page(monkeypatch, zoo_dir, page):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("SAMMERGE_ZOO", str(zoo_dir))
    monkeypatch.chdir(root)
    return AppTest.from_file(str(root / page), default_timeout=300).run()


def _clean(at):
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def test_layer_coefficients_page(monkeypatch, tiny_zoo_copy):
    tiny_zoo = tiny_zoo_copy  # a private path: the server-wide caches (explorer, learned results) stay apart
    from sammerge.evaluation.evaluator import Evaluator, mean_accuracy
    from sammerge.explorer.layers_view import LEARNED

    zoo = open_zoo(tiny_zoo)
    val = Evaluator.from_zoo(zoo, split="val", n_per_task=256, seed=0, device="cpu")
    at = _run_page(monkeypatch, tiny_zoo, "pages/5_Layer_coefficients.py")
    _clean(at)
    # the editor starts at λ = 0.3 everywhere: task arithmetic at λ = 0.3 over every task (plain), scored independently
    ta = MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": 0.3}, "plain")
    assert _metric(at, "Mean accuracy") == f"{mean_accuracy(val.evaluate(merge_zoo(zoo, ta))):.1%}"
    at.number_input(key="lc_set_steps").set_value(6).run()
    at.selectbox(key="lc_set_granularity").set_value("layer").run()
    at.number_input(key="lc_set_holdout_per_task").set_value(16).run()
    at.button(key="lc_learn").click().run()
    _clean(at)
    # the learning runs as a job of the server's shared worker, not in the page's script run
    from sammerge.jobs.worker import get_worker
    jobs = [t for t in get_worker().tasks() if t.key.startswith(f"adamerging:{zoo.path}:")]
    assert len(jobs) == 1
    assert jobs[0].wait(timeout=600) is True
    at.run()
    _clean(at)
    reading = next(m.value for m in at.markdown if m.value.startswith("**Reading:**"))
    assert "plain: mean λ" in reading and "SAM: mean λ" in reading and "of 6" in reading
    assert reading.count("held-out") == 2
    settings = {**get_learner("adamerging").defaults(), "steps": 6, "granularity": "layer", "holdout_per_task": 16}
    learned = LEARNED.get(zoo, "sam", settings)
    assert learned is not None and learned.steps_run == 6 and len(learned.holdout_entropy) == 7
    assert f"step {learned.best_step} of 6" in reading
    assert _metric(at, "SAM: mean accuracy") == f"{mean_accuracy(val.evaluate(merge_zoo(zoo, learned.spec))):.1%}"
    # loading the learned SAM coefficients into the editor reproduces the learned merge on SAM checkpoints
    at.radio(key="lc_source").set_value("learned (SAM)").run()
    _clean(at)
    assert at.radio(key="lc_variant").value == "sam"
    assert _metric(at, "Mean accuracy") == _metric(at, "SAM: mean accuracy")
    assert {d.key for d in at.download_button} >= {"lc_dl_json_sam", "lc_dl_mk_sam", "lc_dl_spec", "lc_dl_mk"}


def test_paper_table_page_adamerging_rows(monkeypatch, tiny_zoo_copy):
    tiny_zoo = tiny_zoo_copy  # a private path: the page's cached table must not leak into other page tests
    import json

    from sammerge.evaluation.protocol import adamerging_table
    from sammerge.explorer import paper

    monkeypatch.setattr(paper, "ADAMERGING_SETTINGS", {"steps": 4, "images_per_task": 16})
    monkeypatch.setenv("SAMMERGE_TABLE_METHODS", "task_arithmetic,ties")  # the rows around AdaMerging's
    at = _run_page(monkeypatch, tiny_zoo, "pages/4_Paper_table.py")
    at.button(key="pt_compute").click().run()
    at.button(key="pt_ada").click().run()
    _clean(at)
    shown = at.dataframe[0].value
    ada = shown[shown["method"].str.contains("AdaMerging")]
    assert len(ada) == 2 * len(open_zoo(tiny_zoo).variants)
    want = adamerging_table(open_zoo(tiny_zoo), ("task", "layer"), settings={"steps": 4, "images_per_task": 16})
    assert list(ada["mean"]) == pytest.approx(list(want["mean"]))  # deterministic: same numbers again
    assert list(ada["normalized"]) == pytest.approx(list(want["normalized"]))
    assert "pt_learned" in {d.key for d in at.download_button}
    specs = json.loads(paper.learned_json(want))
    assert len(specs) == len(want) and all(MergeSpec.from_dict(d).has_layer_weights == ("layer-wise" in k)
                                           for k, d in specs.items())


# -- the command line ----------------------------------------------------------------------------------------------

def test_cli_learn_and_table(tiny_zoo, tmp_path, capsys):
    import json

    from sammerge.cli import main
    out = tmp_path / "learned.yaml"
    assert main(["learn", str(tiny_zoo), str(out), "--variant", "sam", "--granularity", "layer", "--steps", "4",
                 "--images-per-task", "16", "--quiet"]) == 0
    spec = MergeSpec.load(out)
    assert spec.has_layer_weights and spec.variants == {t: "sam" for t in open_zoo(tiny_zoo).tasks}
    assert spec.learned["settings"]["steps"] == 4
    again = get_learner("adamerging")(open_zoo(tiny_zoo), "sam", granularity="layer", steps=4, images_per_task=16)
    assert spec.layer_weights == again.spec.layer_weights  # seeded and deterministic
    assert "layer1.0" in capsys.readouterr().out
    assert main(["learn", str(tiny_zoo), str(tmp_path / "x.txt")]) == 2
    assert main(["learn", str(tiny_zoo), str(tmp_path / "x.json"), "--clamp-low", "0.5"]) == 2  # init 0.3 outside
    assert "init" in capsys.readouterr().err
    specs = tmp_path / "specs.json"
    assert main(["table", str(tiny_zoo), "--methods", "task_arithmetic", "--n-val", "16", "--n-test", "16",
                 "--adamerging", "task", "--ada-steps", "3", "--ada-base", "ties", "--learned-out", str(specs),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert text.count("TIES-AdaMerging (task-wise)") == 2 and "entropy minimization on unlabeled" in text
    learned = json.loads(specs.read_text())
    assert sorted(learned) == ["plain · TIES-AdaMerging (task-wise)", "sam · TIES-AdaMerging (task-wise)"]
    assert all(MergeSpec.from_dict(d).method == "ties" for d in learned.values())


def test_benchmark_quick(tiny_zoo, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "adamerging.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "adamerging.py"), "--zoos", str(tiny_zoo),
                           "--steps", "3", "--n-val", "16", "--n-test", "16", "--json", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = data["runs"][0]["variants"]["sam"]["rows"]
    assert set(rows) == {"task_arithmetic", "ties", "adamerging_task_ta", "adamerging_layer_ta",
                         "adamerging_task_ties", "adamerging_layer_ties"}
    assert data["settings"]["steps"] == 3 and "| AdaMerging, layer-wise |" in proc.stdout


def test_learning_job_can_be_cancelled_and_keeps_the_best_so_far(monkeypatch, tiny_zoo_copy):
    from sammerge.explorer.layers_view import LEARNED
    from sammerge.jobs.worker import get_worker

    zoo = open_zoo(tiny_zoo_copy)
    at = _run_page(monkeypatch, tiny_zoo_copy, "pages/5_Layer_coefficients.py")
    at.number_input(key="lc_set_steps").set_value(1000).run()
    at.button(key="lc_learn").click().run()
    _clean(at)
    [job] = [t for t in get_worker().tasks() if t.key.startswith(f"adamerging:{zoo.path}:")]
    job.cancel()
    assert job.wait(timeout=600) is True
    settings = {**get_learner("adamerging").defaults(), "steps": 1000}
    first = LEARNED.get(zoo, zoo.variants[0], settings)
    assert first is not None and first.stopped and first.steps_run < 1000
    assert LEARNED.get(zoo, zoo.variants[1], settings) is None  # the job ended at the cancel


def test_single_task_labelled_proxy_moves_toward_the_grid_search_best_lambda(zoo):
    """The issue's check: one task, the optimizer run on a labelled proxy (cross-entropy with the validation labels
    instead of the entropy); a grid search of the same loss by ordinary forward passes gives the best λ, and the
    learned λ ends nearer to it than where it started."""
    from sammerge.evaluation.adamerging import learn_coefficients
    from sammerge.merging.task_vector import float_keys

    task, n = "digits", 64
    theta0, tv = zoo.pretrained(), zoo.task_vector(task, "plain")
    split = zoo.split(task, "val").subset(n, 0)
    enc = zoo.create_encoder()

    def labelled_loss(lam):
        theta = {k: (v + lam * tv[k]) if v.is_floating_point() else v for k, v in theta0.items()}
        enc.load_state_dict(theta)
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(zoo.heads[task](enc(split.images)), split.labels))

    grid = [round(0.1 * i, 1) for i in range(0, 31)]
    losses = [labelled_loss(lam) for lam in grid]
    best = grid[min(range(len(grid)), key=losses.__getitem__)]
    start = 0.0 if best >= 1.5 else 3.0  # start on the far side of the grid from the optimum
    lam, trace, _, _, _ = learn_coefficients(theta0, [tv], zoo.create_encoder(), [zoo.heads[task]], [split.images],
                                          {"all": float_keys(theta0)}, steps=120, lr=0.05, init=start,
                                          clamp=(0.0, 3.0), labels=[split.labels])
    learned = float(lam[0, 0])
    assert trace[-1] < trace[0]
    assert abs(learned - best) < abs(start - best) / 2, (learned, best, start)
    assert labelled_loss(learned) <= labelled_loss(start)


def test_learns_through_batch_norm_running_statistics():
    """A conv → BN encoder (eval mode, running statistics that differ per fine-tuned model): the learned λ's trace is
    the entropy of an ordinary forward of the merged weights, running statistics merged too (torch's batch norm
    refuses statistics that require grad; they are constants of each step)."""
    from sammerge.evaluation.adamerging import entropy, learn_coefficients
    from sammerge.merging.task_vector import float_keys

    torch.manual_seed(0)

    def encoder():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()

    base = encoder()
    theta0 = {k: v.clone() for k, v in base.state_dict().items()}
    tvs = []
    for _ in range(2):
        tv = {k: 0.3 * torch.randn_like(v) if v.is_floating_point() else torch.zeros_like(v) for k, v in theta0.items()}
        tv["1.running_var"] = tv["1.running_var"].abs()  # a variance stays positive
        tvs.append(tv)
    heads = [torch.nn.Linear(8, 4) for _ in range(2)]
    images = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    groups = layers.layer_groups(float_keys(theta0))
    lam, trace, best_step, stopped, _ = learn_coefficients(theta0, tvs, encoder(), heads, images, groups, steps=5,
                                                        lr=0.05, init=0.3, clamp=(0.0, 1.0))
    assert not stopped and len(trace) == 6 and trace[best_step] <= trace[0]
    assert any("running_mean" in k for ks in groups.values() for k in ks)  # the statistics are merged keys

    def plain(coef):  # θ0 + Σ_t λ_t τ_t with every key of a group at that group's λ, loaded into a fresh module
        merged = {k: v.clone() for k, v in theta0.items()}
        for g, ks in enumerate(groups.values()):
            for k in ks:
                merged[k] = theta0[k] + sum(float(coef[t, g]) * tvs[t][k] for t in range(2))
        enc = encoder()
        enc.load_state_dict(merged)
        with torch.no_grad():
            return sum(float(entropy(h(enc(x))).mean()) for h, x in zip(heads, images)) / 2

    assert trace[0] == pytest.approx(plain(torch.full_like(lam, 0.3)), rel=1e-5)
    assert trace[best_step] == pytest.approx(plain(lam), rel=1e-5)
