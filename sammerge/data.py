"""The glyph benchmark: 8 tasks + a disjoint pretraining set of 16x16 grayscale glyphs.

Data lives in ``assets/glyphs/`` (``benchmark.npz`` + ``manifest.json``), produced by
``scripts/make_glyphs.py``. Images are stored noise-free as uint8; Gaussian noise is added here,
deterministically, from the per-(task, split) seed recorded in the manifest::

    x = clip(images / 255 + sigma * default_rng(seed).standard_normal((N, 16, 16), float32), 0, 1)
    model input = (x - 0.5) / 0.5

Everything read is validated; problems raise :class:`sammerge.errors.DataError` with a one-line
message naming the file and the problem.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sammerge.errors import ConfigError, DataError

__all__ = ["Split", "TaskData", "Benchmark", "load_benchmark", "default_assets_dir", "SPLITS", "unlabeled_images",
           "unlabeled_draw"]

SPLITS = ("train", "val", "test")
NPZ_NAME = "benchmark.npz"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True, eq=False)
class Split:
    """One split of a task: ``images`` float32 [N,1,16,16], ``labels`` int64 [N], ``fonts`` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    fonts: torch.Tensor
    clean: torch.Tensor | None = None  # uint8 [N,16,16], noise-free glyphs (for fresh-noise training)
    sigma: float = 0.0  # the Gaussian noise σ of ``images``

    def noisy_batch(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Images ``idx`` with freshly drawn noise (same σ and normalization as ``images``).

        Training on fresh noise each step stops a model from memorizing the fixed noise of the stored
        samples; evaluation always uses the fixed ``images``.
        """
        if self.clean is None:
            return self.images[idx]
        x = self.clean[idx].to(torch.float32).mul_(1.0 / 255.0)
        x.add_(torch.randn(x.shape, generator=generator), alpha=self.sigma).clamp_(0.0, 1.0)
        return x.sub_(0.5).mul_(2.0).unsqueeze(1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int, seed: int = 0) -> "Split":
        """A deterministic, class-balanced (as far as possible) subset of ``min(n, len(self))`` samples.

        Classes are visited round-robin, each in a seeded random order, so the result depends only on
        (labels, n, seed); sample order in the result is sorted by original index.
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"subset: n must be >= 0, got {n}")
        if n >= len(self):
            return self
        rng = np.random.default_rng(int(seed))
        labels = self.labels.numpy()
        queues = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
        chosen: list[int] = []
        depth = 0
        while len(chosen) < n:
            row = [int(q[depth]) for q in queues if depth < len(q)]
            row = [row[i] for i in rng.permutation(len(row))]
            chosen.extend(row[: n - len(chosen)])
            depth += 1
        idx = torch.as_tensor(np.sort(np.asarray(chosen, dtype=np.int64)))
        return Split(self.images[idx], self.labels[idx], self.fonts[idx],
                     None if self.clean is None else self.clean[idx], self.sigma)


@dataclass(frozen=True, eq=False)
class TaskData:
    name: str
    description: str
    class_names: list[str]
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> Split:
        try:
            return self.splits[name]
        except KeyError:
            raise DataError(f"task {self.name}: unknown split {name!r} (have {', '.join(self.splits)})") from None


@dataclass(frozen=True, eq=False)
class Benchmark:
    tasks: dict[str, TaskData]
    pretrain: TaskData
    image_size: int
    manifest: dict
    path: Path

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def font(self, index: int) -> dict:
        """Manifest entry (file, family, style, package, licence, split) of font ``index``."""
        return self.manifest["fonts"][int(index)]


def default_assets_dir() -> Path:
    """``$SAMMERGE_ASSETS/glyphs`` if set (or ``$SAMMERGE_ASSETS`` itself if it holds the npz),
    else ``<repo>/assets/glyphs`` next to the ``sammerge`` package."""
    env = os.environ.get("SAMMERGE_ASSETS")
    if env:
        base = Path(env)
        return base if (base / NPZ_NAME).exists() or not (base / "glyphs").exists() else base / "glyphs"
    return Path(__file__).resolve().parent.parent / "assets" / "glyphs"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_benchmark(path: str | os.PathLike | None = None) -> Benchmark:
    """Load and validate the benchmark in directory ``path`` (or an explicit ``benchmark.npz``).

    Cached per resolved path and file state (size, mtime), so repeated calls are free.
    """
    p = Path(path) if path is not None else default_assets_dir()
    if p.suffix == ".npz":
        npz_path, directory = p, p.parent
    else:
        npz_path, directory = p / NPZ_NAME, p
    npz_path = npz_path.resolve()
    manifest_path = (directory / MANIFEST_NAME).resolve()
    stamp = []
    for f in (npz_path, manifest_path):
        try:
            st = f.stat()
        except OSError:
            raise DataError(f"{f}: file not found") from None
        stamp.append((st.st_size, st.st_mtime_ns))
    return _load_cached(str(npz_path), str(manifest_path), tuple(stamp))


