"""Imported zoos in the app: the Zoo page shows where each checkpoint came from; paths only under the roots."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from sammerge.errors import ZooError
from sammerge.webapp.zoo_picker import ROOTS_ENV, allowed_roots, find_zoos, resolve_zoo_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def imported_zoo(tmp_path):
    from test_import_timm import write_timm
    from sammerge.importing import import_zoo, load_import_spec
    spec_path, _ = write_timm(tmp_path / "user")
    return import_zoo(load_import_spec(spec_path), tmp_path / "zoos" / "mine", max_images_per_split=4)


def test_zoo_page_shows_provenance(monkeypatch, imported_zoo):
    monkeypatch.setenv("SAMMERGE_ZOO", str(imported_zoo.path))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    frames = [d.value for d in at.dataframe]
    prov = next(f for f in frames if "original file" in f.columns)
    m = imported_zoo.manifest
    rec = m.checkpoint("pets", "sam")
    row = prov[(prov["task"] == "pets") & (prov["variant"] == "sam")].iloc[0]
    assert row["format"] == "timm" and row["original file"] == rec.source.original
    assert row["original sha256"] == rec.source.original_sha256[:16] + "…"
    assert len(prov) == 1 + len(m.checkpoints)  # θ0 and every checkpoint
    assert any("imported from **timm**" in c.value for c in at.caption)


def test_paths_only_under_configured_roots(monkeypatch, tmp_path, imported_zoo):
    monkeypatch.delenv("SAMMERGE_ZOO", raising=False)
    monkeypatch.setenv("SAMMERGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(ROOTS_ENV, str(tmp_path / "zoos"))
    assert resolve_zoo_dir(str(imported_zoo.path)) == imported_zoo.path.resolve()
    assert find_zoos() == [imported_zoo.path.resolve()]
    with pytest.raises(ZooError, match=r"'\.\.' is not allowed"):
        resolve_zoo_dir(str(tmp_path / "zoos" / ".." / "user"))
    with pytest.raises(ZooError, match="outside the directories"):
        resolve_zoo_dir(str(tmp_path / "user"))
    os.symlink(tmp_path / "user", tmp_path / "zoos" / "escape")  # a link out of the root is followed, then refused
    with pytest.raises(ZooError, match="outside the directories"):
        resolve_zoo_dir(str(tmp_path / "zoos" / "escape"))
    assert (tmp_path / "home" / "zoos").resolve() in allowed_roots()


def test_sidebar_refuses_a_directory_outside_the_roots(monkeypatch, tmp_path, imported_zoo):
    monkeypatch.setenv("SAMMERGE_ZOO", str(imported_zoo.path))
    monkeypatch.setenv("SAMMERGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ROOTS_ENV, raising=False)
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception and not at.error
    at.text_input(key="zoo_dir").set_value(str(tmp_path / "user")).run()
    assert at.error and "outside the directories" in at.error[0].value


@pytest.mark.parametrize("page", ["pages/1_Merge_explorer.py", "pages/2_Sharpness_and_landscape.py",
                                  "pages/3_Interference.py", "pages/4_Paper_table.py"])
def test_every_page_opens_an_imported_zoo(monkeypatch, imported_zoo, page):
    monkeypatch.setenv("SAMMERGE_ZOO", str(imported_zoo.path))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / page), default_timeout=300).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_analyze_runs_on_an_imported_vit_zoo(imported_zoo, capsys):
    """Sharpness and interference analytics (double backward through attention) work on an imported ViT."""
    from sammerge.cli import main as cli_main
    assert cli_main(["analyze", str(imported_zoo.path), "--quick", "--n-images", "4", "--quiet", "--json"]) == 0
    import json
    report = json.loads(capsys.readouterr().out)
    import math
    rows = report["sharpness"]
    assert {(r["task"], r["variant"]) for r in rows} == {(t, v) for t in imported_zoo.tasks for v in imported_zoo.variants}
    assert all(math.isfinite(r["top_eigenvalue"]) and math.isfinite(r["trace_mean"]) for r in rows)
    assert report["cosine"]["plain"]["tasks"] == sorted(imported_zoo.tasks) or report["cosine"]["plain"]["tasks"] == imported_zoo.tasks
