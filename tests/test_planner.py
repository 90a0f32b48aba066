"""The merge planner: the plan against an exhaustive brute force, the measured groups against independent
computations (the explorer's validation numbers, a plain forward on test), the CLI's JSON against its HTML report,
and the report opened offline in Chromium."""
from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from sammerge.planner.compat import GroupResult, all_subsets, measure_groups
from sammerge.planner.plan import plan_groups
from sammerge.zoo import open_zoo


def _synthetic(tasks, seed):
    """Random losses (larger groups lose more); each task's own accuracy 60 % + 5 % per position."""
    rng = random.Random(seed)
    own = {t: 0.6 + 0.05 * i for i, t in enumerate(tasks)}
    out = {(t,): GroupResult((t,), None, None, None, {t: own[t]}, {t: own[t]}, {t: 0.0}) for t in tasks}
    for g in all_subsets(tasks):
        losses = {t: round(rng.uniform(-1, 4 + len(g)), 2) for t in g}
        out[g] = GroupResult(g, "task_arithmetic", 0.3, 0.4, {t: own[t] - losses[t] / 100 for t in g},
                             {t: own[t] for t in g}, losses)
    return out


def _brute_force(results, tasks, tol, floors=None):
    """Every labelling of tasks with group numbers, canonicalized: the fewest groups, then least total, worst loss;
    a merged group must keep every task within ``tol`` points and at or above its floor (%)."""
    floors = floors or {}
    best = None
    for labels in itertools.product(range(len(tasks)), repeat=len(tasks)):
        blocks = {}
        for t, lab in zip(tasks, labels):
            blocks.setdefault(lab, []).append(t)
        part = [tuple(b) for b in blocks.values()]
        if any(len(b) > 1 and (max(results[b].loss_points.values()) > tol
                               or any(100 * results[b].merged[t] < floors.get(t, 0) for t in b)) for b in part):
            continue
        losses = [x for b in part for x in results[b].loss_points.values()]
        key = (len(part), round(sum(losses), 9), round(max(losses), 9))
        if best is None or key < best[0]:
            best = (key, sorted(part))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tol, floors", [(0.0, None), (2.0, None), (4.5, None), (4.5, {"a": 58.0, "c": 68.5}),
                                         (100.0, {"b": 63.0, "d": 73.0, "e": 79.0})])
def test_plan_equals_an_exhaustive_brute_force(seed, tol, floors):
    tasks = ["a", "b", "c", "d", "e"]
    results = _synthetic(tasks, seed)
    plan = plan_groups(results, tasks, tol, floors)
    key, part = _brute_force(results, tasks, tol, floors)
    losses = [x for g in plan.groups for x in g.loss_points.values()]
    assert (len(plan.groups), round(sum(losses), 9), round(max(losses), 9)) == key
    assert sorted(g.tasks for g in plan.groups) == part
    assert all(g.worst_loss <= tol + 1e-9 for g in plan.stages)
    assert all(100 * g.merged[t] >= v - 1e-9 for g in plan.stages for t, v in (floors or {}).items() if t in g.tasks)


def test_a_task_whose_own_model_is_below_its_floor_stays_separate_and_is_named():
    tasks = ["a", "b", "c"]
    results = _synthetic(tasks, 0)
    plan = plan_groups(results, tasks, 100.0, {"a": 61.0, "b": 10.0})  # a's own model: 60 %
    assert "a" in plan.separate and plan.below_floor == ["a"]
    assert plan_groups(results, tasks, 100.0, {"b": 10.0}).below_floor == []


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("tol, floors", [(2.0, None), (4.5, None), (6.0, {"b": 63.0})])
def test_greedy_plan_is_a_valid_maximal_partition_never_better_than_exact(seed, tol, floors):
    from sammerge.planner.greedy import greedy_plan
    from sammerge.planner.plan import mergeable
    tasks = list("abcdefg")
    results = _synthetic(tasks, seed)
    asked = []

    def measure(groups):
        asked.extend(groups)
        return {**{(t,): results[(t,)] for t in tasks}, **{g: results[g] for g in groups}}

    def key(group):
        return tuple(sorted(group, key=tasks.index))

    def ok(group):
        return mergeable(results[key(group)], tol, floors)

    plan, measured = greedy_plan(tasks, measure, tol, floors)
    assert plan.search == "greedy" and sorted(t for g in plan.groups for t in g.tasks) == tasks
    for g in plan.stages:
        assert g.tasks in asked and ok(g.tasks) and measured[g.tasks] == results[g.tasks]
        for s in plan.separate:  # maximal: a task that pairs well with every member does not fit the group
            if all(ok((s, m)) for m in g.tasks):
                assert not ok((*g.tasks, s))
    assert not any(ok(p) for p in itertools.combinations(plan.separate, 2))
    assert plan_groups(results, tasks, tol, floors).n_models <= plan.n_models
    assert len(set(asked)) < len(all_subsets(tasks))  # 120 subsets


