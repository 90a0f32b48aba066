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
from sammerge.training.model import Head, TimmEncoderConfig, create_encoder

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
    from sammerge.training.presets import VariantSpec
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
    from sammerge.evaluation.evaluator import Evaluator
    from sammerge.training.presets import VariantSpec  # noqa: F401 - manifest type
    from sammerge.zoo import (IMPORTED_FORMAT_VERSION, MANIFEST_NAME, CheckpointRecord, FileRecord, ImageData,
                              SourceRecord, SplitScores, TaskInfo, ZooManifest, normalize_uint8, open_zoo)

    t_start = time.perf_counter()
    out = Path(out)
    problems: list[str] = []
    if out.exists() and not overwrite:
        raise ImportCheckError([f"{out}: already exists (use --overwrite to replace it)"])
    if max_images_per_split is not None and max_images_per_split < 1:
        raise ImportCheckError([f"--max-images-per-split must be ≥ 1, got {max_images_per_split}"])
    steps = 2 + sum(len(t.checkpoints) for t in spec.tasks.values()) + 2 * len(spec.tasks)
    done = 0

    def tick(stage: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, steps, stage)

    def source(fmt_path: Path) -> SourceRecord:
        return SourceRecord(format=spec.format, original=str(fmt_path.resolve()),
                            original_sha256=content_sha256(fmt_path))

    with atomic_dir(out, overwrite=overwrite) as tmp:
        # -- θ0 and the architecture ------------------------------------------------------------------
        pre_path = spec.path(spec.pretrained)
        pre = None
        try:
            pre = _convert(spec, pre_path) if spec.format != "timm" else None
        except SammergeError as exc:
            problems.append(_one_line(exc))
        cfg = _encoder_config(spec, pre, problems)
        encoder = create_encoder(cfg).eval() if cfg else None
        reference = {k: v for k, v in encoder.state_dict().items()} if encoder is not None else None
        classifier = getattr(encoder, "pretrained_cfg", {}).get("classifier") if encoder is not None else None
        if spec.format == "timm" and reference is not None:
            try:
                pre = _convert(spec, pre_path, classifier, set(reference))
            except SammergeError as exc:
                problems.append(_one_line(exc))
        theta0 = None
        if pre is not None and reference is not None:
            found = check_state(pre.state, reference, str(pre_path))
            problems += found
            if not found:
                theta0 = {k: v.to(reference[k].dtype) for k, v in pre.state.items()}
                save_state_dict(theta0, tmp / "pretrained.safetensors")
        tick("pretrained")

        # -- fine-tuned checkpoints -----------------------------------------------------------------------
        records: dict[tuple[str, str], tuple[Path, dict]] = {}  # converted file → (original, facts)
        (tmp / "finetuned").mkdir()
        variant_sets = {task: tuple(ts.checkpoints) for task, ts in spec.tasks.items()}
        if len(set(map(frozenset, variant_sets.values()))) > 1:
            problems.append("spec: every task needs the same checkpoint variants (got "
                            + "; ".join(f"{t}: {', '.join(v)}" for t, v in variant_sets.items()) + ")")
        for task, ts in spec.tasks.items():
            for variant, file in ts.checkpoints.items():
                path = spec.path(file)
                try:
                    conv = _convert(spec, path, classifier, set(reference or ()))
                except SammergeError as exc:
                    problems.append(_one_line(exc))
                    tick(f"{task}/{variant}")
                    continue
                if theta0 is not None and spec.format == "hf_clip" and "head.weight" in theta0 and "head.weight" not in conv.state:
                    conv.state["head.weight"], conv.state["head.bias"] = theta0["head.weight"], theta0["head.bias"]
                    conv.facts["projection"] = "visual_projection of the base model (frozen in fine-tuning)"
                if pre is not None and "quick_gelu" in conv.facts and "quick_gelu" in pre.facts \
                        and conv.facts["quick_gelu"] != pre.facts["quick_gelu"]:
                    problems.append(f"{path}: uses {'QuickGELU' if conv.facts['quick_gelu'] else 'GELU'}, "
                                    f"the pretrained model does not")
                if reference is not None:
                    found = check_state(conv.state, reference, str(path))
                    problems += found
                    if not found and not problems:
                        state = {k: v.to(reference[k].dtype) for k, v in conv.state.items()}
                        save_state_dict(state, tmp / "finetuned" / f"{task}__{variant}.safetensors")
                        records[(task, variant)] = (path, conv.facts)
                        del state
                del conv
                tick(f"{task}/{variant}")

        # -- heads and images -------------------------------------------------------------------------
        heads: dict[str, Head] = {}
        classes: dict[str, list[str]] = {}
        pp = _preprocess(spec, cfg, encoder) if cfg else None
        (tmp / "data").mkdir()
        data_files: dict[str, Path] = {}
        counts: dict[str, dict[str, int]] = {}
        for task, ts in spec.tasks.items():
            root = spec.path(ts.data)
            splits = {s: imgs.scan_split(root / s, problems) for s in imgs.SPLITS}
            head_path = spec.path(ts.head)
            try:
                if ts.head == "zeroshot":
                    head_path = pre_path
                    head = _zeroshot(spec, ts, pre_path, splits["val"])
                else:
                    head = _read_head(spec, task, head_path)
                if head.weight.ndim != 2 or head.bias.shape != (head.weight.shape[0],):
                    problems.append(f"{head_path}: head 'weight' {list(head.weight.shape)} / 'bias' "
                                    f"{list(head.bias.shape)} are not [C, D] / [C]")
                elif not bool(torch.isfinite(head.weight).all() and torch.isfinite(head.bias).all()):
                    problems.append(f"{head_path}: head tensor 'weight' or 'bias' contains NaN/Inf values")
                elif cfg is not None and head.weight.shape[1] != cfg.embed_dim:
                    problems.append(f"{head_path}: head 'weight' reads {head.weight.shape[1]} features, "
                                    f"the encoder gives {cfg.embed_dim}")
                else:
                    heads[task] = head
            except SammergeError as exc:
                problems.append(_one_line(exc))
            if all(splits.values()):
                if splits["val"].classes != splits["test"].classes:
                    problems.append(f"{root}: val and test have different class folders "
                                    f"({sorted(set(splits['val'].classes) ^ set(splits['test'].classes))[:5]})")
                classes[task] = splits["val"].classes
                if task in heads and heads[task].num_classes != len(classes[task]):
                    problems.append(f"{head_path}: head has {heads[task].num_classes} rows (classes) but "
                                    f"{root / 'val'} has {len(classes[task])} class folders")
            tick(f"{task}: head")
            if pp is not None and all(splits.values()):
                tensors = {}
                for s, fs in splits.items():
                    chosen = imgs.choose(fs.files, max_images_per_split, seed)
                    x, y = imgs.load_split(chosen, pp["size"], pp["crop"], pp["interpolation"], problems)
                    tensors[f"{s}/images"], tensors[f"{s}/labels"] = x, y
                    counts.setdefault(task, {})[s] = len(y)
                data_files[task] = tmp / "data" / f"{task}.safetensors"
                save_state_dict(tensors, data_files[task])
            tick(f"{task}: images")
        if problems:
            raise ImportCheckError(problems)

        # -- accuracies on the stored images ----------------------------------------------------------------
        def scores(params: StateDict, task: str) -> SplitScores:
            out_scores = {}
            state = {}
            state = load_file(str(data_files[task]))
            for s in imgs.SPLITS:
                x = normalize_uint8(state[f"{s}/images"], pp["mean"], pp["std"])
                ev = Evaluator(encoder, {task: heads[task]}, {task: (x, state[f"{s}/labels"])}, device=device)
                r = ev.evaluate(params)[task]
                out_scores[s], out_scores[f"{s}_loss"] = r.accuracy, r.loss
            return SplitScores(**out_scores)

        pre_scores = {task: scores(theta0, task) for task in spec.tasks}
        checkpoint_records = []
        variant_specs = {}
        for (task, variant), (path, facts) in records.items():
            vspec, rho = _variant(variant, path)
            variant_specs.setdefault(variant, vspec)
            file = tmp / "finetuned" / f"{task}__{variant}.safetensors"
            state = load_file(str(file))
            norm = math.sqrt(sum(float((state[k].double() - theta0[k].double()).pow(2).sum())
                                 for k in state if state[k].is_floating_point()))
            method = {"label": variant, "sam": vspec.sam, "adaptive": vspec.adaptive, "imported": True}
            if rho is not None:
                method["rho"] = rho
            checkpoint_records.append(CheckpointRecord(
                file=f"finetuned/{task}__{variant}.safetensors", sha256=sha256_file(file), task=task, variant=variant,
                method=method, accuracy=scores(state, task), pretrained_accuracy=pre_scores[task],
                task_vector_norm=norm, wall_time_s=0.0, source=source(path)))
        head_state = {}
        for task, head in heads.items():
            head_state[f"{task}.weight"], head_state[f"{task}.bias"] = head.weight, head.bias
        save_state_dict(head_state, tmp / "heads.safetensors")
        import timm
        manifest = ZooManifest(
            format_version=IMPORTED_FORMAT_VERSION, name=spec.name or out.name,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seed=seed, encoder=cfg,
            data={"kind": "imported"},
            tasks=[TaskInfo(name=t, description=ts.description, class_names=classes[t],
                            head_normalize=heads[t].normalize) for t, ts in spec.tasks.items()],
            variants=list(variant_specs.values()),
            pretrained=FileRecord(file="pretrained.safetensors", sha256=sha256_file(tmp / "pretrained.safetensors")),
            heads=FileRecord(file="heads.safetensors", sha256=sha256_file(tmp / "heads.safetensors")),
            pretrained_source=source(pre_path),
            images=ImageData(files={t: FileRecord(file=f"data/{t}.safetensors", sha256=sha256_file(f))
                                    for t, f in data_files.items()},
                             splits=list(imgs.SPLITS), counts=counts, size=pp["size"], crop=pp["crop"],
                             interpolation=pp["interpolation"], mean=tuple(pp["mean"]), std=tuple(pp["std"]),
                             max_images_per_split=max_images_per_split, subset_seed=seed,
                             sources={t: str(spec.path(ts.data).resolve()) for t, ts in spec.tasks.items()}),
            source={"format": spec.format, "model": cfg.model, "spec": str(spec_file) if spec_file else None,
                    "spec_sha256": sha256_file(spec_file) if spec_file else None,
                    "facts": {"quick_gelu": (pre.facts.get("quick_gelu") if pre else None)},
                    "heads": {t: (f"zero-shot from {pre_path.resolve()} with templates {ts.templates or ['a photo of a {}.']}"
                                  if ts.head == "zeroshot" else str(spec.path(ts.head).resolve()))
                              for t, ts in spec.tasks.items()}},
            checkpoints=checkpoint_records,
            versions={"sammerge": __version__, "torch": torch.__version__, "timm": timm.__version__,
                      "python": platform.python_version()},
            device=str(device), threads=torch.get_num_threads(), build_wall_time_s=time.perf_counter() - t_start)
        atomic_write_text(tmp / MANIFEST_NAME, manifest.model_dump_json(indent=2))
        tick("manifest")
    return open_zoo(out)
