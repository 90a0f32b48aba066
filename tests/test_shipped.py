"""The shipped demo zoo (assets/demo_zoo): current, complete, installed without training, caches on disk."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from sammerge.analytics import report as an
from sammerge.data import load_benchmark
from sammerge.shipped import shipped_zoo, shipped_zoo_dir
from sammerge.models.presets import get_preset
from sammerge.zoo import data_sha256, open_zoo

ROOT = Path(__file__).resolve().parent.parent


def _fingerprint() -> str:
    return get_preset("demo").fingerprint(data_sha256(load_benchmark()))


def test_shipped_zoo_is_built_from_the_current_demo_recipe():
    """Changing the demo preset or the benchmark data without re-running scripts/ship_demo_zoo.py fails here."""
    zoo = open_zoo(shipped_zoo_dir(), verify=True)  # every file's sha256, parse, finiteness
    assert zoo.manifest.recipe_fingerprint == _fingerprint()
    assert shipped_zoo("demo", _fingerprint()) is not None
    assert shipped_zoo("demo", "0" * 64) is None and shipped_zoo("tiny", _fingerprint()) is None


def test_shipped_zoo_carries_what_the_pages_open_with():
    zoo = open_zoo(shipped_zoo_dir())
    t, variants = zoo.tasks, zoo.variants
    assert an.load_analysis(zoo) is not None
    for v in variants:
        assert an.interpolation_for(zoo, t[0], v, cached_only=True) is not None
        assert an.task_plane_for(zoo, t[0], t[1], v, n=11, cached_only=True) is not None
        assert an.random_plane_for(zoo, t[0], v, n=11, cached_only=True) is not None
    from sammerge.analytics.diagnostics import diagnose_zoo
    from sammerge.explorer.service import Explorer
    assert diagnose_zoo(zoo, cached_only=True) is not None
    ex = Explorer(zoo)
    assert ex.cached_sweeps(ex.default_spec()) is not None  # the explorer's λ-sweep chart shows at once
    from sammerge.analytics.seed_study import load_study
    study = load_study(zoo)  # the Zoo page's seed spread: ≥ 3 seeds of this recipe, every shipped variant in it
    assert study is not None and len(study["summary"]["seeds"]) >= 3
    assert set(variants) <= set(study["summary"]["variants"])
    frame = Explorer(zoo, n_per_task=8).paper_table_cached()
    assert frame is not None and set(frame["variant"]) == set(variants)
    # the stored numbers are the table's: its individual row equals the zoo's recorded test accuracies
    ind = frame[(frame["variant"] == variants[0]) & (frame["method"] == "individual fine-tuned")].iloc[0]
    for task in t:
        assert ind[task] == pytest.approx(zoo.manifest.checkpoint(task, variants[0]).accuracy.test, abs=1e-6)


def test_cached_only_never_computes(tiny_zoo_copy):
    shutil.rmtree(tiny_zoo_copy / "analysis", ignore_errors=True)  # other tests may have filled the shared zoo's cache
    zoo = open_zoo(tiny_zoo_copy)
    task, variant = zoo.tasks[0], zoo.variants[0]
    assert an.interpolation_for(zoo, task, variant, n_per_task=16, cached_only=True) is None
    assert not (tiny_zoo_copy / "analysis" / "cache").exists() or not any((tiny_zoo_copy / "analysis" / "cache").iterdir())
    computed = an.interpolation_for(zoo, task, variant, n_per_task=16)
    again = an.interpolation_for(zoo, task, variant, n_per_task=16, cached_only=True)
    assert list(again["finetuned"].loss) == pytest.approx(list(computed["finetuned"].loss))


def test_paper_table_is_kept_on_disk(tiny_zoo_copy, monkeypatch):
    from sammerge.evaluation.protocol import paper_table
    from sammerge.explorer.service import Explorer

    monkeypatch.setenv("SAMMERGE_TABLE_METHODS", "task_arithmetic,tsv_m")  # two methods: seconds, not minutes
    shutil.rmtree(tiny_zoo_copy / "analysis", ignore_errors=True)
    zoo = open_zoo(tiny_zoo_copy)
    assert Explorer(zoo, n_per_task=16).paper_table_cached() is None
    first = Explorer(zoo, n_per_task=16).paper_table()
    reopened = Explorer(open_zoo(tiny_zoo_copy), n_per_task=16).paper_table_cached()  # a new server process
    direct = paper_table(zoo, methods=["task_arithmetic", "tsv_m"])
    assert reopened is not None and len(reopened) == len(zoo.variants) * 4
    assert list(reopened["normalized"]) == pytest.approx(list(direct["normalized"]))
    assert list(reopened["best λ"].fillna(-1)) == pytest.approx(list(first["best λ"].fillna(-1)))
    assert reopened.attrs["protocol"] == direct.attrs["protocol"]


def test_first_start_installs_the_shipped_zoo_without_training(monkeypatch, tmp_path):
    from sammerge.training import build

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped zoo should have been installed, not built")

    monkeypatch.setattr(build, "build_zoo", no_build)
    zoo = build.ensure_zoo("demo", root=tmp_path / "zoos")
    assert zoo.path.parent == tmp_path / "zoos"
    assert zoo.checkpoint_hashes() == open_zoo(shipped_zoo_dir()).checkpoint_hashes()
    open_zoo(zoo.path, verify=True)
    # the user's copy is writable (analysis caches go there, never into the package)
    probe = zoo.path / "analysis" / "cache" / "probe.json"
    probe.write_text("{}")
    assert not (shipped_zoo_dir() / "analysis" / "cache" / "probe.json").exists()


def test_damaged_shipped_zoo_falls_back_to_building(monkeypatch, tmp_path):
    from sammerge.training import build

    damaged = tmp_path / "demo_zoo"
    shutil.copytree(shipped_zoo_dir(), damaged)
    ckpt = next((damaged / "finetuned").iterdir())
    ckpt.write_bytes(ckpt.read_bytes()[:-8] + b"\0" * 8)
    monkeypatch.setenv("SAMMERGE_DEMO_ZOO", str(damaged))
    calls = []
    monkeypatch.setattr(build, "build_zoo", lambda *a, **k: calls.append(a) or "built")
    with pytest.warns(UserWarning, match="damaged"):
        assert build.ensure_zoo("demo", root=tmp_path / "zoos") == "built"
    assert calls and not list((tmp_path / "zoos").glob("demo-*"))


def test_app_first_start_opens_the_shipped_zoo(monkeypatch, tmp_path):
    """$SAMMERGE_PRESET=demo asks for the glyph zoo (the default is the Lite0 zoo: tests/test_shipped_lite0.py)."""
    monkeypatch.delenv("SAMMERGE_ZOO", raising=False)
    monkeypatch.setenv("SAMMERGE_PRESET", "demo")
    monkeypatch.setenv("SAMMERGE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert not at.error and not at.status  # no build
    installed = list((tmp_path / "home" / "zoos").glob("demo-*/zoo.json"))
    assert len(installed) == 1
    assert set(at.dataframe[0].value["task"]) == set(open_zoo(shipped_zoo_dir()).tasks)