@pytest.fixture(scope="module")
def zoo(tiny_zoo):
    return open_zoo(tiny_zoo)


def test_measured_pairs_equal_the_explorer_and_a_plain_forward(zoo):
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.explorer.service import Explorer
    from sammerge.merging import MergeSpec, get_method
    pair = tuple(zoo.tasks[:2])
    res = measure_groups(zoo, "plain", [pair], ["task_arithmetic"], use_cache=False)[pair]
    ex = Explorer(zoo)
    grid = get_method("task_arithmetic").lambda_grid()
    val_means = []
    for lam in grid:  # the explorer's numbers for the same merge, averaged over the pair's tasks
        got = ex.evaluate(MergeSpec.for_zoo(zoo, "task_arithmetic", {"lambda": lam}, "plain", tasks=list(pair)))
        val_means.append(sum(got[t].accuracy for t in pair) / 2)
    best = max(range(len(grid)), key=lambda i: (round(val_means[i], 12), -i))
    assert res.lam == grid[best] and res.val_mean == pytest.approx(val_means[best], abs=1e-12)
    theta0 = zoo.pretrained()
    merged = {k: v + res.lam * (zoo.task_vector(pair[0], "plain")[k] + zoo.task_vector(pair[1], "plain")[k])
              if v.is_floating_point() else v for k, v in theta0.items()}
    test = Evaluator.from_zoo(zoo, split="test", n_per_task=None, tasks=list(pair))
    want = test.evaluate(merged)
    for t in pair:
        assert res.merged[t] == pytest.approx(want[t].accuracy, abs=1e-12)
        own = test.evaluate(zoo.finetuned(t, "plain"))[t].accuracy
        assert res.loss_points[t] == pytest.approx(100 * (own - want[t].accuracy), abs=1e-9)
    ex.close()


def test_cli_json_and_report_agree_and_the_report_opens_offline(zoo, tmp_path, capsys):
    from sammerge.cli import main
    js, page = tmp_path / "plan.json", tmp_path / "plan.html"
    assert main(["plan", str(zoo.path), "--tolerance", "3", "--methods", "task_arithmetic", "--variants", "plain",
                 "sam", "--json", str(js), "--out", str(page), "--quiet", "--requests-per-day", "1e6",
                 "--gpu-hour-cost", "2"]) == 0
    out = capsys.readouterr().out
    data = json.loads(js.read_text())
    text = page.read_text()
    for v, d in data["variants"].items():
        assert f"{v}: {d['plan']['models']} model(s) for {len(zoo.tasks)} tasks" in out
        for s in d["plan"]["stages"]:
            assert all(x <= 3 + 1e-9 for x in d["groups"]["+".join(s["tasks"])]["loss_points"].values())
            assert f"worst loss {s['worst_loss']:.1f} pts" in text
        for name, g in d["groups"].items():
            assert f"<td>{name}</td>" in text and f"<td>{g['worst_loss']:.1f}</td>" in text
        assert sorted([t for s in d["plan"]["stages"] for t in s["tasks"]] + d["plan"]["separate"]) == sorted(zoo.tasks)
    assert data["training"]["sam"]["forward_backward_passes"] == 2 * data["training"]["sam"]["steps"]
    assert data["training"]["plain"]["forward_backward_passes"] == data["training"]["plain"]["steps"]
    serving = data["variants"]["plain"]["serving"]["options"]
    assert serving["separate"]["encoders"] == len(zoo.tasks) and serving["one merged model"]["encoders"] == 1
    assert serving["plan"]["encoders"] == data["variants"]["plain"]["plan"]["models"]
    for o in serving.values():  # cost per day = images / (images per second) / 3600 × price
        assert o["cost_per_day"] == pytest.approx(1e6 / o["images_per_s"] / 3600 * 2)
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?:|<script|<link", text)  # nothing to fetch
    from sammerge.webapp.browser import chromium_available, chromium_page
    if not chromium_available():
        pytest.skip("Debian chromium not installed (./dev test installs it)")
    with chromium_page() as browser_page:
        browser_page.route("**/*", lambda route: route.abort() if not route.request.url.startswith("file:")
                           else route.continue_())
        browser_page.goto(page.as_uri())
        for section in ("plans", "models", "matrix", "groups", "predictors", "cost", "specs", "reproduce"):
            assert browser_page.locator(f"#{section}").is_visible()
        assert browser_page.locator("svg[aria-label='pairwise loss matrix']").count() == 2
        scatters = browser_page.locator("svg[aria-label$='against mean loss of the pair (pts)']")
        assert scatters.count() == 2 * 5 and scatters.first.is_visible()


