"""`sammerge zoo import`: check a user's files, convert them once into a zoo the app opens like any other.

Every file is read (safely, :mod:`sammerge.io`), converted to timm keys (:mod:`.formats`) and checked against
the encoder timm builds: missing / unexpected tensors, shapes, NaN / Inf (naming file and tensor), head shape
vs. feature size and class folders, empty or mismatched class folders, unreadable images. All problems are
collected and raised together (:class:`~sammerge.errors.ImportCheckError`) inside :func:`sammerge.io.atomic_dir`,
so on any problem nothing is left at ``out``. Accuracies of θ0 and each θ_t (val and test) are then measured
on the stored images with the :class:`~sammerge.evaluation.evaluator.Evaluator`.
"""
from __future__ import annotations

import math
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import load_file

from sammerge import __version__
from sammerge.errors import ImportCheckError, SammergeError
from sammerge.importing import formats, images as imgs
from sammerge.importing.spec import CLIP_MEAN, CLIP_STD, ImportSpec
from sammerge.io import atomic_dir, atomic_write_text, content_sha256, save_state_dict, sha256_file
from sammerge.progress import Progress
from sammerge.models.model import Head, TimmEncoderConfig, create_encoder

StateDict = dict[str, torch.Tensor]


def _one_line(exc: Exception) -> str:
    return str(exc).replace("\n", " ") if isinstance(exc, SammergeError) else f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _convert(spec: ImportSpec, path: Path, classifier=None, expected: set[str] | None = None) -> formats.Converted:
    if spec.format == "timm":
        return formats.convert_timm(path, classifier, expected or set())
    if spec.format == "task_vectors":
        return formats.convert_task_vectors(path)
    return formats.convert_hf_clip(path)


def check_state(state: StateDict, reference: StateDict, source: str) -> list[str]:
    """Problems of a converted state dict against the encoder's own: missing, unexpected, shape, NaN/Inf."""
    problems = []
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    if missing:
        problems.append(f"{source}: missing tensor(s) {', '.join(repr(k) for k in missing[:5])}"
                        f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"{source}: unexpected tensor(s) {', '.join(repr(k) for k in unexpected[:5])}"
                        f"{f' and {len(unexpected) - 5} more' if len(unexpected) > 5 else ''} (not in the encoder)")
    for key, ref in reference.items():
        value = state.get(key)
        if value is None:
            continue
        if tuple(value.shape) != tuple(ref.shape):
            problems.append(f"{source}: tensor '{key}' has shape {list(value.shape)}, the encoder expects {list(ref.shape)}")
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            problems.append(f"{source}: tensor '{key}' contains {'NaN' if bool(torch.isnan(value).any()) else 'Inf'} values")
    return problems


def _encoder_config(spec: ImportSpec, pre: formats.Converted | None, problems: list[str]) -> TimmEncoderConfig | None:
    """The timm architecture: the spec's for timm; for CLIP formats read off the pretrained tensors."""
    if spec.format == "timm":
        if not spec.model:
            problems.append("spec: 'model' (a timm architecture) is required for format timm")
            return None
        name, kwargs = spec.model, dict(spec.model_kwargs)
    else:
        if pre is None:
            return None
        qg_file, qg = pre.facts.get("quick_gelu"), spec.quick_gelu
        if qg_file is not None and qg is not None and qg_file != qg:
            problems.append(f"spec: quick_gelu: {qg} but {spec.pretrained} uses {'QuickGELU' if qg_file else 'GELU'}")
        qg = qg_file if qg_file is not None else qg
        if qg is None:
            problems.append(f"{spec.pretrained}: cannot tell whether the model uses QuickGELU (a plain state dict); "
                            "set quick_gelu: true (OpenAI CLIP weights) or false in the spec")
            return None
        eps = (pre.facts.get("hf_config") or {}).get("layer_norm_eps", 1e-5)
        if abs(float(eps) - 1e-5) > 1e-12:
            problems.append(f"{spec.pretrained}: layer_norm_eps {eps} (timm's CLIP ViT uses 1e-5)")
        try:
            heads = spec.model_kwargs.get("num_heads") or (pre.facts.get("hf_config") or {}).get("num_attention_heads")
            name, kwargs = formats.clip_architecture(pre.state, qg, heads)
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(f"{spec.pretrained}: not a CLIP ViT state dict (missing {exc})")
            return None
        if spec.model:
            name = spec.model
        kwargs.update(spec.model_kwargs)
    try:
        probe = create_encoder(TimmEncoderConfig(model=name, kwargs=kwargs, embed_dim=1, image_size=1))
    except SammergeError as exc:
        problems.append(_one_line(exc))
        return None
    embed = int(getattr(probe, "num_classes", 0) or probe.num_features)
    size = int(getattr(probe, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])
    size = int(kwargs.get("img_size", size))
    return TimmEncoderConfig(model=name, kwargs=kwargs, embed_dim=embed, image_size=size,
                             in_chans=int(kwargs.get("in_chans", 3)))


