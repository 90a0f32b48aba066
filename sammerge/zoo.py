"""Model zoos: the manifest, open, verify, and each task's images.

Layout of a zoo directory::

    zoo.json                                   ZooManifest
    pretrained.safetensors                     θ0, the encoder
    heads.safetensors                          frozen linear heads, keys "{task}.weight" / "{task}.bias"
    finetuned/{task}__{variant}.safetensors    θ_t for each task and fine-tuning variant
    data/{task}.safetensors                    imported zoos only: "{split}/images" uint8 [N, C, S, S]
                                               (resized, centre-cropped) and "{split}/labels" int64 [N]
    prefix.safetensors                         optional: a frozen encoder prefix (EfficientNet-Lite0 tail zoos);
                                               the encoder's inputs are its outputs on the images

A checkpoint is stored either as θ_t (``stored: weights``) or as its task vector τ_t = θ_t − θ0 (``stored:
task_vector``, e.g. float16 to ship small: τ_t is read back in float32 and θ_t = θ0 + τ_t).

Zoos built here (``sammerge zoo build``) have a training ``recipe`` and read the glyph benchmark; imported
zoos (``sammerge zoo import``, format_version 2) have ``source`` and ``images`` instead and a timm encoder; the
EfficientNet-Lite0 zoo (``sammerge.training.lite0_zoo``, format_version 3) has ``source`` (its build recipe), ``images``,
a ``prefix`` and float16 task vectors.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sammerge.errors import CheckpointError, ZooError, invalid_fields
from sammerge.io import load_state_dict, sha256_file
from sammerge.merging.task_vector import apply_task_vector, task_vector
from sammerge.models.model import (AnyEncoderConfig, Head, create_encoder, heads_from_state_dict,
                                     without_fused_attention)
from sammerge.models.presets import VariantSpec, ZooRecipe

FORMAT_VERSION = 1
IMPORTED_FORMAT_VERSION = 2  # zoos written by `sammerge zoo import`
TASK_VECTOR_FORMAT_VERSION = 3  # zoos with stored task vectors or a frozen prefix (sammerge.training.lite0_zoo)
MANIFEST_NAME = "zoo.json"


class SplitScores(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: float | None = Field(None, ge=0, le=1)  # imported zoos have no train split
    val: float = Field(ge=0, le=1)
    test: float = Field(ge=0, le=1)
    val_loss: float | None = None
    test_loss: float | None = None


class TaskInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    class_names: list[str] = Field(min_length=2)
    head_normalize: bool = False  # logits = normalize(f) @ Wᵀ + b (CLIP heads)


class FileRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SourceRecord(BaseModel):
    """Where an imported file came from: its format, the original path and the original file's sha256."""
    model_config = ConfigDict(extra="forbid")
    format: str
    original: str
    original_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ImageData(BaseModel):
    """An imported zoo's evaluation images: stored uint8 after resize + centre crop; x = (u/255 − mean) / std."""
    model_config = ConfigDict(extra="forbid")
    files: dict[str, FileRecord]  # task → data/{task}.safetensors
    splits: list[str]
    counts: dict[str, dict[str, int]]  # task → split → images stored
    size: int = Field(ge=1)
    crop: int = Field(ge=1)
    interpolation: str = "bicubic"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_images_per_split: int | None = None
    subset_seed: int = 0
    sources: dict[str, str] = {}  # task → the ImageFolder root it came from


class CheckpointRecord(FileRecord):
    task: str
    stored: Literal["weights", "task_vector"] = "weights"  # the file holds θ_t, or τ_t = θ_t − θ0
    variant: str
    method: dict  # optimizer, lr, steps, sam, rho, adaptive, ...
    accuracy: SplitScores
    pretrained_accuracy: SplitScores
    task_vector_norm: float = Field(ge=0)
    final_train_loss: float | None = None
    wall_time_s: float = Field(ge=0)
    source: SourceRecord | None = None  # imported zoos


