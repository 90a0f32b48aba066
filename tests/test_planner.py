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
    rng = random.Random(seed)
    out = {(t,): GroupResult((t,), None, None, None, {t: 0.5}, {t: 0.5}, {t: 0.0}) for t in tasks}
    for g in all_subsets(tasks):
        losses = {t: round(rng.uniform(-1, 4 + len(g)), 2) for t in g}
        out[g] = GroupResult(g, "task_arithmetic", 0.3, 0.4, {t: 0.4 for t in g}, {t: 0.5 for t in g}, losses)
    return out


def _brute_force(results, tasks, tol):
    """Every labelling of tasks with group numbers, canonicalized: the fewest groups, then least total, worst loss."""
    best = None
    for labels in itertools.product(range(len(tasks)), repeat=len(tasks)):
        blocks = {}
        for t, lab in zip(tasks, labels):
            blocks.setdefault(lab, []).append(t)
        part = [tuple(b) for b in blocks.values()]
        if any(len(b) > 1 and max(results[b].loss_points.values()) > tol for b in part):
            continue
        losses = [x for b in part for x in results[b].loss_points.values()]
        key = (len(part), round(sum(losses), 9), round(max(losses), 9))
        if best is None or key < best[0]:
            best = (key, sorted(part))
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tol", [0.0, 2.0, 4.5])
def test_plan_equals_an_exhaustive_brute_force(seed, tol):
    tasks = ["a", "b", "c", "d", "e"]
    results = _synthetic(tasks, seed)
    plan = plan_groups(results, tasks, tol)
    key, part = _brute_force(results, tasks, tol)
    losses = [x for g in plan.groups for x in g.loss_points.values()]
    assert (len(plan.groups), round(sum(losses), 9), round(max(losses), 9)) == key
    assert sorted(g.tasks for g in plan.groups) == part
    assert all(g.worst_loss <= tol + 1e-9 for g in plan.stages)


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
