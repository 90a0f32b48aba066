"""`sammerge zoo import` of timm checkpoints: conversion equals timm's own forward; every defect reported at once,
nothing written; `sammerge eval` accepts configs naming the user's original files."""
from __future__ import annotations

import json
import math
import zipfile

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from import_fixtures import perturb, reference_images, write_image_folders
from sammerge.cli import main as cli_main
from sammerge.errors import ImportCheckError
from sammerge.importing import import_zoo, load_import_spec
from sammerge.zoo import open_zoo

MODEL = "vit_tiny_patch16_224"
KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
TASKS = ("pets", "flowers")


def _cuda_tagged_save(obj, path) -> None:
    """torch.save as if the tensors lived on cuda:0 (location tag 'cuda:0'), on a machine without CUDA."""
    entry = (1, lambda storage: "cuda:0", lambda storage, location: None)
    torch.serialization._package_registry.append(entry)
    torch.serialization._package_registry.sort(key=lambda e: e[0])
    try:
        torch.save(obj, path)
    finally:
        torch.serialization._package_registry.remove(entry)


def write_timm(root):
    """base.safetensors; ft/<task>_plain.safetensors (with its 3-class classifier) and ft/<task>_sam.pt (a
    {'state_dict': {'module.…'}} wrapper, saved as CUDA tensors); heads; image folders; reference logits."""
    torch.manual_seed(0)
    base = timm.create_model(MODEL, pretrained=False, num_classes=0, **KWARGS).eval()
    (root / "ft").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(root / "base.safetensors"))
    refs, tasks = {}, {}
    for i, task in enumerate(TASKS):
        head_w = torch.randn(3, 32, generator=torch.Generator().manual_seed(i))
        head_b = torch.randn(3, generator=torch.Generator().manual_seed(50 + i))
        save_file({"weight": head_w, "bias": head_b}, str(root / f"head_{task}.safetensors"))
        states = {v: perturb(base.state_dict(), 0.02, 10 * i + j) for j, v in enumerate(("plain", "sam"))}
        save_file({**states["plain"], "head.weight": head_w, "head.bias": head_b}, str(root / "ft" / f"{task}_plain.safetensors"))
        _cuda_tagged_save({"state_dict": {f"module.{k}": v for k, v in states["sam"].items()}, "epoch": 3},
                          root / "ft" / f"{task}_sam.pt")
        write_image_folders(root / "data" / task, seed=i)
        tasks[task] = {"head": f"head_{task}.safetensors", "data": f"data/{task}",
                       "checkpoints": {"plain": f"ft/{task}_plain.safetensors", "sam": f"ft/{task}_sam.pt"}}
        model = timm.create_model(MODEL, pretrained=False, num_classes=0, **KWARGS).eval()
        for split in ("val", "test"):
            x, y = reference_images(root / "data" / task, split, 35, 32, (0.5,) * 3, (0.5,) * 3)
            ref = {"labels": y}
            for name, state in (("pretrained", base.state_dict()), *states.items()):
                model.load_state_dict(state)
                with torch.no_grad():
                    ref[name] = model(x) @ head_w.T + head_b
            refs[(task, split)] = ref
    spec = {"format": "timm", "model": MODEL, "model_kwargs": KWARGS, "pretrained": "base.safetensors", "tasks": tasks}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root / "spec.yaml", refs


@pytest.fixture
def timm_files(tmp_path):
    return write_timm(tmp_path)


def test_timm_import_matches_timm_forward(timm_files, tmp_path):
    from test_import_clip import check_against_reference
    spec_path, refs = timm_files
    with zipfile.ZipFile(tmp_path / "ft" / "pets_sam.pt") as z:  # the fixture really says cuda:0
        assert b"cuda:0" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    zoo = import_zoo(load_import_spec(spec_path), tmp_path / "zoo")
    m = zoo.manifest
    assert m.format_version == 2 and m.encoder.model == MODEL and m.encoder.embed_dim == 32
    # timm's data config for a 32-px input: resize floor(32 / 0.9) = 35, centre crop 32, mean = std = 0.5
    assert (m.images.size, m.images.crop, m.images.mean, m.images.interpolation) == (35, 32, (0.5,) * 3, "bicubic")
    assert not any(t.head_normalize for t in m.tasks)
    assert "head.weight" not in zoo.finetuned("pets", "plain")  # the fine-tuned classifier is dropped
    check_against_reference(zoo, refs)
    with pytest.raises(Exception, match="no train split"):
        zoo.split("pets", "train")
    r = m.checkpoint("pets", "plain")
    ref = refs[("pets", "test")]
    assert r.accuracy.test == pytest.approx(float((ref["plain"].argmax(1) == ref["labels"]).float().mean()))
    assert r.pretrained_accuracy.test == pytest.approx(float((ref["pretrained"].argmax(1) == ref["labels"]).float().mean()))
    tau = math.sqrt(sum(float((zoo.finetuned("pets", "plain")[k] - zoo.pretrained()[k]).pow(2).sum()) for k in zoo.pretrained()))
    assert r.task_vector_norm == pytest.approx(tau, rel=1e-6)