def _preprocess(spec: ImportSpec, cfg: TimmEncoderConfig, encoder) -> dict:
    """The explicit transform: the spec's, else CLIP's (resize = crop = image size) or timm's data config."""
    p = spec.preprocess
    if spec.format == "timm":
        from timm.data import resolve_data_config
        dc = resolve_data_config({}, model=encoder)
        crop = cfg.image_size  # the model's own input size (timm's data config ignores an img_size kwarg)
        base = dict(size=int(math.floor(crop / dc["crop_pct"])), crop=crop, mean=tuple(dc["mean"]),
                    std=tuple(dc["std"]), interpolation=dc["interpolation"] if dc["interpolation"] in imgs._FILTERS else "bicubic")
    else:
        base = dict(size=cfg.image_size, crop=cfg.image_size, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic")
    given = {k: v for k, v in p.model_dump().items() if v is not None}
    out = {**base, **given}
    if "crop" not in given and "size" in given:
        out["crop"] = min(out["crop"], out["size"])
    return out


def _read_head(spec: ImportSpec, task: str, path: Path) -> Head:
    if spec.format == "task_vectors" and not formats.is_safetensors_file(path):
        weight, bias, normalize = formats.read_pickled_head(path)
    else:
        weight, bias = formats.head_tensors(formats.unwrap_state_dict(formats.read_file(path), path), path)
        normalize = None
    if spec.tasks[task].head_normalize is not None:
        normalize = spec.tasks[task].head_normalize
    elif normalize is None:
        normalize = spec.format != "timm"
    weight = weight.detach().to(torch.float32)
    bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().to(torch.float32)
    return Head(weight, bias, bool(normalize))


def _zeroshot(spec: ImportSpec, ts, folder: Path, val) -> Head:
    from sammerge.errors import ConfigError
    from sammerge.importing.zeroshot import DEFAULT_TEMPLATES, class_prompt_name, zeroshot_head
    if spec.format != "hf_clip":
        raise ConfigError(f"head: zeroshot needs format hf_clip (a CLIPModel folder with its text tower), not {spec.format}")
    if ts.class_names is None and val is None:
        raise ConfigError(f"{ts.data}: zero-shot head needs the class folders (or class_names)")
    names = ts.class_names or [class_prompt_name(c) for c in val.classes]
    head = zeroshot_head(folder, names, ts.templates or DEFAULT_TEMPLATES)
    return Head(head.weight, head.bias, True if ts.head_normalize is None else ts.head_normalize)


def _variant(name: str, original: Path):
    """VariantSpec of an imported variant, and ρ when the variant or file name says it (SAFT: ``_sam_rho0.05_``)."""
    from sammerge.models.presets import VariantSpec
    text = f"{name} {original.name}"
    rho = re.search(r"rho_?([0-9]+(?:\.[0-9]+)?)", text)
    sam = "sam" in name
    adaptive = sam and (name.startswith("asam") or "asam" in original.name)
    return VariantSpec(name=name, sam=sam, adaptive=adaptive, **({"rho": float(rho.group(1))} if rho and sam else {})), \
        (float(rho.group(1)) if rho and sam else None)


def import_zoo(spec: ImportSpec, out: str | Path, max_images_per_split: int | None = None, seed: int = 0,
               overwrite: bool = False, device: str = "cpu", spec_file: str | Path | None = None,
               progress: Progress | None = None):
    """Check and convert everything ``spec`` names into a zoo at ``out``; returns the opened zoo."""
    from sammerge.zoo import open_zoo

    out = Path(out)
    if out.exists() and not overwrite:
        raise ImportCheckError([f"{out}: already exists (use --overwrite to replace it)"])
    if max_images_per_split is not None and max_images_per_split < 1:
        raise ImportCheckError([f"--max-images-per-split must be ≥ 1, got {max_images_per_split}"])
    with atomic_dir(out, overwrite=overwrite) as tmp:
        run = _Import(spec, tmp, max_images_per_split, seed, device, progress)
        run.architecture()
        run.checkpoints()
        run.heads_and_images()
        if run.problems:
            raise ImportCheckError(run.problems)
        run.write_manifest(out.name, spec_file)
    return open_zoo(out)


class _Import:
    """One import into the temp directory ``tmp``: each phase appends to ``problems`` and goes on."""

    def __init__(self, spec: ImportSpec, tmp: Path, budget: int | None, seed: int, device: str,
                 progress: Progress | None) -> None:
        self.spec, self.tmp, self.budget, self.seed, self.device, self.progress = spec, tmp, budget, seed, device, progress
        self.t_start = time.perf_counter()
        self.problems: list[str] = []
        self.steps = 2 + sum(len(t.checkpoints) for t in spec.tasks.values()) + 2 * len(spec.tasks)
        self.done = 0
        self.pre_path = spec.path(spec.pretrained)
        self.pre: formats.Converted | None = None
        self.cfg = self.encoder = self.reference = self.theta0 = self.pp = None
        self.records: dict[tuple[str, str], tuple[Path, dict]] = {}  # (task, variant) → (original, facts)
        self.heads: dict[str, Head] = {}
        self.classes: dict[str, list[str]] = {}
        self.data_files: dict[str, Path] = {}
        self.counts: dict[str, dict[str, int]] = {}

    def tick(self, stage: str) -> None:
        self.done += 1
        if self.progress:
            self.progress(self.done, self.steps, stage)

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except SammergeError as exc:
            self.problems.append(_one_line(exc))
            return None

    # -- θ0 and the architecture -----------------------------------------------------------------------------
    def architecture(self) -> None:
        spec = self.spec
        if spec.format != "timm":
            self.pre = self._try(_convert, spec, self.pre_path)
        self.cfg = _encoder_config(spec, self.pre, self.problems)
        if self.cfg is None:
            self.tick("pretrained")
            return
        self.encoder = create_encoder(self.cfg).eval()
        self.reference = dict(self.encoder.state_dict())
        self.classifier = getattr(self.encoder, "pretrained_cfg", {}).get("classifier")
        if spec.format == "timm":
            self.pre = self._try(_convert, spec, self.pre_path, self.classifier, set(self.reference))
        if self.pre is not None:
            found = check_state(self.pre.state, self.reference, str(self.pre_path))
            self.problems += found
            if not found:
                self.theta0 = {k: v.to(self.reference[k].dtype) for k, v in self.pre.state.items()}
                save_state_dict(self.theta0, self.tmp / "pretrained.safetensors")
        self.pp = _preprocess(spec, self.cfg, self.encoder)
        self.tick("pretrained")

    # -- fine-tuned checkpoints: converted, checked, written one at a time -------------------------------------
    def checkpoints(self) -> None:
        spec, theta0, pre = self.spec, self.theta0, self.pre
        (self.tmp / "finetuned").mkdir()
        variant_sets = {task: tuple(ts.checkpoints) for task, ts in spec.tasks.items()}
        if len(set(map(frozenset, variant_sets.values()))) > 1:
            self.problems.append("spec: every task needs the same checkpoint variants (got "
                                 + "; ".join(f"{t}: {', '.join(v)}" for t, v in variant_sets.items()) + ")")
        for task, ts in spec.tasks.items():
            for variant, file in ts.checkpoints.items():
                path = spec.path(file)
                conv = self._try(_convert, spec, path, getattr(self, "classifier", None), set(self.reference or ()))
                if conv is not None:
                    if theta0 is not None and spec.format == "hf_clip" and "head.weight" in theta0 \
                            and "head.weight" not in conv.state:  # FusionBench keeps CLIP's projection frozen
                        conv.state["head.weight"], conv.state["head.bias"] = theta0["head.weight"], theta0["head.bias"]
                        conv.facts["projection"] = "visual_projection of the base model"
                    if pre is not None and "quick_gelu" in conv.facts and "quick_gelu" in pre.facts \
                            and conv.facts["quick_gelu"] != pre.facts["quick_gelu"]:
                        self.problems.append(f"{path}: uses {'QuickGELU' if conv.facts['quick_gelu'] else 'GELU'}, "
                                             f"the pretrained model does not")
                    if self.reference is not None:
                        found = check_state(conv.state, self.reference, str(path))
                        self.problems += found
                        if not found and not self.problems:
                            state = {k: v.to(self.reference[k].dtype) for k, v in conv.state.items()}
                            save_state_dict(state, self.tmp / "finetuned" / f"{task}__{variant}.safetensors")
                            self.records[(task, variant)] = (path, conv.facts)
                    del conv
                self.tick(f"{task}/{variant}")

    # -- heads (checked against features and class folders) and the stored images ------------------------------
    def heads_and_images(self) -> None:
        spec = self.spec
        (self.tmp / "data").mkdir()
        for task, ts in spec.tasks.items():
            root = spec.path(ts.data)
            splits = {s: imgs.scan_split(root / s, self.problems) for s in imgs.SPLITS}
            head_path = self.pre_path if ts.head == "zeroshot" else spec.path(ts.head)
            head = self._try(_zeroshot, spec, ts, self.pre_path, splits["val"]) if ts.head == "zeroshot" \
                else self._try(_read_head, spec, task, head_path)
            if head is not None:
                problem = _head_problem(head, head_path, self.cfg)
                if problem:
                    self.problems.append(problem)
                else:
                    self.heads[task] = head
            if all(splits.values()):
                if splits["val"].classes != splits["test"].classes:
                    self.problems.append(f"{root}: val and test have different class folders "
                                         f"({sorted(set(splits['val'].classes) ^ set(splits['test'].classes))[:5]})")
                self.classes[task] = splits["val"].classes
                if task in self.heads and self.heads[task].num_classes != len(self.classes[task]):
                    self.problems.append(f"{head_path}: head has {self.heads[task].num_classes} rows (classes) but "
                                         f"{root / 'val'} has {len(self.classes[task])} class folders")
            self.tick(f"{task}: head")
            if self.pp is not None and all(splits.values()):
                self._store_images(task, splits)
            self.tick(f"{task}: images")

    def _store_images(self, task: str, splits) -> None:
        pp, tensors = self.pp, {}
        for s, fs in splits.items():
            chosen = imgs.choose(fs.files, self.budget, self.seed)
            x, y = imgs.load_split(chosen, pp["size"], pp["crop"], pp["interpolation"], self.problems)
            tensors[f"{s}/images"], tensors[f"{s}/labels"] = x, y
            self.counts.setdefault(task, {})[s] = len(y)
        self.data_files[task] = self.tmp / "data" / f"{task}.safetensors"
        save_state_dict(tensors, self.data_files[task])

    # -- accuracies on the stored images, then zoo.json --------------------------------------------------------
    def scores(self, params: StateDict, task: str):
        """val and test accuracy / loss of ``params`` with the task's head, by the Evaluator."""
        from sammerge.evaluation.evaluator import Evaluator
        from sammerge.zoo import SplitScores, normalize_uint8
        data, out = load_file(str(self.data_files[task])), {}
        for s in imgs.SPLITS:
            x = normalize_uint8(data[f"{s}/images"], self.pp["mean"], self.pp["std"])
            ev = Evaluator(self.encoder, {task: self.heads[task]}, {task: (x, data[f"{s}/labels"])}, device=self.device)
            r = ev.evaluate(params)[task]
            out[s], out[f"{s}_loss"] = r.accuracy, r.loss
        return SplitScores(**out)

    def source(self, path: Path):
        from sammerge.zoo import SourceRecord
        return SourceRecord(format=self.spec.format, original=str(path.resolve()), original_sha256=content_sha256(path))

    def write_manifest(self, name: str, spec_file: str | Path | None) -> None:
        import timm

        from sammerge.zoo import (IMPORTED_FORMAT_VERSION, MANIFEST_NAME, CheckpointRecord, FileRecord, ImageData,
                                  TaskInfo, ZooManifest)
        spec, tmp, pp, theta0 = self.spec, self.tmp, self.pp, self.theta0
        pre_scores = {task: self.scores(theta0, task) for task in spec.tasks}
        records, variants = [], {}
        for (task, variant), (path, _facts) in self.records.items():
            vspec, rho = _variant(variant, path)
            variants.setdefault(variant, vspec)
            file = tmp / "finetuned" / f"{task}__{variant}.safetensors"
            state = load_file(str(file))
            norm = math.sqrt(sum(float((state[k].double() - theta0[k].double()).pow(2).sum())
                                 for k in state if state[k].is_floating_point()))
            method = {"label": variant, "sam": vspec.sam, "adaptive": vspec.adaptive, "imported": True,
                      **({"rho": rho} if rho is not None else {})}
            records.append(CheckpointRecord(
                file=f"finetuned/{task}__{variant}.safetensors", sha256=sha256_file(file), task=task, variant=variant,
                method=method, accuracy=self.scores(state, task), pretrained_accuracy=pre_scores[task],
                task_vector_norm=norm, wall_time_s=0.0, source=self.source(path)))
        head_state = {}
        for task, head in self.heads.items():
            head_state[f"{task}.weight"], head_state[f"{task}.bias"] = head.weight, head.bias
        save_state_dict(head_state, tmp / "heads.safetensors")
        zs = "a photo of a {}."
        manifest = ZooManifest(
            format_version=IMPORTED_FORMAT_VERSION, name=spec.name or name,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seed=self.seed, encoder=self.cfg,
            data={"kind": "imported"},
            tasks=[TaskInfo(name=t, description=ts.description, class_names=self.classes[t],
                            head_normalize=self.heads[t].normalize) for t, ts in spec.tasks.items()],
            variants=list(variants.values()),
            pretrained=FileRecord(file="pretrained.safetensors", sha256=sha256_file(tmp / "pretrained.safetensors")),
            heads=FileRecord(file="heads.safetensors", sha256=sha256_file(tmp / "heads.safetensors")),
            pretrained_source=self.source(self.pre_path),
            images=ImageData(files={t: FileRecord(file=f"data/{t}.safetensors", sha256=sha256_file(f))
                                    for t, f in self.data_files.items()},
                             splits=list(imgs.SPLITS), counts=self.counts, size=pp["size"], crop=pp["crop"],
                             interpolation=pp["interpolation"], mean=tuple(pp["mean"]), std=tuple(pp["std"]),
                             max_images_per_split=self.budget, subset_seed=self.seed,
                             sources={t: str(spec.path(ts.data).resolve()) for t, ts in spec.tasks.items()}),
            source={"format": spec.format, "model": self.cfg.model, "spec": str(spec_file) if spec_file else None,
                    "spec_sha256": sha256_file(spec_file) if spec_file else None,
                    "facts": {"quick_gelu": self.pre.facts.get("quick_gelu")},
                    "heads": {t: (f"zero-shot from {self.pre_path.resolve()} with templates {ts.templates or [zs]}"
                                  if ts.head == "zeroshot" else str(spec.path(ts.head).resolve()))
                              for t, ts in spec.tasks.items()}},
            checkpoints=records,
            versions={"sammerge": __version__, "torch": torch.__version__, "timm": timm.__version__,
                      "python": platform.python_version()},
            device=str(self.device), threads=torch.get_num_threads(),
            build_wall_time_s=time.perf_counter() - self.t_start)
        atomic_write_text(tmp / MANIFEST_NAME, manifest.model_dump_json(indent=2))
        self.tick("manifest")


def _head_problem(head: Head, path: Path, cfg: TimmEncoderConfig | None) -> str | None:
    """What is wrong with a head's tensors (shape, finiteness, feature size), or None."""
    if head.weight.ndim != 2 or head.bias.shape != (head.weight.shape[0],):
        return f"{path}: head 'weight' {list(head.weight.shape)} / 'bias' {list(head.bias.shape)} are not [C, D] / [C]"
    if not bool(torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all()):
        return f"{path}: head tensor 'weight' or 'bias' contains NaN/Inf values"
    if cfg is not None and head.weight.shape[1] != cfg.embed_dim:
        return f"{path}: head 'weight' reads {head.weight.shape[1]} features, the encoder gives {cfg.embed_dim}"
    return None
