"""Zoo build end-to-end (tiny preset), manifest validation, verification and every bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sammerge.cli import main as cli_main
from sammerge.errors import CheckpointError, ConfigError, ZooError
from sammerge.io import sha256_file
from sammerge.models.presets import get_preset
from sammerge.training.build import build_zoo
from sammerge.zoo import open_zoo, read_manifest


def test_tiny_zoo_layout_and_manifest(tiny_zoo):
    zoo = open_zoo(tiny_zoo, verify=True)
    recipe = get_preset("test")
    assert zoo.tasks == recipe.tasks
    assert zoo.variants == ["plain", "sam"]
    assert (tiny_zoo / "pretrained.safetensors").is_file()
    assert (tiny_zoo / "heads.safetensors").is_file()
    for task in zoo.tasks:
        for variant in zoo.variants:
            record = zoo.manifest.checkpoint(task, variant)
            assert (tiny_zoo / record.file).is_file()
            assert record.sha256 == sha256_file(tiny_zoo / record.file)
            assert 0.0 <= record.accuracy.test <= 1.0
            assert record.method["steps"] == recipe.finetune.steps
            assert record.method["sam"] is (variant == "sam")
            # plain and SAM share everything but SAM
            other = zoo.manifest.checkpoint(task, "plain").method
            assert {k: v for k, v in record.method.items() if k not in ("sam", "rho", "adaptive", "label")} == \
                   {k: v for k, v in other.items() if k not in ("sam", "rho", "adaptive", "label")}
    m = zoo.manifest
    assert m.seed == recipe.seed and m.versions["torch"] == torch.__version__
    assert m.build_wall_time_s > 0 and m.recipe == recipe
    # task vectors are non-trivial and differ between plain and SAM
    tv_plain = zoo.task_vector(zoo.tasks[0], "plain")
    tv_sam = zoo.task_vector(zoo.tasks[0], "sam")
    assert set(tv_plain) == set(zoo.pretrained())
    diff = sum(float((tv_plain[k] - tv_sam[k]).abs().sum()) for k in tv_plain)
    assert diff > 0
    # heads are the frozen probe heads with one row per class
    for info in m.tasks:
        assert zoo.heads[info.name].weight.shape[0] == len(info.class_names)


def test_fine_tuning_keeps_heads_and_changes_encoder(tiny_zoo):
    zoo = open_zoo(tiny_zoo)
    theta0 = zoo.pretrained()
    theta = zoo.finetuned(zoo.tasks[0], "plain")
    assert set(theta) == set(theta0)
    assert any(not torch.equal(theta[k], theta0[k]) for k in theta0)


def test_build_is_deterministic(tmp_path, smoke_zoo):
    """Same recipe and seed → bit-identical checkpoints (same sha256)."""
    again = build_zoo(get_preset("tiny"), tmp_path / "again")
    first = open_zoo(smoke_zoo)
    assert again.checkpoint_hashes() == first.checkpoint_hashes()


def test_zoo_info_cli_verifies(tiny_zoo, capsys):
    assert cli_main(["zoo", "info", str(tiny_zoo)]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "digits" in out and "sam" in out


def test_unknown_preset(tmp_path, capsys):
    assert cli_main(["zoo", "build", "--preset", "huge", "--out", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'huge'" in err and err.count("\n") == 1
    assert not (tmp_path / "z").exists()
    with pytest.raises(ConfigError):
        get_preset("huge")


def test_unknown_task(tmp_path):
    recipe = get_preset("tiny").model_copy(update={"tasks": ["digits", "klingon"]})
    with pytest.raises(ZooError, match="unknown task 'klingon'"):
        build_zoo(recipe, tmp_path / "z")
    assert not (tmp_path / "z").exists()


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = cli_main(["zoo", "build", "--preset", "tiny", "--out", str(blocker / "zoo"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(blocker / "zoo") in err and "cannot create output directory" in err


def test_existing_output_dir_refused(tiny_zoo, capsys):
    assert cli_main(["zoo", "build", "--preset", "tiny", "--out", str(tiny_zoo), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_no_half_written_zoo_on_failure(tmp_path, monkeypatch):
    """A failure mid-build leaves no target directory; finished jobs wait in the build's stage to be resumed."""
    import sammerge.training.train as train
    from sammerge.errors import SammergeError
    from sammerge.jobs import list_records
    from sammerge.training.build import stage_dir

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during fine-tuning")

    monkeypatch.setattr(train, "finetune", boom)
    with pytest.raises(SammergeError, match="simulated crash during fine-tuning"):
        build_zoo(get_preset("tiny"), tmp_path / "zoo")
    assert not (tmp_path / "zoo").exists()
    assert not list(tmp_path.glob("*.tmp"))
    status = {r.name: r.status for r in list_records(stage_dir(tmp_path / "zoo"))}
    assert status["pretrain θ0"] == "done" and status["fine-tune digits/plain"] == "failed"


