"""Tests for sammerge.data: the shipped glyph benchmark and the loader's validation."""
from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sammerge.data import default_assets_dir, load_benchmark
from sammerge.errors import DataError

EXPECTED_TASKS = [
    "digits", "latin_upper", "latin_lower", "greek_lower", "cyrillic_upper", "symbols", "greek_upper", "font_style",
]
EXPECTED_CLASSES = {
    "digits": 10, "latin_upper": 13, "latin_lower": 13, "greek_lower": 24, "cyrillic_upper": 20,
    "symbols": 14, "greek_upper": 10, "font_style": 4,
}
ASSETS = default_assets_dir()


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


def _copy_assets(tmp_path: Path) -> Path:
    dst = tmp_path / "glyphs"
    dst.mkdir()
    for name in ("benchmark.npz", "manifest.json"):
        shutil.copy(ASSETS / name, dst / name)
    return dst


def _rewrite_sha(directory: Path) -> None:
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["npz_sha256"] = hashlib.sha256((directory / "benchmark.npz").read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")


def _rewrite_npz(directory: Path, edit) -> None:
    path = directory / "benchmark.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(path, **arrays)  # uncompressed: fast
    _rewrite_sha(directory)


# ----------------------------------------------------------------------------- shipped data
def test_tasks_shapes_dtypes_labels(bench):
    assert list(bench.tasks) == EXPECTED_TASKS
    assert bench.image_size == 16
    for name, task in list(bench.tasks.items()) + [("pretrain", bench.pretrain)]:
        if name != "pretrain":
            assert task.num_classes == EXPECTED_CLASSES[name] == len(task.class_names)
        assert set(task.splits) == {"train", "val", "test"}
        for split_name, split in task.splits.items():
            n = len(split)
            assert n > 0
            assert split.images.dtype == torch.float32 and split.images.shape == (n, 1, 16, 16)
            assert split.labels.dtype == torch.int64 and split.labels.shape == (n,)
            assert split.fonts.dtype == torch.int64 and split.fonts.shape == (n,)
            assert int(split.labels.min()) >= 0 and int(split.labels.max()) < task.num_classes
            assert float(split.images.min()) >= -1.0 and float(split.images.max()) <= 1.0
            # every class present in every split, roughly balanced
            counts = torch.bincount(split.labels, minlength=task.num_classes)
            assert int(counts.min()) > 0 and int(counts.max()) - int(counts.min()) <= 2
        assert task.split("val") is task.splits["val"]
    assert bench.pretrain.num_classes == 26
    assert len(bench.tasks["digits"].splits["train"]) == 2048
    assert len(bench.pretrain.splits["train"]) == 6000


def test_pretrain_classes_disjoint_from_tasks(bench):
    task_glyphs = set()
    for meta in bench.manifest["tasks"]:
        if meta["name"] != "font_style":
            task_glyphs |= set(meta["class_names"])
    assert not task_glyphs & set(bench.pretrain.class_names)


def test_font_split_disjoint(bench):
    fonts = bench.manifest["fonts"]
    test_fonts = {i for i, f in enumerate(fonts) if f["split"] == "test"}
    test_groups = {f["group"] for f in fonts if f["split"] == "test"}
    train_groups = {f["group"] for f in fonts if f["split"] != "test"}
    assert test_fonts and not test_groups & train_groups
    for task in list(bench.tasks.values()) + [bench.pretrain]:
        seen = set(task.splits["train"].fonts.tolist()) | set(task.splits["val"].fonts.tolist())
        test = set(task.splits["test"].fonts.tolist())
        assert not seen & test, task.name
        assert test <= test_fonts and not seen & test_fonts, task.name


def test_noise_is_deterministic(bench, tmp_path):
    # a second, uncached load (different path) gives bit-identical tensors
    again = load_benchmark(_copy_assets(tmp_path))
    assert again is not bench
    for name in ("digits", "font_style"):
        a, b = bench.tasks[name].splits["test"], again.tasks[name].splits["test"]
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # noise really is there: images are not just the clean glyph levels
    x = bench.tasks["digits"].splits["train"].images
    assert float(((x > -1) & (x < 1)).float().mean()) > 0.3
    assert load_benchmark() is bench  # cached


def test_subset_deterministic_and_balanced(bench):
    split = bench.tasks["greek_lower"].splits["val"]
    a, b, c = split.subset(96, seed=1), split.subset(96, seed=1), split.subset(96, seed=2)
    assert len(a) == 96 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels) or not torch.equal(a.images, c.images)
    counts = torch.bincount(a.labels, minlength=24)
    assert int(counts.max()) - int(counts.min()) <= 1
    assert split.subset(10**6, seed=0) is split


# ----------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="benchmark.npz.*not found"):
        load_benchmark(tmp_path)


def test_truncated_npz(tmp_path):
    d = _copy_assets(tmp_path)
    data = (d / "benchmark.npz").read_bytes()
    (d / "benchmark.npz").write_bytes(data[: len(data) // 2])
    _rewrite_sha(d)  # so the failure is the archive itself, not the hash
    with pytest.raises(DataError, match="benchmark.npz") as exc:
        load_benchmark(d)
    assert "\n" not in str(exc.value)


def test_sha_mismatch(tmp_path):
    d = _copy_assets(tmp_path)
    with open(d / "benchmark.npz", "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(DataError, match="benchmark.npz: sha256 mismatch"):
        load_benchmark(d)


def test_bad_labels(tmp_path):
    d = _copy_assets(tmp_path)

    def edit(arrays):
        arrays["digits/val/labels"] = arrays["digits/val/labels"].copy()
        arrays["digits/val/labels"][0] = 10

    _rewrite_npz(d, edit)
    with pytest.raises(DataError, match=r"benchmark.npz: digits/val/labels outside \[0, 10\)"):
        load_benchmark(d)


def test_missing_key_and_bad_dtype(tmp_path):
    d = _copy_assets(tmp_path)
    _rewrite_npz(d, lambda arrays: arrays.pop("symbols/test/font"))
    with pytest.raises(DataError, match="benchmark.npz: missing key symbols/test/font"):
        load_benchmark(d)
    (tmp_path / "b").mkdir()
    d2 = _copy_assets(tmp_path / "b")

    def edit(arrays):
        arrays["digits/train/images"] = arrays["digits/train/images"].astype(np.float32)

    _rewrite_npz(d2, edit)
    with pytest.raises(DataError, match="digits/train/images has dtype float32"):
        load_benchmark(d2)


def test_font_overlap_detected(tmp_path):
    d = _copy_assets(tmp_path)

    def edit(arrays):
        test_font = int(arrays["latin_upper/test/font"][0])
        arrays["latin_upper/train/font"] = arrays["latin_upper/train/font"].copy()
        arrays["latin_upper/train/font"][0] = test_font

    _rewrite_npz(d, edit)
    with pytest.raises(DataError, match="latin_upper: test fonts overlap"):
        load_benchmark(d)


def test_not_a_zip(tmp_path):
    d = _copy_assets(tmp_path)
    (d / "benchmark.npz").write_bytes(b"not a zip file at all")
    _rewrite_sha(d)
    with pytest.raises(DataError, match="benchmark.npz: not a readable npz"):
        load_benchmark(d)
    assert zipfile.is_zipfile(ASSETS / "benchmark.npz")
