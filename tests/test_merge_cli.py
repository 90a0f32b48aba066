"""`sammerge merge` / `sammerge methods` end to end, including nothing-written-on-error."""
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sammerge.cli import main
from sammerge.io import save_state_dict


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(1)
    pre = {"enc.w": torch.randn(4, 3), "enc.b": torch.randn(3)}
    save_state_dict(pre, tmp_path / "base.safetensors")
    for name in ("a", "b"):
        save_state_dict({k: v + torch.randn_like(v) for k, v in pre.items()}, tmp_path / f"{name}.safetensors")
    return tmp_path


def ours(root, method="task_arithmetic", params=None, **kw):
    cfg = {"method": method, "params": params or {"lambda": 0.5}, "base_model": "base.safetensors",
           "tasks": [{"task": "a", "checkpoint": "a.safetensors"}, {"task": "b", "checkpoint": "b.safetensors"}]}
    cfg.update(kw)
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_merge_ours_writes_three_files(files, capsys):
    out = files / "out"
    assert main(["merge", str(ours(files)), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["merge_config.yaml", "mergekit_config.yml", "model.safetensors"]
    merged = load_file(out / "model.safetensors")
    base, a, b = (load_file(files / f"{n}.safetensors") for n in ("base", "a", "b"))
    assert torch.allclose(merged["enc.w"], base["enc.w"] + 0.5 * (a["enc.w"] - base["enc.w"] + b["enc.w"] - base["enc.w"]),
                          atol=1e-6)
    resolved = yaml.safe_load((out / "merge_config.yaml").read_text())
    assert resolved["base_sha256"] and resolved["params"] == {"lambda": 0.5, "normalize": False}
    mk = yaml.safe_load((out / "mergekit_config.yml").read_text())
    assert mk["merge_method"] == "task_arithmetic" and all("parameters" in m for m in mk["models"])
    # the resolved config reproduces the merge from another place
    assert main(["merge", str(out / "merge_config.yaml"), str(files / "out2")]) == 0
    assert torch.equal(load_file(files / "out2" / "model.safetensors")["enc.w"], merged["enc.w"])
    # the exported mergekit config is readable by us too
    assert main(["merge", str(out / "mergekit_config.yml"), str(files / "out3")]) == 0
    assert torch.allclose(load_file(files / "out3" / "model.safetensors")["enc.w"], merged["enc.w"], atol=1e-6)
    # existing OUT_DIR needs --overwrite
    assert main(["merge", str(ours(files)), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(ours(files, params={"lambda": 1.0})), str(out), "--overwrite"]) == 0


def test_merge_mergekit_yaml(files):
    cfg = files / "mk.yml"
    cfg.write_text("merge_method: linear\nmodels:\n  - model: a.safetensors\n    parameters: {weight: 1.0}\n"
                   "  - model: b.safetensors\n    parameters: {weight: 1.0}\ndtype: float32\n")
    assert main(["merge", str(cfg), str(files / "o")]) == 0
    a, b = load_file(files / "a.safetensors"), load_file(files / "b.safetensors")
    m = load_file(files / "o" / "model.safetensors")
    assert torch.allclose(m["enc.b"], (a["enc.b"] + b["enc.b"]) / 2, atol=1e-6)


BAD = [
    (dict(method="nope"), "unknown merge method 'nope'"),
    (dict(params={"alpha": 1}), "unknown parameter 'alpha'"),
    (dict(method="ties", params={"density": 1.5}), "density"),
    (dict(tasks=[]), "tasks"),
    (dict(base_model="missing.safetensors"), "missing.safetensors: file not found"),
]


@pytest.mark.parametrize("change,match", BAD)
def test_merge_bad_config_writes_nothing(files, capsys, change, match):
    out = files / "out"
    assert main(["merge", str(ours(files, **change)), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert not out.exists()
    assert not [p for p in files.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("bad,match", [
    ({"enc.w": torch.zeros(3, 4), "enc.b": torch.zeros(3)}, "'enc.w': shape [4, 3]"),
    ({"enc.w": torch.zeros(4, 3)}, "'enc.b'"),
    ({"enc.w": torch.zeros(4, 3), "enc.b": torch.tensor([0.0, float("inf"), 0.0])}, "Inf"),
])
def test_merge_bad_checkpoint_writes_nothing(files, capsys, bad, match):
    save_state_dict(bad, files / "b.safetensors")
    out = files / "out"
    assert main(["merge", str(ours(files)), str(out)]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_methods_command(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "ties" in text and "density" in text and "per task" in text and "(0, 1]" in text
    assert main(["methods", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ties = next(m for m in data if m["name"] == "ties")
    assert ties["mergekit_name"] == "ties"
    assert {p["name"] for p in ties["params"]} >= {"density", "lambda", "weights", "trim_scope", "normalize"}
