"""A merge method defined only here (one registration, no other edit) appears in the CLI, the explorer's controls,
the URL, the exports (saying it has no mergekit equivalent), the paper table and sweeps — with its numbers computed
by hand here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest
import torch
import yaml
from streamlit.testing.v1 import AppTest

from sammerge.merging import MERGE_METHODS, MergeSpec, Param, get_method, merge_direction, table_methods

ROOT = Path(__file__).resolve().parents[1]
NAME = "plugin_halfsum"


@pytest.fixture
def plugin():
    @merge_direction(name=NAME, label="Half sum (test plug-in)",
                     description="θ0 + λ · shrink · Σ_t s_t τ_t (a test-only method).", lambda_range=(0.0, 1.0, 0.25))
    def halfsum(pretrained, task_vectors,
                shrink: Annotated[float, Param(low=0.0, high=1.0, step=0.1, label="shrink",
                                               help="Factor on the sum.")] = 0.5,
                scales: Annotated[list[float] | None, Param(low=0.0, high=2.0, step=0.1, label="per-task scale",
                                                            entry_default=1.0, help="s_t per task.")] = None):
        """τ = shrink · Σ_t s_t τ_t."""
        s = scales or [1.0] * len(task_vectors)
        return {k: shrink * sum(si * tv[k].float() for si, tv in zip(s, task_vectors))
                for k, v in pretrained.items() if v.is_floating_point()}
    yield get_method(NAME)
    del MERGE_METHODS[NAME]


def _by_hand(zoo, variant, shrink, lam, scales):
    theta0 = zoo.pretrained()
    tvs = [zoo.task_vector(t, variant) for t in zoo.tasks]
    return {k: (v + lam * shrink * sum(s * tv[k] for s, tv in zip(scales, tvs)) if v.is_floating_point() else v)
            for k, v in theta0.items()}


def test_cli_lists_and_merges_it(plugin, tiny_zoo, tmp_path, capsys):
    from safetensors.torch import load_file
    from sammerge.cli import main
    from sammerge.zoo import open_zoo

    assert main(["methods", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert [p["name"] for p in listed[NAME]["params"]] == ["lambda", "shrink", "scales"]
    assert listed[NAME]["mergekit_name"] is None and listed[NAME]["lambda_is_scale"]

    zoo = open_zoo(tiny_zoo)
    scales = [0.5, 1.5, 1.0][:len(zoo.tasks)]
    spec = MergeSpec.for_zoo(zoo, NAME, {"lambda": 0.8, "shrink": 0.3}, "sam",
                             per_task={"scales": dict(zip(zoo.tasks, scales))})
    cfg = tmp_path / "merge.yaml"
    cfg.write_text(spec.to_yaml())
    assert main(["merge", str(cfg), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "no mergekit equivalent" in out
    assert not (tmp_path / "out" / "mergekit_config.yml").exists()
    merged = load_file(tmp_path / "out" / "model.safetensors")
    expect = _by_hand(zoo, "sam", 0.3, 0.8, scales)
    assert max(float((merged[k].float() - expect[k].float()).abs().max()) for k in expect) < 1e-5
    saved = yaml.safe_load((tmp_path / "out" / "merge_config.yaml").read_text())
    assert saved["method"] == NAME and [t["params"]["scales"] for t in saved["tasks"]] == scales


def test_url_identity_and_export(plugin, tiny_zoo):
    from sammerge.merging import to_mergekit_yaml
    from sammerge.errors import ConfigError
    from sammerge.zoo import open_zoo

    zoo = open_zoo(tiny_zoo)
    spec = MergeSpec.for_zoo(zoo, NAME, {"lambda": 0.5, "shrink": 0.7}, "plain",
                             per_task={"scales": {zoo.tasks[0]: 1.8}})
    query = spec.to_query()
    assert query["method"] == NAME and query["p.shrink"] == "0.7" and query["scales"] == f"{zoo.tasks[0]}:1.8"
    back, warnings = MergeSpec.from_query(query, zoo)
    assert not warnings and back.key() == spec.key()
    other = MergeSpec.for_zoo(zoo, NAME, {"lambda": 0.5, "shrink": 0.7}, "plain",
                              per_task={"scales": {zoo.tasks[0]: 1.9}})
    assert other.key() != spec.key() and other.key(with_lambda=False) != spec.key(with_lambda=False)
    with pytest.raises(ConfigError, match="has no mergekit equivalent"):
        to_mergekit_yaml(spec)


def test_explorer_shows_its_controls(plugin, tiny_zoo, monkeypatch):
    from sammerge.zoo import open_zoo

    zoo = open_zoo(tiny_zoo)
    monkeypatch.setenv("SAMMERGE_ZOO", str(tiny_zoo))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "pages" / "1_Merge_explorer.py"), default_timeout=120)
    at.session_state["ex_view"] = "Table"
    at.session_state["ex_export_tab"] = "Downloads"  # (only the open export tab is drawn)
    at.query_params.update({"method": NAME, "p.shrink": "0.4", "p.lambda": "1", "tasks": ",".join(zoo.tasks),
                            "scales": f"{zoo.tasks[0]}:1.5"})
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="ex_method").value == NAME
    assert at.slider(key=f"ex_p_{NAME}_shrink").value == pytest.approx(0.4)
    assert at.toggle(key="ex_pt_on_scales").value is True
    assert at.slider(key=f"ex_pt_scales_{zoo.tasks[0]}").value == pytest.approx(1.5)
    assert any(b.label == "mergekit YAML: no equivalent" and b.disabled for b in at.button)
    # the numbers on screen are the hand-computed merge's
    from sammerge.evaluation.evaluator import Evaluator
    scales = [1.5] + [1.0] * (len(zoo.tasks) - 1)
    variant = "sam" if "sam" in zoo.variants else zoo.variants[-1]
    expect = Evaluator.from_zoo(zoo, split="val", n_per_task=256, seed=0).evaluate(
        _by_hand(zoo, variant, 0.4, 1.0, scales))
    frame = at.dataframe[0].value
    shown = dict(zip(frame["task"], frame["merged"]))
    for t in zoo.tasks:
        assert shown[t] == pytest.approx(expect[t].accuracy, abs=1e-9)
    at.slider(key=f"ex_p_{NAME}_shrink").set_value(0.2).run()
    assert not at.exception
    assert at.query_params["p.shrink"] == ["0.2"] or at.query_params["p.shrink"] == "0.2"


def test_paper_table_and_sweeps_run_it(plugin, tiny_zoo):
    from sammerge.evaluation.protocol import paper_table
    from sammerge.zoo import open_zoo

    zoo = open_zoo(tiny_zoo)
    assert NAME in table_methods(len(zoo.tasks))
    table = paper_table(zoo, methods=[NAME], variants=["plain"], n_val=32, n_test=32)
    row = table[table["method"] == "Half sum (test plug-in)"]
    assert len(row) == 1 and row["best λ"].iloc[0] in (0.0, 0.25, 0.5, 0.75, 1.0)