def test_rank_correlation_and_permutation_p_against_scipy_and_enumeration():
    stats = pytest.importorskip("scipy.stats")
    from sammerge.planner.predictors import permutation_p, spearman
    rng = random.Random(3)
    for n in (4, 6, 11):
        x = [round(rng.random(), 1) for _ in range(n)]  # ties included
        y = [xi + rng.random() for xi in x]
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    x, y = [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 4.0, 3.0]
    rho = spearman(x, y)
    every = [spearman(x, list(p)) for p in itertools.permutations(y)]
    assert permutation_p(x, y) == pytest.approx(sum(abs(r) >= abs(rho) - 1e-12 for r in every) / 24)


def test_the_planner_page_runs_one_shared_job_and_shows_the_clis_plan(monkeypatch, tiny_zoo, tmp_path):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from sammerge.cli import main
    from sammerge.planner.run import PlanSettings
    from sammerge.webapp.plan_jobs import plan_task
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("SAMMERGE_ZOO", str(tiny_zoo))
    monkeypatch.chdir(root)
    at = AppTest.from_file(str(root / "pages" / "7_Merge_planner.py"), default_timeout=120).run()
    assert not at.exception and not at.error
    at.multiselect(key="plan_methods").set_value(["task_arithmetic"])
    at.toggle(key="plan_pairs").set_value(True).run()
    at.button(key="plan_go").click().run()
    zoo = open_zoo(tiny_zoo)
    settings = PlanSettings(2.0, ("task_arithmetic",), tuple(zoo.variants), True, 1e6, 2.0)
    task = plan_task(zoo, settings)
    assert task is not None
    task.wait(300)
    second = AppTest.from_file(str(root / "pages" / "7_Merge_planner.py"), default_timeout=120)
    second.session_state["plan_methods"] = ["task_arithmetic"]
    second.session_state["plan_pairs"] = True
    second.run()  # another session, same settings: the same finished job, no new one
    assert not second.exception and plan_task(zoo, settings) is task
    js = tmp_path / "cli.json"
    assert main(["plan", str(tiny_zoo), "--tolerance", "2", "--methods", "task_arithmetic", "--pairs-only",
                 "--json", str(js), "--quiet", "--requests-per-day", "1e6", "--gpu-hour-cost", "2"]) == 0
    cli = json.loads(js.read_text())
    frame = second.dataframe[0].value
    for _, row in frame.iterrows():
        assert row["models needed"] == cli["variants"][row["variant"]]["plan"]["models"]
        assert row["merge"] == ("; ".join(" + ".join(s["tasks"]) for s in cli["variants"][row["variant"]]["plan"]["stages"])
                                or "—")
    assert len(frame) == len(zoo.variants)
    assert any("Report (.html" in str(b.proto) for b in second.get("download_button"))