def _checkpoint_path(zoo_dir: Path) -> Path:
    return zoo_dir / read_manifest(zoo_dir).checkpoints[0].file


def test_truncated_checkpoint(tiny_zoo_copy, capsys):
    path = _checkpoint_path(tiny_zoo_copy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert cli_main(["zoo", "info", str(tiny_zoo_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(path) in err and "sha256 mismatch" in err and "\n" not in err


def test_corrupt_checkpoint_with_matching_hash(tiny_zoo_copy):
    """A file that is not safetensors at all is named even when its hash was recorded for it."""
    path = _checkpoint_path(tiny_zoo_copy)
    path.write_bytes(b"\x00garbage" * 10)
    manifest = json.loads((tiny_zoo_copy / "zoo.json").read_text())
    manifest["checkpoints"][0]["sha256"] = sha256_file(path)
    (tiny_zoo_copy / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        open_zoo(tiny_zoo_copy, verify=True)


def test_sha_mismatch_on_load(tiny_zoo_copy):
    from safetensors.torch import load_file, save_file

    path = _checkpoint_path(tiny_zoo_copy)
    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(path))
    zoo = open_zoo(tiny_zoo_copy)  # cheap open does not hash...
    record = zoo.manifest.checkpoints[0]
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        zoo.finetuned(record.task, record.variant)  # ...but every load does


def test_nan_checkpoint(tiny_zoo_copy):
    from safetensors.torch import load_file, save_file

    path = _checkpoint_path(tiny_zoo_copy)
    tensors = load_file(str(path))
    key = sorted(tensors)[1]
    tensors[key][..., 0] = float("nan")
    save_file(tensors, str(path))
    manifest = json.loads((tiny_zoo_copy / "zoo.json").read_text())
    manifest["checkpoints"][0]["sha256"] = sha256_file(path)
    (tiny_zoo_copy / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"'{key}' contains NaN"):
        open_zoo(tiny_zoo_copy, verify=True)


def test_missing_checkpoint(tiny_zoo_copy):
    path = _checkpoint_path(tiny_zoo_copy)
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        open_zoo(tiny_zoo_copy)


@pytest.mark.parametrize("mutate, field", [
    (lambda m: m.pop("checkpoints"), "checkpoints"),
    (lambda m: m["checkpoints"][0].update(sha256="xyz"), "checkpoints.0.sha256"),
    (lambda m: m["checkpoints"][0]["accuracy"].update(test=1.7), "checkpoints.0.accuracy.test"),
    (lambda m: m.update(surprise=1), "surprise"),
])
def test_invalid_manifest(tiny_zoo_copy, mutate, field):
    manifest = json.loads((tiny_zoo_copy / "zoo.json").read_text())
    mutate(manifest)
    (tiny_zoo_copy / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(ZooError) as info:
        open_zoo(tiny_zoo_copy)
    message = str(info.value)
    assert "zoo.json" in message and f"'{field}'" in message


def test_manifest_not_json(tiny_zoo_copy):
    (tiny_zoo_copy / "zoo.json").write_text("{ not json")
    with pytest.raises(ZooError, match="not valid JSON"):
        open_zoo(tiny_zoo_copy)


def test_missing_zoo_dir(tmp_path):
    with pytest.raises(ZooError, match="not found"):
        open_zoo(tmp_path / "nope")


def test_console_script_entry_point(tiny_zoo):
    proc = subprocess.run([sys.executable, "-m", "sammerge.cli", "zoo", "info", str(tiny_zoo), "--no-verify"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "tiny" in proc.stdout


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Temp files from mkstemp/mkdtemp are private (0600/0700); the final files and folders must not be."""
    import os

    import torch

    from sammerge.io import atomic_dir, atomic_write_text, save_state_dict

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.md", "x")
        save_state_dict({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        with atomic_dir(tmp_path / "out") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