class ZooManifest(BaseModel):
    """zoo.json: everything needed to reload, verify and reproduce a zoo."""

    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    name: str
    created: str
    recipe: ZooRecipe | None = None  # zoos built here
    recipe_fingerprint: str | None = None
    seed: int
    encoder: AnyEncoderConfig
    data: dict  # path, sha256 of the benchmark (built zoos) or {"kind": "imported"}
    tasks: list[TaskInfo] = Field(min_length=1)
    variants: list[VariantSpec]
    pretrained: FileRecord
    heads: FileRecord
    pretrained_source: SourceRecord | None = None
    images: ImageData | None = None  # imported zoos: their own evaluation images
    prefix: FileRecord | None = None  # frozen encoder prefix (arch lite0_tail): images ↦ the encoder's inputs
    source: dict | None = None  # imported zoos: format, spec file and its sha256, options
    pretrain_accuracy: float | None = None  # pretraining classes, val split
    checkpoints: list[CheckpointRecord]
    versions: dict[str, str]
    device: str
    threads: int
    build_wall_time_s: float
    stage_times_s: dict[str, float] = {}

    def checkpoint(self, task: str, variant: str) -> CheckpointRecord:
        for record in self.checkpoints:
            if record.task == task and record.variant == variant:
                return record
        raise ZooError(f"zoo '{self.name}': no checkpoint for task '{task}', variant '{variant}'")

    @property
    def imported(self) -> bool:
        """Converted from a user's files by ``sammerge zoo import`` (its files record where they came from)."""
        return self.pretrained_source is not None or any(r.source is not None for r in self.checkpoints)

    @property
    def linearized(self) -> bool:
        """Fine-tuned (and so evaluated) as f(θ0) + J f(θ0)(θ − θ0) (recipe ``finetune.linearized``)."""
        return self.recipe is not None and self.recipe.finetune.linearized

    def describe(self) -> str:
        """One line: preset and seed (built here) or the import format and model (imported)."""
        if self.recipe is not None:
            return f"preset {self.recipe.preset}, seed {self.seed}"
        if self.source.get("summary"):
            return self.source["summary"]
        return f"imported from {self.source.get('format', '?')} ({self.source.get('model', '?')})"


def data_sha256(bench) -> str:
    """sha256 of the benchmark arrays a zoo was built on (from the validated data manifest)."""
    return bench.manifest["npz_sha256"]




def normalize_uint8(images: torch.Tensor, mean, std) -> torch.Tensor:
    """x = (u / 255 − mean) / std per channel, for uint8 images [N, C, H, W] (imported zoos)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - mean_t) / std_t


def read_manifest(path: str | os.PathLike) -> ZooManifest:
    """Parse and validate zoo.json (ZooError naming the file and the first invalid field)."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME if path.is_dir() else path
    if not path.exists():
        raise ZooError(f"{path}: zoo directory not found")
    if not manifest_path.is_file():
        raise ZooError(f"{manifest_path}: missing zoo manifest")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZooError(f"{manifest_path}: not valid JSON ({exc})") from exc
    try:
        return ZooManifest.model_validate(raw)
    except ValidationError as exc:
        raise ZooError(f"{manifest_path}: {invalid_fields(exc)}") from None