def test_pair_signals_equal_plain_forwards_and_a_power_iteration(zoo):
    import numpy as np
    import torch

    from sammerge.analytics.sharpness import fixed_batch, task_loss_fn, top_eigenvalues
    from sammerge.planner.predictors import SIGNALS, pair_signals
    a, b = zoo.tasks[:2]
    sig = pair_signals(zoo, "plain")[(a, b)]
    assert set(sig) == set(SIGNALS)
    encoder = zoo.create_encoder().eval()
    theta0, tau = zoo.pretrained(), {t: zoo.task_vector(t, "plain") for t in (a, b)}
    data = {t: zoo.split(t, "val") for t in (a, b)}
    data = {t: d.subset(128, 0) if len(d.labels) > 128 else d for t, d in data.items()}

    def predict(task, coeffs):
        params = {k: v + sum(c * tau[t][k] for t, c in coeffs.items()) if v.is_floating_point() else v
                  for k, v in theta0.items()}
        with torch.no_grad():
            return zoo.heads[task](torch.func.functional_call(encoder, params, (data[task].images,))).argmax(1)

    alphas = np.linspace(0, 1, 5)
    xi = [[float((predict(a, {a: x}) != predict(a, {a: x, b: y})).float().mean())
           + float((predict(b, {b: y}) != predict(b, {a: x, b: y})).float().mean()) for y in alphas] for x in alphas]
    assert sig["disentanglement ξ̄"] == pytest.approx(float(np.mean(xi)), abs=1e-9)
    enc = zoo.create_encoder()
    for p in enc.parameters():
        p.requires_grad_(False)
    want = 0.0
    for t in (a, b):  # the top eigenvalue again, by plain power iteration to convergence
        batch = fixed_batch(zoo, t, 256, 0, "val")
        eig = top_eigenvalues(task_loss_fn(enc, zoo.heads[t], batch.images, batch.labels), zoo.finetuned(t, "plain"),
                              k=1, iters=300, tol=1e-6, seed=1, method="power")
        want += eig.eigenvalues[0]
    assert sig["λ_max_i + λ_max_j"] == pytest.approx(want, rel=0.02)
    norms = [float(torch.cat([v.flatten().double() for v in tau[t].values() if v.is_floating_point()]).norm())
             for t in (a, b)]
    assert sig["‖τ_i‖ + ‖τ_j‖"] == pytest.approx(sum(norms), rel=1e-6)


def test_greedy_and_floors_through_the_cli(zoo, tmp_path, capsys):
    from sammerge.cli import main
    js, page = tmp_path / "greedy.json", tmp_path / "greedy.html"
    assert main(["plan", str(zoo.path), "--tolerance", "100", "--methods", "task_arithmetic", "--variants", "plain",
                 "--search", "greedy", "--floor", f"{zoo.tasks[0]}=100", "--json", str(js), "--out", str(page),
                 "--quiet"]) == 0
    data = json.loads(js.read_text())
    plan = data["variants"]["plain"]["plan"]
    own = data["variants"]["plain"]["individual"][zoo.tasks[0]]
    assert plan["search"] == "greedy" and plan["floors"] == {zoo.tasks[0]: 100.0}
    if own < 1.0:  # its own model is below 100 %: separate, named, and said so
        assert zoo.tasks[0] in plan["separate"] and plan["below_floor"] == [zoo.tasks[0]]
        assert "below its floor already" in capsys.readouterr().out
    assert sorted([t for s in plan["stages"] for t in s["tasks"]] + plan["separate"]) == sorted(zoo.tasks)
    for s in plan["stages"]:  # every planned group was measured and keeps the floor
        g = data["variants"]["plain"]["groups"]["+".join(s["tasks"])]
        assert all(100 * g["merged"][t] >= 100.0 for t in s["tasks"] if t == zoo.tasks[0])
    text = page.read_text()
    assert "a greedy search" in text and f"{zoo.tasks[0]} 100 %" in text
    n_signals = len(data["variants"]["plain"]["predictors"]["signals"])
    assert n_signals == 5 and text.count("against mean loss of the pair (pts)") == n_signals
    for bad, msg in ((["--floor", "nope"], "TASK=ACCURACY"), (["--floor", "zzz=50"], "unknown task 'zzz'"),
                     (["--floor", f"{zoo.tasks[0]}=120"], "between 0 and 100"),
                     (["--search", "greedy", "--pairs-only"], "not both")):
        assert main(["plan", str(zoo.path), "--quiet", *bad]) != 0
        assert msg in capsys.readouterr().err
