"""The `animals` real-image task: animal-mnist's pickled arrays read without running any pickled code, every image in
exactly one split, copies (equal 7×7 binarized thumbnails) never in two splits, bad files named."""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sammerge.errors import DataError
from sammerge.training import real_tasks


def thumbnail(image: np.ndarray) -> bytes:
    """7×7 mean over 4×4 cells, binarized at 64 (torch's pooling: another path than the loader's reshape)."""
    pooled = F.avg_pool2d(torch.as_tensor(image, dtype=torch.float32)[None, None], 4)[0, 0]
    return (pooled > 64).numpy().tobytes()


def write_source(folder, images: np.ndarray, labels: np.ndarray) -> None:
    for name, value in zip(real_tasks.ANIMALS_FILES, (images, labels)):
        with gzip.open(folder / name, "wb") as f:
            pickle.dump(value, f)


@pytest.fixture
def source(tmp_path, monkeypatch):
    """120 originals (random blobs) and near copies of 60 of them: one pixel flipped, the thumbnail kept."""
    rng = np.random.default_rng(0)
    originals = (rng.random((120, 28, 28)) > 0.5).astype(np.uint8) * 255
    labels = np.arange(120) % 10
    pick = rng.choice(120, 60, replace=False)
    copies = originals[pick].copy()
    copies[:, 0, 0] = 255 - copies[:, 0, 0]
    same = [thumbnail(c) == thumbnail(o) for c, o in zip(copies, originals[pick])]
    pick, copies = pick[same], copies[same]
    assert len(pick) > 40
    images, all_labels = np.concatenate([originals, copies]), np.concatenate([labels, labels[pick]]).astype(np.int64)
    write_source(tmp_path, images, all_labels)
    monkeypatch.setattr(real_tasks, "ANIMALS_DIR", str(tmp_path))
    return tmp_path, images, all_labels


def test_every_image_in_one_split_and_copies_together(source):
    _, images, labels = source
    data = real_tasks.load_task("animals", seed=0)
    resized = F.interpolate(torch.as_tensor(images, dtype=torch.float32)[:, None], size=(32, 32), mode="bilinear",
                            align_corners=False).round().clamp(0, 255).to(torch.uint8)[:, 0]
    index = {resized[i].numpy().tobytes(): i for i in range(len(images))}
    split_of_thumb: dict[bytes, set] = {}
    seen = []
    for split, (x, y) in data.items():
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.uint8
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
        for img, label in zip(x, y.tolist()):
            i = index[img[0].numpy().tobytes()]
            assert labels[i] == label
            seen.append(i)
            split_of_thumb.setdefault(thumbnail(images[i]), set()).add(split)
    assert sorted(seen) == list(range(len(images)))
    assert all(len(s) == 1 for s in split_of_thumb.values())
    sizes = [len(y) for _, y in data.values()]
    assert sizes[0] > sizes[1] and sizes[0] > sizes[2] and min(sizes) > 20  # ≈ 60 / 20 / 20 % of the 120 groups
    again = real_tasks.load_task("animals", seed=0)
    other = real_tasks.load_task("animals", seed=1)
    assert all(torch.equal(again[s][0], data[s][0]) for s in data)
    assert not torch.equal(other["test"][1][:20], data["test"][1][:20])


def test_pickled_code_is_refused_and_never_run(tmp_path, monkeypatch):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    with gzip.open(tmp_path / real_tasks.ANIMALS_FILES[0], "wb") as f:
        pickle.dump(Payload(), f)
    with gzip.open(tmp_path / real_tasks.ANIMALS_FILES[1], "wb") as f:
        pickle.dump(np.zeros(3, dtype=np.int64), f)
    monkeypatch.setattr(real_tasks, "ANIMALS_DIR", str(tmp_path))
    with pytest.raises(DataError, match="refusing to unpickle .*system: only numpy arrays are read"):
        real_tasks.load_task("animals")
    assert not marker.exists()


def test_bad_sources_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(real_tasks, "ANIMALS_DIR", str(tmp_path))
    problems = real_tasks.missing_sources(["animals", "sklearn_digits"])
    assert any(p.startswith("animals:") and real_tasks.ANIMALS_FILES[0] in p and real_tasks.ANIMALS_FILES[1] in p
               for p in problems)
    (tmp_path / real_tasks.ANIMALS_FILES[0]).write_bytes(b"not gzip")
    (tmp_path / real_tasks.ANIMALS_FILES[1]).write_bytes(b"not gzip")
    with pytest.raises(DataError, match=f"{real_tasks.ANIMALS_FILES[0]}: not a gzipped pickled numpy array"):
        real_tasks.load_task("animals")
    write_source(tmp_path, np.zeros((4, 16, 16), np.uint8), np.zeros(4, np.int64))
    with pytest.raises(DataError, match=r"expected images \[N, 28, 28\]"):
        real_tasks.load_task("animals")
    assert real_tasks.missing_sources(["animals"]) == []


def test_the_package_data_when_installed():
    pytest.importorskip("animal_mnist", reason="pip install --no-deps animal-mnist==0.4")
    data = real_tasks.load_task("animals", seed=0)
    assert sum(len(y) for _, y in data.values()) == 10000
    for _, y in data.values():
        assert sorted(set(y.tolist())) == list(range(10))
    assert [len(y) for _, y in data.values()] == [5937, 1988, 2075]  # 60 / 20 / 20 % of 8,092 thumbnail groups
    assert "5937/1988/2075" in real_tasks.describe("animals", 0)
