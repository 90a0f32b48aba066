"""AppTest: the sharpness & landscape, interference and paper-table pages, and sharpness on the home page."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bare_zoo(tiny_zoo, tmp_path_factory) -> Path:
    """A private copy of the tiny zoo (the pages may write an analysis into it)."""
    dest = tmp_path_factory.mktemp("app_analysis") / "tiny"
    shutil.copytree(tiny_zoo, dest, ignore=shutil.ignore_patterns("analysis"))  # as built: no caches of other tests
    return dest


def run_page(monkeypatch, zoo_dir, page: str) -> AppTest:
    monkeypatch.setenv("SAMMERGE_ZOO", str(zoo_dir))
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(str(ROOT / page), default_timeout=300).run()


def assert_clean(at):
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def readings(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**Reading:**")]


def test_analysis_pages(monkeypatch, bare_zoo):
    from sammerge.analytics.report import load_analysis
    from sammerge.zoo import open_zoo

    zoo = open_zoo(bare_zoo)
    assert load_analysis(zoo) is None
    # 1. no analysis yet: the interference page says how to get one, then computes it with progress
    at = run_page(monkeypatch, bare_zoo, "pages/3_Interference.py")
    assert_clean(at)
    assert any("sammerge analyze" in i.value for i in at.info)
    at.checkbox(key="if_quick").check().run()
    at.button(key="if_compute").click().run()
    assert_clean(at)
    from sammerge.webapp.analysis_jobs import analysis_task
    analysis_task(bare_zoo).wait(600)  # the analysis runs as a job of the server's worker
    at.run()
    assert_clean(at)
    analysis = load_analysis(zoo)
    assert analysis is not None
    texts = readings(at)
    assert len(texts) == 4  # cosine, sign conflicts, disentanglement, layer norms — one-line reading each
    cos = {}
    for v, d in analysis["cosine"].items():
        m = np.array(d["matrix"], dtype=float)
        cos[v] = np.abs(m[~np.eye(len(m), dtype=bool)]).mean()
    assert f"plain {cos['plain']:.3f}, SAM {cos['sam']:.3f}" in texts[0]

    # 2. sharpness page reads the stored analysis: table = library numbers, reading derived from them
    at = run_page(monkeypatch, bare_zoo, "pages/2_Sharpness_and_landscape.py")
    assert_clean(at)
    frame = at.dataframe[0].value
    for row in analysis["sharpness"]:
        label = {"plain": "plain", "sam": "SAM"}[row["variant"]]
        assert frame.set_index("task").loc[row["task"], label] == pytest.approx(row["top_eigenvalue"])
    assert "SAM is lower on" in readings(at)[0]
    at.selectbox(key="sh_measure").set_value("trace_mean").run()
    assert_clean(at)
    # on-demand 1-D curves and a small task plane (plain and SAM side by side, one colour scale)
    at.button(key="sh_go_1d").click().run()
    assert_clean(at)
    at.select_slider(key="sh_n").set_value(7).run()
    at.button(key="sh_go_plane").click().run()
    assert_clean(at)
    assert any("square 0 ≤ α_i, α_j ≤ 1" in r for r in readings(at))

    # 3. the home page now shows sharpness next to accuracy
    at = run_page(monkeypatch, bare_zoo, "app.py")
    assert_clean(at)
    home = at.dataframe[0].value
    row = home[(home["task"] == "digits") & (home["variant"] == "sam")].iloc[0]
    want = next(r for r in analysis["sharpness"] if r["task"] == "digits" and r["variant"] == "sam")
    assert row["λ_max (Hessian)"] == pytest.approx(want["top_eigenvalue"])


def test_paper_table_page(monkeypatch, tiny_zoo):
    from sammerge.evaluation.protocol import paper_table
    from sammerge.zoo import open_zoo

    methods = ["weight_average", "task_arithmetic", "ties", "tsv_m", "iso_c"]  # not all 15: seconds, not minutes
    monkeypatch.setenv("SAMMERGE_TABLE_METHODS", ",".join(methods + ["no_such_method"]))
    at = run_page(monkeypatch, tiny_zoo, "pages/4_Paper_table.py")
    assert_clean(at)
    at.button(key="pt_compute").click().run()
    assert_clean(at)
    shown = at.dataframe[0].value
    want = paper_table(open_zoo(tiny_zoo), methods=methods)
    assert len(shown) == len(want) == len(open_zoo(tiny_zoo).variants) * (2 + len(methods))
    assert list(shown["normalized"]) == pytest.approx(list(want["normalized"]))
    assert list(shown["mean"]) == pytest.approx(list(want["mean"]))
    assert readings(at) and "of" in readings(at)[0]
    assert {d.key for d in at.download_button} >= {"pt_csv", "pt_tex"}