@functools.lru_cache(maxsize=8)
def _load_cached(npz_file: str, manifest_file: str, _stamp: tuple) -> Benchmark:
    npz_path, manifest_path = Path(npz_file), Path(manifest_file)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{manifest_path}: cannot read manifest ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    if not isinstance(manifest, dict):
        raise DataError(f"{manifest_path}: manifest is not a JSON object")
    for key in ("npz_sha256", "image_size", "noise", "tasks", "pretrain", "fonts"):
        if key not in manifest:
            raise DataError(f"{manifest_path}: manifest lacks key {key!r}")

    expected = manifest["npz_sha256"]
    actual = _sha256(npz_path)
    if actual != expected:
        raise DataError(f"{npz_path}: sha256 mismatch (expected {expected[:12]}.., got {actual[:12]}..)")

    size = int(manifest["image_size"])
    sigma = float(manifest["noise"]["sigma"])
    seeds = manifest["noise"]["seeds"]
    fonts = manifest["fonts"]
    test_fonts = {i for i, f in enumerate(fonts) if f.get("split") == "test"}

    try:
        archive = np.load(npz_path, allow_pickle=False)
        arrays = {k: archive[k] for k in archive.files}
        archive.close()
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{npz_path}: not a readable npz archive ({type(exc).__name__}: {exc})".replace("\n", " ")) from None

    def build(meta: dict) -> TaskData:
        name = meta["name"]
        class_names = list(meta["class_names"])
        splits = {}
        split_fonts = {}
        for split in SPLITS:
            prefix = f"{name}/{split}"
            for part in ("images", "labels", "font"):
                if f"{prefix}/{part}" not in arrays:
                    raise DataError(f"{npz_path}: missing key {prefix}/{part}")
            images, labels, font = arrays[f"{prefix}/images"], arrays[f"{prefix}/labels"], arrays[f"{prefix}/font"]
            if images.dtype != np.uint8:
                raise DataError(f"{npz_path}: {prefix}/images has dtype {images.dtype}, expected uint8")
            for part, arr in (("labels", labels), ("font", font)):
                if arr.dtype != np.int64:
                    raise DataError(f"{npz_path}: {prefix}/{part} has dtype {arr.dtype}, expected int64")
            n = images.shape[0] if images.ndim else -1
            if images.shape != (n, size, size) or n <= 0:
                raise DataError(f"{npz_path}: {prefix}/images has shape {images.shape}, expected (N, {size}, {size})")
            if labels.shape != (n,) or font.shape != (n,):
                raise DataError(f"{npz_path}: {prefix}: labels {labels.shape} / font {font.shape} do not match {n} images")
            if labels.min() < 0 or labels.max() >= len(class_names):
                raise DataError(f"{npz_path}: {prefix}/labels outside [0, {len(class_names)}) "
                                f"(min {labels.min()}, max {labels.max()})")
            if font.min() < 0 or font.max() >= len(fonts):
                raise DataError(f"{npz_path}: {prefix}/font indices outside [0, {len(fonts)})")
            if prefix not in seeds:
                raise DataError(f"{manifest_path}: no noise seed for {prefix}")
            count = meta.get("counts", {}).get(split)
            if count is not None and int(count) != n:
                raise DataError(f"{npz_path}: {prefix} has {n} samples, manifest says {count}")
            split_fonts[split] = set(np.unique(font).tolist())
            noise = np.random.default_rng(int(seeds[prefix])).standard_normal((n, size, size), dtype=np.float32)
            x = images.astype(np.float32) * np.float32(1.0 / 255.0)
            x += np.float32(sigma) * noise
            np.clip(x, 0.0, 1.0, out=x)
            x -= 0.5
            x *= 2.0
            splits[split] = Split(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                                  torch.from_numpy(font.astype(np.int64)), torch.from_numpy(images), sigma)
        seen = split_fonts["train"] | split_fonts["val"]
        if seen & split_fonts["test"] or seen & test_fonts or not split_fonts["test"] <= test_fonts:
            raise DataError(f"{npz_path}: task {name}: test fonts overlap train/val fonts (font split violated)")
        return TaskData(name=name, description=meta.get("description", ""), class_names=class_names, splits=splits)

    try:
        tasks = {meta["name"]: build(meta) for meta in manifest["tasks"]}
        pretrain = build(manifest["pretrain"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{manifest_path}: malformed task entry ({type(exc).__name__}: {exc})") from None
    return Benchmark(tasks=tasks, pretrain=pretrain, image_size=size, manifest=manifest, path=npz_path.parent)


def unlabeled_images(zoo, task: str, n: int, seed: int, split: str = "val") -> torch.Tensor:
    """``n`` images of a task's split of ``zoo`` chosen by a seeded permutation (labels are never read; all of
    them when the split is smaller)."""
    return unlabeled_draw(zoo, task, n, 0, seed, split)[0]


def unlabeled_draw(zoo, task: str, n: int, holdout: int, seed: int, split: str = "val"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the ``n`` images of :func:`unlabeled_images`, ``holdout`` further images of the same seeded permutation,
    disjoint from them). Raises ConfigError when the split has fewer than ``n + holdout`` images and a holdout is
    asked for."""
    images = zoo.split(task, split).images
    if holdout and n + holdout > len(images):
        raise ConfigError(f"task {task!r}: {n} + {holdout} held-out unlabeled images asked for, but its {split} split "
                          f"has {len(images)}")
    if n >= len(images):
        return images, images[:0]
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(images), generator=gen)
    return images[perm[:n].sort().values], images[perm[n:n + holdout].sort().values]
