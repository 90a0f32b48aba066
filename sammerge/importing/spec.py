"""The import spec (YAML or JSON): which files to convert into a zoo, and how.

Paths are relative to the spec file's directory unless absolute. Keys::

    format: timm | task_vectors | hf_clip
    model: vit_small_patch16_224          # timm architecture (format timm; optional for the CLIP formats)
    model_kwargs: {img_size: 224}          # passed to timm.create_model
    pretrained: base.safetensors           # file (timm, task_vectors: zeroshot.pt) or folder (hf_clip)
    preprocess: {size: 224, crop: 224, mean: [...], std: [...], interpolation: bicubic}
    quick_gelu: true                       # CLIP state dicts only, when the file cannot tell
    tasks:
      cars:
        head: heads/cars.safetensors       # weight [C, D], bias [C]; task_vectors: head_Cars.pt; hf_clip: or zeroshot
        templates: ["a photo of a {}."]    # hf_clip zero-shot heads (class_names: default the folder names)
        head_normalize: true               # logits = normalize(f) @ Wᵀ + b (default: true for CLIP formats)
        data: data/cars                    # ImageFolder roots data/cars/{val,test}/<class>/<image>
        checkpoints: {plain: ft/cars.safetensors, sam: ft/cars_sam.pt}
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sammerge.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORMATS = ("timm", "task_vectors", "hf_clip")
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class Preprocess(BaseModel):
    """Resize the shorter side to ``size`` (``interpolation``), centre-crop ``crop``; x = (u/255 − mean) / std."""
    model_config = ConfigDict(extra="forbid")
    size: int | None = Field(None, ge=1)
    crop: int | None = Field(None, ge=1)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: Literal["bicubic", "bilinear", "nearest"] | None = None


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    head: str  # a file, or "zeroshot" (hf_clip: from the base model's text tower)
    head_normalize: bool | None = None
    class_names: list[str] | None = None  # zero-shot prompts (default: the class folders' names, "_" → " ")
    templates: list[str] | None = None  # zero-shot prompt templates with "{}" (default: "a photo of a {}.")
    data: str
    checkpoints: dict[str, str] = Field(min_length=1)
    description: str = ""

    @field_validator("checkpoints")
    @classmethod
    def _variant_names(cls, value: dict[str, str]) -> dict[str, str]:
        import re
        bad = [v for v in value if not re.fullmatch(r"[a-z][a-z0-9_]*", v)]
        if bad:
            raise ValueError(f"variant names must be lower-case identifiers (got {bad})")
        return value


class ImportSpec(BaseModel):
    """A validated import spec; ``root`` is the directory relative paths are resolved against."""
    model_config = ConfigDict(extra="forbid")
    format: Literal["timm", "task_vectors", "hf_clip"]
    model: str | None = None
    model_kwargs: dict = {}
    pretrained: str
    preprocess: Preprocess = Preprocess()
    quick_gelu: bool | None = None
    name: str | None = None
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    root: str = "."

    def path(self, value: str) -> Path:
        """``value`` resolved against the spec's directory (``~`` expanded)."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else Path(self.root) / p

    @property
    def variants(self) -> list[str]:
        names: list[str] = []
        for task in self.tasks.values():
            names += [v for v in task.checkpoints if v not in names]
        return names


def load_import_spec(path: str | os.PathLike) -> ImportSpec:
    """Read and validate a spec file (ConfigError listing every invalid field)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: import spec not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({exc})".replace("\n", " ")) from None
    return parse_import_spec(raw, root=path.parent, source=str(path))


def parse_import_spec(raw, root: str | os.PathLike = ".", source: str = "import spec") -> ImportSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    problems = []
    tasks = raw.get("tasks")
    bad = [t for t in tasks if not TASK_NAME.fullmatch(str(t))] if isinstance(tasks, dict) else []
    if bad:
        problems.append(f"'tasks': task names must be letters, digits, '_', '.', '-' (got {bad})")
    try:
        spec = ImportSpec.model_validate({**raw, "root": str(root)})
    except ValidationError as exc:
        problems += [f"'{'.'.join(str(p) for p in e['loc']) or '(root)'}': {e['msg']}" for e in exc.errors()]
    if problems:
        raise ConfigError(f"{source}: invalid field(s): " + "; ".join(problems))
    return spec
