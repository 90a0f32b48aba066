"""ImageFolder roots → uint8 evaluation tensors stored inside an imported zoo.

Classes are the sub-folders of ``<root>/<split>/``, sorted case-sensitively (torchvision's ``ImageFolder``
order, so label i is the i-th sorted folder). Each image: RGB, shorter side resized to ``size``
(long side ``int(size · long / short)``, torchvision's rule), centre crop ``crop`` (offsets
``round((h − crop) / 2)``), kept as uint8 [3, crop, crop]. Normalization happens when the zoo is opened.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("val", "test")


@dataclass
class FolderSplit:
    root: Path
    classes: list[str]
    files: list[tuple[Path, int]]  # (image file, label)


def scan_split(root: Path, problems: list[str]) -> FolderSplit | None:
    """Classes and image files of one ImageFolder root; every problem (missing, empty class) is appended."""
    if not root.is_dir():
        problems.append(f"{root}: image folder not found (expected <class>/<image> sub-folders)")
        return None
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if len(classes) < 2:
        problems.append(f"{root}: {len(classes)} class folder(s); a task needs at least 2")
        return None
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not found:
            problems.append(f"{root / name}: empty class folder (no {'/'.join(IMG_EXTENSIONS)} images)")
        files += [(p, label) for p in found]
    return FolderSplit(root, classes, files)


def choose(files: list[tuple[Path, int]], budget: int | None, seed: int) -> list[tuple[Path, int]]:
    """All files, or a seeded uniform subset of ``budget`` of them (kept in folder order)."""
    if budget is None or budget >= len(files):
        return files
    idx = np.sort(np.random.default_rng(seed).choice(len(files), size=budget, replace=False))
    return [files[i] for i in idx]


_FILTERS = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}


def preprocess_image(path: Path, size: int, crop: int, interpolation: str = "bicubic") -> torch.Tensor:
    """uint8 [3, crop, crop]: RGB, shorter side → ``size``, centre crop ``crop``."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), getattr(Image.Resampling, _FILTERS[interpolation]))
        top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
        if top < 0 or left < 0:
            raise ValueError(f"resized to {new_w}×{new_h}, smaller than the crop {crop}")
        img = img.crop((left, top, left + crop, top + crop))
        arr = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_split(files: list[tuple[Path, int]], size: int, crop: int, interpolation: str,
               problems: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, crop, crop] and int64 labels [N]; unreadable images are appended to ``problems``."""
    images, labels = [], []
    for path, label in files:
        try:
            images.append(preprocess_image(path, size, crop, interpolation))
            labels.append(label)
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
            problems.append(f"{path}: unreadable image ({type(exc).__name__}: {exc})".replace("\n", " "))
    if not images:
        return torch.zeros(0, 3, crop, crop, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
