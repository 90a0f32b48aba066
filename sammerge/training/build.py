"""Zoo builds: pretrain → linear-probe heads → fine-tune every task × variant, written atomically.

``build_zoo`` runs a recipe into a directory; ``ensure_zoo`` opens the cached zoo of a preset and
builds it first when missing (one builder at a time per directory).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from sammerge import __version__
from sammerge.errors import CheckpointError, ZooError
from sammerge.io import atomic_dir, atomic_write_text, save_state_dict, sha256_file
from sammerge.merging.task_vector import TaskVector
from sammerge.progress import Progress
from sammerge.training import train as _train
from sammerge.training.linearize import linearize_for_finetuning
from sammerge.training.model import Head, create_encoder, encoder_params, heads_to_state_dict, pick_device
from sammerge.training.presets import ZooRecipe
from sammerge.zoo import (MANIFEST_NAME, CheckpointRecord, FileRecord, SplitScores, TaskInfo, Zoo, ZooManifest,
                          data_sha256, open_zoo)


def _versions() -> dict[str, str]:
    import numpy
    import safetensors
    import timm
    return {"sammerge": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def _subset_split(split, limit: int | None, seed: int):
    """The first ``limit`` samples of a seeded permutation of a Split (all of it when limit is None)."""
    if limit is None or len(split.labels) <= limit:
        return split
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(split.labels), generator=g)[:limit].sort().values
    return type(split)(split.images[idx], split.labels[idx], split.fonts[idx],
                       None if split.clean is None else split.clean[idx], split.sigma)


def build_zoo(recipe: ZooRecipe, out_dir: str | os.PathLike, device: str = "auto", overwrite: bool = False,
              progress: Progress | None = None, benchmark=None) -> "Zoo":
    """Build a zoo from a recipe into ``out_dir`` (atomically: a temp dir moved into place at the end)."""
    from sammerge.data import load_benchmark

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ZooError(f"{out_dir}: already exists (use --overwrite to replace it)")
    bench = benchmark if benchmark is not None else load_benchmark()
    unknown = [t for t in recipe.tasks if t not in bench.tasks]
    if unknown:
        raise ZooError(f"unknown task '{unknown[0]}' (known: {', '.join(bench.tasks)})")
    dev = pick_device(device)
    torch.manual_seed(recipe.seed)
    report = progress or (lambda done, total, stage="": None)

    total_steps = (recipe.pretrain.steps
                   + sum((v.steps or recipe.finetune.steps) * (2 if v.sam else 1) for v in recipe.variants)
                   * len(recipe.tasks))
    done = 0

    def tick(stage: str):
        def on_step(_step: int) -> None:
            nonlocal done
            done += 1
            report(done, total_steps, stage)
        return on_step

    stage_times: dict[str, float] = {}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        # 1. pretraining on the disjoint classes
        t0 = time.perf_counter()
        encoder = create_encoder(recipe.encoder).to(dev)
        pre_data = _subset_split(bench.pretrain.splits["train"], recipe.pretrain.max_train, recipe.seed)
        gen = torch.Generator().manual_seed(recipe.seed)
        pretrain_acc = _train.pretrain(encoder, pre_data, bench.pretrain.num_classes, recipe.pretrain, gen,
                                       val=bench.pretrain.splits["val"],
                        on_step=tick("pretraining encoder"))
        theta0 = encoder_params(encoder)
        stage_times["pretrain"] = time.perf_counter() - t0

        # 2. linear probes on frozen pretrained features
        t0 = time.perf_counter()
        report(done, total_steps, "fitting linear-probe heads")
        heads: dict[str, Head] = {}
        pretrained_scores: dict[str, SplitScores] = {}
        data = {}
        for i, task in enumerate(recipe.tasks):
            task_data = bench.tasks[task]
            train_split = _subset_split(task_data.splits["train"], recipe.max_train_per_task, recipe.seed + i)
            data[task] = train_split
            tr_x, tr_y = train_split.images, train_split.labels
            feats = _train.features(encoder, tr_x).to(dev)
            heads[task] = _train.fit_probe(feats, tr_y.to(dev), task_data.num_classes, recipe.probe,
                                           torch.Generator().manual_seed(recipe.seed + 1000 + i))
            heads[task] = Head(heads[task].weight.cpu(), heads[task].bias.cpu())
            pretrained_scores[task] = _scores(encoder, heads[task], task_data, tr_x, tr_y, recipe)
        stage_times["probe"] = time.perf_counter() - t0

        save_state_dict(theta0, tmp / "pretrained.safetensors", {"role": "pretrained", "preset": recipe.preset})
        save_state_dict(heads_to_state_dict(heads), tmp / "heads.safetensors", {"role": "heads"})

        # 3. fine-tuning: for each task, each variant from θ0 with the same batches
        encoder = linearize_for_finetuning(encoder, theta0, recipe.finetune.linearized)  # f_lin if linearized
        records: list[CheckpointRecord] = []
        (tmp / "finetuned").mkdir()
        for i, task in enumerate(recipe.tasks):
            train_split = data[task]
            tr_x, tr_y = train_split.images, train_split.labels
            for variant in recipe.variants:
                t0 = time.perf_counter()
                encoder.load_state_dict(theta0)
                torch.manual_seed(recipe.seed + 17 * i)
                gen = torch.Generator().manual_seed(recipe.seed + 7919 * (i + 1))  # same for every variant
                losses = _train.finetune(encoder, heads[task], train_split, recipe.finetune, variant, gen,
                                         on_step=tick(f"fine-tuning {task} ({variant.describe()})"))
                params = encoder_params(encoder)
                rel = f"finetuned/{task}__{variant.name}.safetensors"
                save_state_dict(params, tmp / rel, {"task": task, "variant": variant.name})
                tv_norm = TaskVector(pretrained=theta0, finetuned=params).norm()
                scores = _scores(encoder, heads[task], bench.tasks[task], tr_x, tr_y, recipe)
                method = {"optimizer": recipe.finetune.optimizer, "lr": recipe.finetune.lr,
                          "weight_decay": recipe.finetune.weight_decay, "steps": variant.steps or recipe.finetune.steps,
                          "batch_size": recipe.finetune.batch_size, "schedule": recipe.finetune.schedule,
                          "warmup_steps": recipe.finetune.warmup_steps, "grad_clip": recipe.finetune.grad_clip,
                          "sam": variant.sam, "rho": variant.rho if variant.sam else None,
                          "adaptive": variant.adaptive if variant.sam else None, "label": variant.describe()}
                if recipe.finetune.optimizer == "sgd":
                    method["momentum"] = recipe.finetune.momentum
                records.append(CheckpointRecord(
                    file=rel, sha256=sha256_file(tmp / rel), task=task, variant=variant.name, method=method,
                    accuracy=scores, pretrained_accuracy=pretrained_scores[task], task_vector_norm=tv_norm,
                    final_train_loss=losses[-1] if losses else None, wall_time_s=time.perf_counter() - t0))
                stage_times[f"finetune/{task}/{variant.name}"] = time.perf_counter() - t0

        manifest = ZooManifest(
            name=out_dir.name, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            recipe=recipe, recipe_fingerprint=recipe.fingerprint(data_sha256(bench)), seed=recipe.seed,
            encoder=recipe.encoder, data={"sha256": data_sha256(bench), "path": str(bench.path)},
            tasks=[TaskInfo(name=t, description=bench.tasks[t].description,
                            class_names=list(bench.tasks[t].class_names)) for t in recipe.tasks],
            variants=recipe.variants,
            pretrained=FileRecord(file="pretrained.safetensors", sha256=sha256_file(tmp / "pretrained.safetensors")),
            heads=FileRecord(file="heads.safetensors", sha256=sha256_file(tmp / "heads.safetensors")),
            pretrain_accuracy=pretrain_acc, checkpoints=records, versions=_versions(), device=str(dev),
            threads=torch.get_num_threads(), build_wall_time_s=time.perf_counter() - t_start,
            stage_times_s={k: round(v, 3) for k, v in stage_times.items()},
        )
        atomic_write_text(tmp / MANIFEST_NAME, manifest.model_dump_json(indent=2))
    return open_zoo(out_dir)


def _scores(encoder, head: Head, task_data, tr_x, tr_y, recipe: ZooRecipe) -> SplitScores:
    n = recipe.evaluation.max_train_eval
    train_acc, _ = _train.accuracy_and_loss(encoder, head, tr_x[:n], tr_y[:n])
    val_acc, val_loss = _train.accuracy_and_loss(encoder, head, task_data.splits["val"].images,
                                                 task_data.splits["val"].labels)
    test_acc, test_loss = _train.accuracy_and_loss(encoder, head, task_data.splits["test"].images,
                                                   task_data.splits["test"].labels)
    return SplitScores(train=train_acc, val=val_acc, test=test_acc, val_loss=val_loss, test_loss=test_loss)


def default_zoo_dir() -> Path:
    """Where the app keeps the demo zoo: $SAMMERGE_HOME or ~/.cache/sammerge."""
    root = Path(os.environ.get("SAMMERGE_HOME", Path.home() / ".cache" / "sammerge"))
    return root / "zoos"


def ensure_zoo(preset: str = "demo", root: str | os.PathLike | None = None, progress: Progress | None = None,
               device: str = "auto") -> Zoo:
    """Open the cached zoo of a preset; if missing (or from another recipe) install the shipped one, else build it."""
    from sammerge.data import load_benchmark
    from sammerge.training.presets import get_preset

    import fcntl

    recipe = get_preset(preset)
    bench = load_benchmark()
    fingerprint = recipe.fingerprint(data_sha256(bench))
    target = Path(root) if root else default_zoo_dir()
    zoo_dir = target / f"{preset}-{fingerprint[:12]}"
    target.mkdir(parents=True, exist_ok=True)
    # one builder at a time (several app sessions may ask for the same zoo at once)
    with open(target / f".{zoo_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for stale in target.glob(f".{zoo_dir.name}.*.tmp"):  # left by a killed build (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            if zoo_dir.exists():
                try:
                    zoo = open_zoo(zoo_dir)
                    if zoo.manifest.recipe_fingerprint == fingerprint:
                        return zoo
                except (ZooError, CheckpointError):
                    pass  # corrupt cache: rebuild it
            from sammerge.shipped import install_shipped_zoo
            shipped = install_shipped_zoo(preset, fingerprint, zoo_dir)
            if shipped is not None:
                return shipped
            return build_zoo(recipe, zoo_dir, device=device, overwrite=True, progress=progress, benchmark=bench)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
