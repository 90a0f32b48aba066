"""MergeSpec I/O, mergekit YAML export/import, resolve_and_merge errors."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from sammerge.merging import (MergeSpec, from_mergekit_yaml, load_any_config, resolve_and_merge,
                             to_mergekit_yaml)
from sammerge.errors import CheckpointError, ConfigError, MergeError
from sammerge.io import save_state_dict, sha256_file


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    pre = {"w": torch.randn(6, 5), "b": torch.randn(5)}
    save_state_dict(pre, tmp_path / "base.safetensors")
    for i, name in enumerate(["digits__plain", "letters__sam", "shapes__plain"]):
        save_state_dict({k: v + torch.randn_like(v) for k, v in pre.items()}, tmp_path / f"{name}.safetensors")
    return tmp_path


def make_cfg(root, method="task_arithmetic", params=None, weights=(1.0, 0.5, 2.0), **extra):
    names = [("digits", "plain"), ("letters", "sam"), ("shapes", "plain")]
    return MergeSpec.from_dict({
        "method": method, "params": params or {}, "base_model": "base.safetensors", "zoo": str(root),
        "tasks": [{"task": t, "variant": v, "weight": w, "checkpoint": f"{t}__{v}.safetensors"}
                  for (t, v), w in zip(names, weights)], **extra}, root_dir=root)


CASES = [("weight_average", {}), ("task_arithmetic", {"lambda": 0.4}), ("ties", {"density": 0.5}),
         ("ties", {"density": 0.5, "trim_scope": "model"}), ("dare_linear", {"density": 0.5, "seed": 3}),
         ("dare_ties", {"density": 0.7}), ("breadcrumbs", {"density": 0.6, "gamma": 0.1})]


@pytest.mark.parametrize("method,params", CASES)
@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_save_load_identical_merge(files, method, params, suffix):
    cfg = make_cfg(files, method, params, results={"digits": {"accuracy": 0.9}})
    merged, resolved = resolve_and_merge(cfg)
    resolved.save(files / f"cfg{suffix}")
    again = MergeSpec.load(files / f"cfg{suffix}")
    assert again.to_dict() == resolved.to_dict()
    merged2, _ = resolve_and_merge(again)
    assert all(torch.equal(merged[k], merged2[k]) for k in merged)
    # resolved config has absolute paths, hashes, full params
    assert Path(resolved.base_model).is_absolute() and resolved.base_sha256 == sha256_file(files / "base.safetensors")
    assert all(t.sha256 for t in resolved.tasks) and "lambda" in resolved.params or method == "weight_average"


def test_provenance_fields(files):
    cfg = make_cfg(files)
    d = json.loads(cfg.to_json())
    assert d["library_version"] and d["created"] and d["zoo"] == str(files)
    assert d["tasks"][1] == {"task": "letters", "variant": "sam", "weight": 0.5, "density": None,
                             "checkpoint": "letters__sam.safetensors", "sha256": None}


def test_mergekit_yaml_structure(files):
    for method, params in CASES:
        cfg = make_cfg(files, method, params)
        text = to_mergekit_yaml(cfg)
        assert text.startswith("# mergekit configuration exported by sammerge")
        doc = yaml.safe_load(text)
        assert doc["dtype"] == "float32"
        assert doc["merge_method"] == {"weight_average": "linear"}.get(method, method)
        for m in doc["models"]:
            assert isinstance(m["parameters"], dict) and "weight" in m["parameters"]
            assert Path(m["model"]).is_absolute()
        if method == "weight_average":
            assert "base_model" not in doc and doc["parameters"] == {"normalize": True}
        else:
            assert doc["base_model"].endswith("base.safetensors")
            assert doc["parameters"]["lambda"] == params.get("lambda", 1.0)
            assert doc["parameters"]["normalize"] is (method == "ties")
        if "density" in params:
            assert all(m["parameters"]["density"] == params["density"] for m in doc["models"])
        if method in ("dare_linear", "dare_ties"):
            assert "SEMANTICS DIFFER" in text and "DARE" in text
        if params.get("trim_scope") == "model":
            assert "SEMANTICS DIFFER" in text and "flattened" in text
        if method == "breadcrumbs":
            assert "SEMANTICS MAY DIFFER" in text and doc["models"][0]["parameters"]["gamma"] == 0.1


@pytest.mark.parametrize("method,params", [c for c in CASES if c[1].get("trim_scope") != "model"])
def test_mergekit_roundtrip_same_merge(files, method, params):
    cfg = make_cfg(files, method, params)
    merged, _ = resolve_and_merge(cfg)
    back = from_mergekit_yaml(to_mergekit_yaml(cfg), root_dir=files)
    assert back.method == method
    assert [t.weight for t in back.tasks] == [1.0, 0.5, 2.0]
    assert [(t.task, t.variant) for t in back.tasks] == [("digits", "plain"), ("letters", "sam"), ("shapes", "plain")]
    if method.startswith("dare"):
        back = back.with_params(seed=params.get("seed", 0))
    merged2, _ = resolve_and_merge(back)
    assert all(torch.allclose(merged[k], merged2[k], atol=1e-6) for k in merged)


def test_from_mergekit_semantics(files):
    text = f"""
merge_method: ties
base_model: base.safetensors
models:
  - model: base.safetensors
  - model: digits__plain.safetensors
    parameters: {{weight: 0.5, density: 0.4}}
  - model: letters__sam.safetensors
    parameters: {{weight: 1.0, density: 0.8}}