def test_image_budget_is_a_seeded_recorded_subset(timm_files, tmp_path):
    spec_path, _ = timm_files
    a = import_zoo(load_import_spec(spec_path), tmp_path / "a", max_images_per_split=4, seed=3)
    b = import_zoo(load_import_spec(spec_path), tmp_path / "b", max_images_per_split=4, seed=3)
    assert a.manifest.images.max_images_per_split == 4 and a.manifest.images.subset_seed == 3
    assert a.manifest.images.counts == {t: {"val": 4, "test": 4} for t in TASKS}
    assert torch.equal(a.split("pets", "val").images, b.split("pets", "val").images)
    full = reference_images(tmp_path / "data" / "pets", "val", 35, 32, (0.5,) * 3, (0.5,) * 3)[0]
    # every stored image is one of the folder's images
    for img in a.split("pets", "val").images:
        assert min(float((img - f).abs().max()) for f in full) < 1e-6


def test_every_problem_is_reported_and_nothing_written(timm_files, tmp_path):
    spec_path, _ = timm_files
    spec = yaml.safe_load(spec_path.read_text())
    good = torch.load(tmp_path / "ft" / "pets_sam.pt", weights_only=True, map_location="cpu")["state_dict"]
    bad_nan = {k.removeprefix("module."): v.clone() for k, v in good.items()}
    bad_nan["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    bad_nan["pos_embed"] = torch.zeros(1, 5, 32)
    save_file(bad_nan, str(tmp_path / "ft" / "nan.safetensors"))
    (tmp_path / "ft" / "trunc.pt").write_bytes((tmp_path / "ft" / "pets_sam.pt").read_bytes()[:5000])
    spec["tasks"]["pets"]["checkpoints"] = {"plain": "ft/nan.safetensors", "sam": "ft/trunc.pt", "asam": "ft/gone.pt"}
    (tmp_path / "data" / "flowers" / "test" / "zebra").mkdir()  # empty class folder, and test ≠ val classes
    save_file({"weight": torch.randn(5, 32), "bias": torch.zeros(5)}, str(tmp_path / "head_pets.safetensors"))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ImportCheckError) as info:
        import_zoo(load_import_spec(tmp_path / "bad.yaml"), tmp_path / "zoo")
    text = str(info.value)
    expected = ["nan.safetensors: tensor 'blocks.0.attn.qkv.weight' contains NaN",
                "nan.safetensors: tensor 'pos_embed' has shape [1, 5, 32], the encoder expects [1, 17, 32]",
                "trunc.pt: unreadable torch file", "gone.pt: file not found",
                "head_pets.safetensors: head has 5 rows (classes) but", "test/zebra: empty class folder",
                "val and test have different class folders"]
    for fragment in expected:
        assert fragment in text, (fragment, text)
    assert len(info.value.problems) >= len(expected)
    assert not (tmp_path / "zoo").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".zoo")]  # no temp directory left behind
    # the CLI prints them all and exits 2
    assert cli_main(["zoo", "import", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "zoo"), "--quiet"]) == 2
    assert not (tmp_path / "zoo").exists()


def test_cli_import_then_eval_with_the_users_original_paths(timm_files, tmp_path, capsys):
    spec_path, refs = timm_files
    out = tmp_path / "zoo"
    assert cli_main(["zoo", "import", str(spec_path), "--out", str(out), "--quiet"]) == 0
    assert "imported 4 checkpoints of 2 tasks" in capsys.readouterr().out
    zoo = open_zoo(out, verify=True)
    # a mergekit config written against the user's own files (a .pt state dict among them)
    config = {"merge_method": "task_arithmetic", "base_model": str(tmp_path / "base.safetensors"),
              "parameters": {"lambda": 1.0},
              "models": [{"model": str(tmp_path / "ft" / "pets_sam.pt"), "parameters": {"weight": 1.0}}]}
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(config))
    assert cli_main(["eval", str(out), str(tmp_path / "merge.yaml"), "--split", "test", "--all-tasks"]) == 0
    result = json.loads(capsys.readouterr().out)
    ref = refs[("pets", "test")]
    pets = next(r for r in result["per_task"] if r["task"] == "pets")
    assert pets["loss"] == pytest.approx(float(F.cross_entropy(ref["sam"], ref["labels"])), abs=1e-5)
    assert zoo.manifest.checkpoint("pets", "sam").source.original == str((tmp_path / "ft" / "pets_sam.pt").resolve())


def test_bad_spec_lists_every_invalid_field(tmp_path):
    from sammerge.errors import ConfigError
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({
        "format": "onnx", "pretrained": "b.safetensors", "colour": "blue",
        "tasks": {"a b": {"head": "h", "data": "d", "checkpoints": {"Plain": "x"}}}}))
    with pytest.raises(ConfigError) as info:
        load_import_spec(tmp_path / "s.yaml")
    for fragment in ("'format'", "'colour'", "task names", "variant names"):
        assert fragment in str(info.value), (fragment, str(info.value))


def test_zoo_info_on_an_imported_zoo(timm_files, tmp_path, capsys):
    spec_path, _ = timm_files
    import_zoo(load_import_spec(spec_path), tmp_path / "zoo", max_images_per_split=3)
    assert cli_main(["zoo", "info", str(tmp_path / "zoo")]) == 0
    out = capsys.readouterr().out
    assert "imported from timm" in out and "verified" in out and "pets" in out
