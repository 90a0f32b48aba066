"""The shipped EfficientNet-Lite0 zoo (assets/lite0_zoo): complete, small, built by the current recipe, its numbers
those of a plain forward of the full encoder, installed into the zoo cache once, and open in the app."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from sammerge.io import load_state_dict
from sammerge.models import lite0
from sammerge.shipped import ensure_lite0_zoo, lite0_shipped, shipped_lite0_dir
from sammerge.zoo import normalize_uint8, open_zoo

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not lite0_shipped(), reason="no assets/lite0_zoo in this checkout")


def test_shipped_lite0_zoo_is_complete_small_and_from_the_current_recipe():
    from sammerge.training.lite0_zoo import Lite0ZooRecipe

    zoo = open_zoo(shipped_lite0_dir(), verify=True)  # every file's sha256, parse, finiteness
    # (a field added to the recipe since, e.g. ASAM's ρ, takes its default: the shipped variants do not use it)
    assert Lite0ZooRecipe.model_validate(zoo.manifest.source["recipe"]) == Lite0ZooRecipe(seed=zoo.manifest.seed)
    assert zoo.variants == ["plain", "sam"] and len(zoo.tasks) >= 3
    assert all(r.stored == "task_vector" for r in zoo.manifest.checkpoints)
    size = sum(p.stat().st_size for p in shipped_lite0_dir().rglob("*") if p.is_file())
    assert size <= 60e6, f"the shipped Lite0 zoo is {size / 1e6:.1f} MB (≤ 60 MB)"


def test_recorded_accuracy_is_a_plain_forward_of_the_full_encoder():
    zoo = open_zoo(shipped_lite0_dir())
    task = "sklearn_digits"
    data = load_state_dict(zoo.path / f"data/{task}.safetensors")
    x = normalize_uint8(data["test/images"], zoo.manifest.images.mean, zoo.manifest.images.std).expand(-1, 3, -1, -1)
    for variant in zoo.variants:
        encoder = lite0.create_lite0()
        encoder.load_state_dict({**load_state_dict(zoo.path / "prefix.safetensors"), **zoo.finetuned(task, variant)})
        with torch.no_grad():
            predicted = zoo.heads[task](encoder.eval()(x)).argmax(1)
        accuracy = (predicted == data["test/labels"]).float().mean().item()
        assert zoo.manifest.checkpoint(task, variant).accuracy.test == pytest.approx(accuracy, abs=1e-6)


def test_installed_into_the_zoo_cache_once(tmp_path):
    zoo = ensure_lite0_zoo(root=tmp_path)
    assert zoo.path == tmp_path / zoo.manifest.name and zoo.checkpoint_hashes() == open_zoo(shipped_lite0_dir()).checkpoint_hashes()
    stamp = (zoo.path / "zoo.json").stat().st_mtime_ns
    assert (ensure_lite0_zoo(root=tmp_path).path / "zoo.json").stat().st_mtime_ns == stamp  # not copied again
    heads = zoo.path / zoo.manifest.heads.file
    heads.write_bytes(heads.read_bytes()[:-8] + b"\0" * 8)  # a damaged copy: found when verified, installed again
    assert ensure_lite0_zoo(root=tmp_path).path == zoo.path  # (not verified: the manifest alone matches)
    assert ensure_lite0_zoo(root=tmp_path, verify=True).heads
    assert (zoo.path / "zoo.json").stat().st_mtime_ns != stamp


@pytest.mark.parametrize("page", ["pages/1_Merge_explorer.py", "pages/0_Zoo.py"])
def test_app_opens_the_lite0_zoo(monkeypatch, tmp_path, page):
    monkeypatch.delenv("SAMMERGE_ZOO", raising=False)
    monkeypatch.setenv("SAMMERGE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / page), default_timeout=240)
    at.session_state["_zoo_source"] = "lite0"
    at.session_state["_zoo_dir"] = ""
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.radio(key="zoo_source").value == "lite0"
    assert (tmp_path / "home" / "zoos" / open_zoo(shipped_lite0_dir()).manifest.name / "zoo.json").is_file()
    if page.endswith("Merge_explorer.py"):
        assert any(c.value.startswith("Showing:") for c in at.caption)
        assert [m.label for m in at.metric][:2] == ["Mean accuracy", "Normalized accuracy"]
    else:
        assert any("EfficientNet-Lite0" in c.value for c in at.caption)


def test_a_first_start_opens_the_lite0_zoo_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv("SAMMERGE_ZOO", raising=False)
    monkeypatch.delenv("SAMMERGE_PRESET", raising=False)
    monkeypatch.setenv("SAMMERGE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240).run()
    assert not at.exception, at.exception
    assert not at.error and not at.status  # installed, nothing built
    assert at.radio(key="zoo_source").value == "lite0"
    assert at.radio(key="zoo_source").options[:2] == ["EfficientNet-Lite0 zoo (real images)", "demo zoo (16 px glyphs)"]
    shipped = open_zoo(shipped_lite0_dir())
    assert (tmp_path / "home" / "zoos" / shipped.manifest.name / "zoo.json").is_file()
    assert set(at.dataframe[0].value["task"]) == set(shipped.tasks)
    assert not list((tmp_path / "home" / "zoos").glob("demo-*"))  # the glyph zoo is not installed until chosen


def test_default_zoo_source_rules(monkeypatch):
    from sammerge.webapp.ui import default_zoo_source

    monkeypatch.delenv("SAMMERGE_PRESET", raising=False)
    assert default_zoo_source("", True) == "lite0"
    assert default_zoo_source("", False) == "demo"  # a checkout without assets/lite0_zoo
    assert default_zoo_source("/some/zoo", True) == "directory"
    monkeypatch.setenv("SAMMERGE_PRESET", "tiny")  # a preset asks for that glyph build
    assert default_zoo_source("", True) == "demo"


def test_cli_prints_the_installed_copy(monkeypatch, tmp_path, capsys):
    from sammerge.cli import main

    monkeypatch.setenv("SAMMERGE_HOME", str(tmp_path))
    assert main(["zoo", "lite0"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == tmp_path / "zoos" / open_zoo(shipped_lite0_dir()).manifest.name and (printed / "zoo.json").is_file()