parameters: {{lambda: 0.9}}
dtype: float32
"""
    cfg = from_mergekit_yaml(text, root_dir=files)
    assert cfg.method == "ties" and len(cfg.tasks) == 2  # base is not a task
    assert [t.density for t in cfg.tasks] == [0.4, 0.8] and cfg.params["lambda"] == 0.9
    # mergekit defaults: density 1, weight 1; linear -> weight_average
    cfg = from_mergekit_yaml({"merge_method": "linear", "models": [
        {"model": str(files / "digits__plain.safetensors"), "parameters": {"weight": 1.0}},
        {"model": str(files / "letters__sam.safetensors"), "parameters": {"weight": 3.0}}]}, root_dir=files)
    merged, _ = resolve_and_merge(cfg)
    from safetensors.torch import load_file
    a, b = load_file(files / "digits__plain.safetensors"), load_file(files / "letters__sam.safetensors")
    assert torch.allclose(merged["w"], (a["w"] + 3 * b["w"]) / 4, atol=1e-6)


@pytest.mark.parametrize("doc,match", [
    ({"merge_method": "slerp", "models": [{"model": "a"}]}, "merge_method 'slerp'|unsupported merge_method"),
    ({"merge_method": "ties", "base_model": "base.safetensors",
      "models": [{"model": "a.safetensors", "parameters": {"weight": 1, "alpha": 2}}]}, "unknown parameter 'alpha'"),
    ({"merge_method": "ties", "base_model": "base.safetensors", "parameters": {"foo": 1},
      "models": [{"model": "a.safetensors"}]}, "unknown parameter 'foo'"),
    ({"merge_method": "ties", "base_model": "base.safetensors",
      "models": [{"model": "a.safetensors", "parameters": {"density": 1.5}}]}, "density"),
    ({"merge_method": "task_arithmetic", "models": [{"model": "a.safetensors"}]}, "base_model"),
    ({"merge_method": "task_arithmetic", "base_model": "b.safetensors",
      "models": [{"model": "a.safetensors", "parameters": {"weight": [0, 1]}}]}, "gradients"),
])
def test_from_mergekit_errors(files, doc, match):
    with pytest.raises(ConfigError, match=match):
        from_mergekit_yaml(doc, root_dir=files)


def test_config_validation_errors(files):
    with pytest.raises(ConfigError, match="unknown merge method 'fancy'"):
        make_cfg(files, "fancy")
    with pytest.raises(ConfigError, match="unknown parameter 'alpha'"):
        make_cfg(files, "ties", {"alpha": 1})
    with pytest.raises(ConfigError, match="density"):
        make_cfg(files, "ties", {"density": 0.0})
    with pytest.raises(ConfigError, match="field 'tasks.0.density'"):
        MergeSpec.from_dict({"method": "ties", "base_model": "b", "tasks": [
            {"task": "a", "checkpoint": "a", "density": 2.0}]})
    with pytest.raises(ConfigError, match="field 'tasks'"):
        MergeSpec.from_dict({"method": "ties", "base_model": "b", "tasks": []})
    with pytest.raises(ConfigError, match="field 'tasks.0.weight'"):
        MergeSpec.from_dict({"method": "ties", "base_model": "b", "tasks": [
            {"task": "a", "checkpoint": "a", "weight": float("nan")}]})
    with pytest.raises(ConfigError, match="field 'colour'"):
        MergeSpec.from_dict({"method": "ties", "base_model": "b", "colour": 1,
                               "tasks": [{"task": "a", "checkpoint": "a"}]})
    with pytest.raises(ConfigError, match="per task"):
        make_cfg(files, "ties", {"weights": [1, 2, 3]})
    (files / "bad.yaml").write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml.*invalid YAML"):
        MergeSpec.load(files / "bad.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_any_config(files / "nope.yaml")


def test_resolve_errors(files):
    cfg = make_cfg(files)
    (files / "shapes__plain.safetensors").unlink()
    with pytest.raises(CheckpointError, match="shapes__plain.safetensors: file not found"):
        resolve_and_merge(cfg)
    save_state_dict({"w": torch.zeros(5, 6), "b": torch.zeros(5)}, files / "shapes__plain.safetensors")
    with pytest.raises(MergeError, match=r"'w'.*\[6, 5\].*\[5, 6\]"):
        resolve_and_merge(cfg)
    save_state_dict({"w": torch.full((6, 5), float("nan")), "b": torch.zeros(5)}, files / "shapes__plain.safetensors")
    with pytest.raises(CheckpointError, match="NaN"):
        resolve_and_merge(cfg)
    save_state_dict({"w": torch.zeros(6, 5)}, files / "shapes__plain.safetensors")
    with pytest.raises(MergeError, match="'b'"):
        resolve_and_merge(cfg)
    bad_sha = cfg.model_copy(update={"base_sha256": "0" * 64})
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve_and_merge(bad_sha)


MK = shutil.which("mergekit-pytorch") or ("/tmp/mk/bin/mergekit-pytorch"
                                          if Path("/tmp/mk/bin/mergekit-pytorch").exists() else None)


@pytest.mark.skipif(MK is None, reason="mergekit-pytorch not available")
@pytest.mark.parametrize("method,params", [("weight_average", {}), ("task_arithmetic", {"lambda": 0.7}),
                                           ("task_arithmetic", {"normalize": True}), ("ties", {"density": 0.6})])
def test_mergekit_pytorch_gives_same_weights(files, method, params):
    from safetensors.torch import load_file
    cfg = make_cfg(files, method, params)
    merged, resolved = resolve_and_merge(cfg)
    (files / "mk.yml").write_text(to_mergekit_yaml(resolved))
    proc = subprocess.run([MK, str(files / "mk.yml"), str(files / "mk_out")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = load_file(files / "mk_out" / "model.safetensors")
    assert set(theirs) == set(merged)
    for k in merged:
        assert torch.allclose(merged[k], theirs[k], atol=1e-6), k