@dataclass
class Zoo:
    """An opened zoo. Tensors are loaded lazily and cached; every load verifies the sha256."""

    path: Path
    manifest: ZooManifest

    @property
    def tasks(self) -> list[str]:
        return [t.name for t in self.manifest.tasks]

    @property
    def variants(self) -> list[str]:
        return [v.name for v in self.manifest.variants]

    @property
    def encoder_config(self) -> AnyEncoderConfig:
        return self.manifest.encoder

    def create_encoder(self, fused_attention: bool = False) -> torch.nn.Module:
        """A fresh encoder module (eval mode). timm's fused attention is off unless asked for: analytics take
        derivatives of derivatives through it (no forward-mode AD for the fused CPU kernel); outputs are the same."""
        encoder = create_encoder(self.encoder_config).eval()
        return encoder if fused_attention else without_fused_attention(encoder)

    def _load(self, record: FileRecord) -> dict[str, torch.Tensor]:
        cache = self.__dict__.setdefault("_cache", {})
        if record.file not in cache:
            cache[record.file] = load_state_dict(self.path / record.file, expected_sha256=record.sha256)
        return cache[record.file]

    def pretrained(self) -> dict[str, torch.Tensor]:
        """θ0 (shared; do not modify in place)."""
        return self._load(self.manifest.pretrained)

    def finetuned(self, task: str, variant: str) -> dict[str, torch.Tensor]:
        """θ_t for a task and a fine-tuning variant (θ0 + τ_t, cached, where the zoo stores τ_t)."""
        record = self.manifest.checkpoint(task, variant)
        if record.stored == "weights":
            return self._load(record)
        cache = self.__dict__.setdefault("_finetuned", {})
        if record.file not in cache:
            cache[record.file] = apply_task_vector(self.pretrained(), self.task_vector(task, variant))
        return cache[record.file]

    def task_vector(self, task: str, variant: str) -> dict[str, torch.Tensor]:
        """τ_t = θ_t − θ0 over θ0's floating keys (where the zoo stores τ_t: as stored, in float32)."""
        record = self.manifest.checkpoint(task, variant)
        if record.stored == "weights":
            return task_vector(self.finetuned(task, variant), self.pretrained(), check_finite=False)
        stored, theta0 = self._load(record), self.pretrained()
        floating = [k for k, v in theta0.items() if v.is_floating_point()]
        if sorted(stored) != sorted(floating) or any(stored[k].shape != theta0[k].shape for k in floating):
            raise CheckpointError(f"{self.path / record.file}: a task vector whose keys or shapes differ from "
                                  f"{self.manifest.pretrained.file}")
        return {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}

    @cached_property
    def heads(self) -> dict[str, Head]:
        state = self._load(self.manifest.heads)
        return heads_from_state_dict(state, self.tasks, str(self.path / self.manifest.heads.file),
                                     {t.name: t.head_normalize for t in self.manifest.tasks})

    @cached_property
    def benchmark(self):
        from sammerge.data import load_benchmark
        bench = load_benchmark()
        if data_sha256(bench) != self.manifest.data.get("sha256"):
            raise ZooError(f"{self.path / MANIFEST_NAME}: built on benchmark data {self.manifest.data.get('sha256', '?')[:12]}…, "
                           f"but the installed data is {data_sha256(bench)[:12]}… (rebuild the zoo)")
        return bench

    def split(self, task: str, split: str):
        """The images and labels of one task's split (``sammerge.data.Split``: ``.images``, ``.labels``, ``.subset``)."""
        if split not in ("train", "val", "test"):
            raise ZooError(f"split must be train, val or test, not '{split}'")
        if task not in self.tasks:
            raise ZooError(f"unknown task '{task}' (zoo has: {', '.join(self.tasks)})")
        if self.manifest.images is not None:
            return self._imported_split(task, split)
        return self.benchmark.tasks[task].splits[split]

    def _imported_split(self, task: str, split: str):
        """A stored task's split: x = (uint8 / 255 − mean) / std, per channel, then the frozen prefix where the zoo
        has one (cached)."""
        from sammerge.data import Split

        images = self.manifest.images
        if split not in images.splits:
            raise ZooError(f"zoo '{self.path}' (imported) has no {split} split — it stores "
                           f"{' and '.join(images.splits)} images; use --split {images.splits[0]}")
        cache = self.__dict__.setdefault("_splits", {})
        if (task, split) not in cache:
            state = self._load(images.files[task])
            u8, labels = state[f"{split}/images"], state[f"{split}/labels"]
            x = normalize_uint8(u8, images.mean, images.std)
            if self.manifest.prefix is not None:  # the encoder reads the frozen prefix's output: computed once
                from sammerge.models.lite0_tail import prefix_activations
                x = prefix_activations(self.input_prefix(), x)
            cache[(task, split)] = Split(x, labels.to(torch.int64), torch.zeros(len(labels), dtype=torch.int64))
        return cache[(task, split)]

    def input_prefix(self) -> torch.nn.Module:
        """The frozen prefix whose outputs are the encoder's inputs (zoos with ``prefix``), eval mode; built once per
        Zoo (every task and split runs through it)."""
        from sammerge.models.lite0_tail import create_lite0_prefix
        from sammerge.models.model import Lite0TailConfig
        if self.manifest.prefix is None or not isinstance(self.encoder_config, Lite0TailConfig):
            raise ZooError(f"zoo '{self.path}': no frozen prefix (only EfficientNet-Lite0 tail zoos have one)")
        if "_prefix" in self.__dict__:
            return self.__dict__["_prefix"]
        module = create_lite0_prefix(self.encoder_config)
        try:
            module.load_state_dict(self._load(self.manifest.prefix))
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path / self.manifest.prefix.file}: not the prefix of "
                                  f"EfficientNet-Lite0 before stage {self.encoder_config.start} "
                                  f"({str(exc).splitlines()[0]})") from None
        self.__dict__["_prefix"] = module
        return module

    def original_files(self) -> dict[str, Path]:
        """sha256 of a user's original checkpoint file → the zoo's converted file (imported zoos)."""
        records = [(self.manifest.pretrained_source, self.manifest.pretrained)]
        records += [(r.source, r) for r in self.manifest.checkpoints]
        return {src.original_sha256: self.path / rec.file for src, rec in records if src is not None}

    def task_description(self, task: str) -> str:
        return next((t.description for t in self.manifest.tasks if t.name == task), "")

    def checkpoint_hashes(self) -> dict[str, str]:
        """file → sha256 for every file of the zoo (keys analytics caches)."""
        records = [self.manifest.pretrained, self.manifest.heads, *self.manifest.checkpoints]
        if self.manifest.prefix is not None:
            records.append(self.manifest.prefix)
        if self.manifest.images is not None:
            records += list(self.manifest.images.files.values())
        return {r.file: r.sha256 for r in records}

    def verify(self) -> list[str]:
        """Check that every file exists and matches its sha256; returns the verified files."""
        checked = []
        for file, expected in self.checkpoint_hashes().items():
            full = self.path / file
            if not full.is_file():
                raise CheckpointError(f"{full}: file listed in zoo.json is missing")
            actual = sha256_file(full)
            if actual != expected:
                raise CheckpointError(f"{full}: sha256 mismatch (expected {expected[:12]}…, got {actual[:12]}…)")
            load_state_dict(full)  # parses the safetensors header and checks every tensor is finite
            checked.append(file)
        return checked

    def table(self):
        """One row per checkpoint: task, variant, method, pretrained and fine-tuned accuracy."""
        import pandas as pd
        rows = []
        for r in self.manifest.checkpoints:
            rows.append({"task": r.task, "variant": r.variant, "fine-tuning": r.method.get("label", r.variant),
                         "pretrained val": r.pretrained_accuracy.val, "pretrained test": r.pretrained_accuracy.test,
                         "fine-tuned val": r.accuracy.val, "fine-tuned test": r.accuracy.test,
                         "gain (test)": r.accuracy.test - r.pretrained_accuracy.test,
                         "‖τ‖": r.task_vector_norm, "time (s)": r.wall_time_s})
        return pd.DataFrame(rows)


def open_zoo(path: str | os.PathLike, verify: bool = False) -> Zoo:
    """Open a zoo directory: validate zoo.json; with ``verify`` also hash and parse every file."""
    path = Path(path)
    manifest = read_manifest(path)
    zoo = Zoo(path=path, manifest=manifest)
    for file in zoo.checkpoint_hashes():
        if not (path / file).is_file():
            raise CheckpointError(f"{path / file}: file listed in zoo.json is missing")
    if verify:
        zoo.verify()
    return zoo


def provenance_rows(zoo: Zoo) -> list[dict]:
    """One row per imported file: what it is, its format, the original file and sha256, the zoo's file."""
    m = zoo.manifest
    rows = []
    entries = [("pretrained θ0", "—", m.pretrained_source, m.pretrained)]
    entries += [(r.task, r.variant, r.source, r) for r in m.checkpoints]
    for task, variant, src, rec in entries:
        if src is None:
            continue
        rows.append({"task": task, "variant": variant, "format": src.format, "original file": src.original,
                     "original sha256": src.original_sha256, "zoo file": rec.file, "zoo sha256": rec.sha256})
    return rows
