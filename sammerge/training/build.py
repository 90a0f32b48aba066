"""Zoo builds as a graph of jobs: pretrain once → one head fit per task → one fine-tune per task × variant →
one evaluation per checkpoint (θ0 on each task, each θ_t on its task); then the manifest is assembled.

Every job seeds itself from the recipe (never from global state or execution order), writes its files
atomically and records its inputs' hash, outputs' sha256 and metrics (:mod:`sammerge.jobs`). The build works
in ``.{name}.build/`` beside the zoo and moves it into place when every job is done: a killed build leaves
the previous zoo untouched, and the next build with the same target resumes there, skipping finished jobs.
Rebuilding an existing zoo with ``overwrite`` (e.g. a recipe with one more task or variant) starts from its
files and records, so only new work runs. Same recipe and seed → the same checkpoint bytes as a one-shot
build, on the local backend or on Ray.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import shutil
import threading
from pathlib import Path

import torch

from sammerge import __version__
from sammerge.errors import CheckpointError, ZooError
from sammerge.io import atomic_write_text, load_state_dict, save_state_dict, sha256_file
from sammerge.jobs import Job, JobRecord, Resources, check_backend, clear_cancel, run_graph
from sammerge.jobs.record import jobs_dir
from sammerge.merging.task_vector import TaskVector
from sammerge.progress import Progress
from sammerge.training import train as _train
from sammerge.models.linearize import LinearizedEncoder, linearize_for_finetuning
from sammerge.models.model import (EncoderConfig, Head, create_encoder, encoder_params, heads_to_state_dict,
                                     pick_device)
from sammerge.models.presets import FinetuneRecipe, PretrainRecipe, ProbeRecipe, VariantSpec, ZooRecipe
from sammerge.zoo import (MANIFEST_NAME, CheckpointRecord, FileRecord, SplitScores, TaskInfo, Zoo, ZooManifest,
                          data_sha256, open_zoo)

PRETRAINED = "pretrained.safetensors"
HEADS = "heads.safetensors"
_BENCHMARKS: dict[str, object] = {}  # data sha256 → Benchmark handed to build_zoo in this process


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


# -- the jobs (top-level functions: a Ray worker imports them) ---------------------------------------------
def _bench(sha: str):
    bench = _BENCHMARKS.get(sha)
    if bench is None:
        from sammerge.data import load_benchmark
        bench = load_benchmark()
        if data_sha256(bench) != sha:
            raise ZooError(f"this machine's benchmark data is {data_sha256(bench)[:12]}…, the build needs {sha[:12]}…")
        _BENCHMARKS[sha] = bench
    return bench


def _encoder(inp: dict, ctx=None, checkpoint: str | None = None):
    encoder = create_encoder(EncoderConfig.model_validate(inp["encoder"])).to(pick_device(inp["device"]))
    if checkpoint:
        encoder.load_state_dict(load_state_dict(ctx.root / checkpoint))
    return encoder.eval()


def _train_split(inp: dict):
    split = _bench(inp["data"]).tasks[inp["task"]].splits["train"]
    return _subset_split(split, inp["max_train_per_task"], inp["subset_seed"])


def _load_head(root: Path, task: str) -> Head:
    state = load_state_dict(root / head_file(task))
    return Head(state["weight"], state["bias"])


def head_file(task: str) -> str:
    return f".jobs/files/head-{task}.safetensors"


def checkpoint_file(task: str, variant: str) -> str:
    return f"finetuned/{task}__{variant}.safetensors"


def job_pretrain(ctx, inp: dict) -> dict:
    """θ0: seed → encoder init → supervised pretraining on the disjoint classes."""
    bench, recipe, seed = _bench(inp["data"]), PretrainRecipe.model_validate(inp["pretrain"]), inp["seed"]
    torch.manual_seed(seed)
    encoder = create_encoder(EncoderConfig.model_validate(inp["encoder"])).to(pick_device(inp["device"]))
    data = _subset_split(bench.pretrain.splits["train"], recipe.max_train, seed)
    acc = _train.pretrain(encoder, data, bench.pretrain.num_classes, recipe, torch.Generator().manual_seed(seed),
                          val=bench.pretrain.splits["val"],
                          on_step=lambda s: ctx.progress(s + 1, recipe.steps, "pretraining encoder"))
    save_state_dict(encoder_params(encoder), ctx.path(PRETRAINED), {"role": "pretrained", "preset": inp["preset"]})
    return {"pretrain_accuracy": acc}


def job_head(ctx, inp: dict) -> dict:
    """Linear probe of one task on frozen θ0 features (seeded by the task's position in the recipe)."""
    encoder = _encoder(inp, ctx, PRETRAINED)
    split, dev = _train_split(inp), pick_device(inp["device"])
    feats = _train.features(encoder, split.images).to(dev)
    head = _train.fit_probe(feats, split.labels.to(dev), _bench(inp["data"]).tasks[inp["task"]].num_classes,
                            ProbeRecipe.model_validate(inp["probe"]), torch.Generator().manual_seed(inp["probe_seed"]))
    save_state_dict({"weight": head.weight.cpu(), "bias": head.bias.cpu()}, ctx.path(head_file(inp["task"])),
                    {"role": "head", "task": inp["task"]})
    ctx.progress(1, 1, f"linear probe {inp['task']}")
    return {}


def job_finetune(ctx, inp: dict) -> dict:
    """θ_t: θ0 fine-tuned on one task with one variant; every variant of a task sees the same batches."""
    theta0 = load_state_dict(ctx.root / PRETRAINED)
    encoder = _encoder(inp)
    encoder.load_state_dict(theta0)
    variant, recipe = VariantSpec.model_validate(inp["variant"]), FinetuneRecipe.model_validate(inp["finetune"])
    encoder = linearize_for_finetuning(encoder, theta0, recipe.linearized)  # f(θ0) + J(θ − θ0) when linearized
    steps = variant.steps or recipe.steps
    torch.manual_seed(inp["torch_seed"])
    losses = _train.finetune(encoder, _load_head(ctx.root, inp["task"]), _train_split(inp), recipe, variant,
                             torch.Generator().manual_seed(inp["batch_seed"]),
                             on_step=lambda s: ctx.progress(s + 1, steps,
                                                            f"fine-tuning {inp['task']} ({variant.describe()})"))
    params = encoder_params(encoder)
    save_state_dict(params, ctx.path(checkpoint_file(inp["task"], variant.name)),
                    {"task": inp["task"], "variant": variant.name})
    return {"final_train_loss": losses[-1] if losses else None,
            "task_vector_norm": TaskVector(pretrained=theta0, finetuned=params).norm()}


def job_evaluate(ctx, inp: dict) -> dict:
    """Accuracy/loss of one checkpoint on one task: train (first ``max_train_eval``), val, test."""
    encoder = _encoder(inp, ctx, inp["checkpoint"])
    if inp.get("linearized"):  # a linearized zoo's checkpoints are scored through f_lin
        encoder = LinearizedEncoder(encoder, load_state_dict(ctx.root / PRETRAINED)).eval()
    head, split = _load_head(ctx.root, inp["task"]), _train_split(inp)
    task_data, n = _bench(inp["data"]).tasks[inp["task"]], inp["max_train_eval"]
    train_acc, _ = _train.accuracy_and_loss(encoder, head, split.images[:n], split.labels[:n])
    val_acc, val_loss = _train.accuracy_and_loss(encoder, head, task_data.splits["val"].images,
                                                 task_data.splits["val"].labels)
    test_acc, test_loss = _train.accuracy_and_loss(encoder, head, task_data.splits["test"].images,
                                                   task_data.splits["test"].labels)
    ctx.progress(1, 1, f"evaluating {inp['checkpoint']} on {inp['task']}")
    return SplitScores(train=train_acc, val=val_acc, test=test_acc, val_loss=val_loss,
                       test_loss=test_loss).model_dump()


# -- the graph -------------------------------------------------------------------------------------------
def zoo_jobs(recipe: ZooRecipe, data_sha: str, device: str = "cpu", threads: int | None = None) -> list[Job]:
    """The build graph of a recipe, in dependency order. Seeds derive from the recipe seed and the task's
    index, exactly as a one-shot build: pretrain ``seed``; task i: subset ``seed+i``, probe ``seed+1000+i``,
    fine-tuning torch seed ``s+17i`` and batch seed ``s+7919(i+1)`` with s = the variant's ``seed`` or, when None,
    the recipe's (so every variant without its own seed sees the same batches).
    The device and the torch thread count are inputs too: a build resumed with other settings redoes the jobs
    whose bytes would differ."""
    res = Resources(num_cpus=threads or 1, num_gpus=1 if device.startswith("cuda") else 0)
    # device and torch threads change the bytes (reduction order), so they are part of every job's identity
    common = {"data": data_sha, "device": device, "threads": threads, "encoder": recipe.encoder.model_dump(mode="json")}
    kw = dict(threads=threads, resources=res)
    pre = Job("pretrain", "pretrain θ0", job_pretrain,
              {**common, "preset": recipe.preset, "seed": recipe.seed, "pretrain": recipe.pretrain.model_dump(mode="json")},
              outputs=(PRETRAINED,), weight=recipe.pretrain.steps, **kw)
    jobs = [pre]
    for i, task in enumerate(recipe.tasks):
        per_task = {**common, "task": task, "max_train_per_task": recipe.max_train_per_task,
                    "subset_seed": recipe.seed + i}
        head = Job("head", f"head {task}", job_head,
                   {**per_task, "probe": recipe.probe.model_dump(mode="json"), "probe_seed": recipe.seed + 1000 + i},
                   outputs=(head_file(task),), reads=(PRETRAINED,), deps=(pre.id,), **kw)
        ev_inp = {**per_task, "max_train_eval": recipe.evaluation.max_train_eval}
        if recipe.finetune.linearized:  # only then: older recipes keep their job ids
            ev_inp["linearized"] = True
        jobs += [head, Job("evaluate", f"evaluate θ0 on {task}", job_evaluate, {**ev_inp, "checkpoint": PRETRAINED},
                           reads=(PRETRAINED, head_file(task)), deps=(pre.id, head.id), **kw)]
        for v in recipe.variants:
            seed = recipe.seed if v.seed is None else v.seed  # a variant's own fine-tuning seed
            ft = Job("finetune", f"fine-tune {task}/{v.name}", job_finetune,
                     {**per_task, "variant": v.job_dump(), "finetune": recipe.finetune.job_dump(),
                      "torch_seed": seed + 17 * i, "batch_seed": seed + 7919 * (i + 1)},
                     outputs=(checkpoint_file(task, v.name),), reads=(PRETRAINED, head_file(task)),
                     deps=(pre.id, head.id), weight=(v.steps or recipe.finetune.steps) * (2 if v.sam else 1), **kw)
            rel = checkpoint_file(task, v.name)
            jobs += [ft, Job("evaluate", f"evaluate {task}/{v.name}", job_evaluate, {**ev_inp, "checkpoint": rel},
                             reads=(rel, head_file(task)), deps=(ft.id, head.id), **kw)]
    return jobs


def _method(recipe: ZooRecipe, variant: VariantSpec) -> dict:
    ft = recipe.finetune
    method = {"optimizer": ft.optimizer, "lr": ft.lr, "weight_decay": ft.weight_decay, "steps": variant.steps or ft.steps,
              "batch_size": ft.batch_size, "schedule": ft.schedule, "warmup_steps": ft.warmup_steps,
              "grad_clip": ft.grad_clip, "sam": variant.sam, "rho": variant.rho if variant.sam else None,
              "adaptive": variant.adaptive if variant.sam else None, "label": variant.describe()}
    if ft.optimizer == "sgd":
        method["momentum"] = ft.momentum
    if ft.precision != "fp32":
        method["precision"] = ft.precision
    if variant.seed is not None:
        method["seed"] = variant.seed
    return method


def _assemble(recipe: ZooRecipe, bench, jobs: list[Job], records: dict[str, JobRecord], stage: Path, name: str,
              device: str, threads: int) -> None:
    """heads.safetensors and zoo.json from the jobs' outputs and metrics; stale files and records removed."""
    by = {(j.kind, j.inputs.get("task"), j.inputs.get("checkpoint") or (j.inputs.get("variant") or {}).get("name")):
          records[j.id] for j in jobs}
    heads = {t: _load_head(stage, t) for t in recipe.tasks}
    save_state_dict(heads_to_state_dict(heads), stage / HEADS, {"role": "heads"})
    pre = by[("pretrain", None, None)]
    stage_times = {"pretrain": pre.wall_time_s, "probe": 0.0}
    checkpoints = []
    for t in recipe.tasks:
        stage_times["probe"] += by[("head", t, None)].wall_time_s + by[("evaluate", t, PRETRAINED)].wall_time_s
        for v in recipe.variants:
            rel = checkpoint_file(t, v.name)
            ft, ev = by[("finetune", t, v.name)], by[("evaluate", t, rel)]
            checkpoints.append(CheckpointRecord(
                file=rel, sha256=ft.outputs[rel], task=t, variant=v.name, method=_method(recipe, v),
                accuracy=SplitScores(**ev.metrics), pretrained_accuracy=SplitScores(**by[("evaluate", t, PRETRAINED)].metrics),
                task_vector_norm=ft.metrics["task_vector_norm"], final_train_loss=ft.metrics["final_train_loss"],
                wall_time_s=ft.wall_time_s + ev.wall_time_s))
            stage_times[f"finetune/{t}/{v.name}"] = ft.wall_time_s + ev.wall_time_s
    keep = {c.file for c in checkpoints}
    for f in (stage / "finetuned").glob("*.safetensors"):
        if f"finetuned/{f.name}" not in keep:
            f.unlink()  # a checkpoint of a variant or task the recipe no longer has
    ids = {j.id for j in jobs}
    for rec in jobs_dir(stage).glob("*.json"):
        if rec.stem not in ids:
            rec.unlink()
    manifest = ZooManifest(
        name=name, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        recipe=recipe, recipe_fingerprint=recipe.fingerprint(data_sha256(bench)), seed=recipe.seed,
        encoder=recipe.encoder, data={"sha256": data_sha256(bench), "path": str(bench.path)},
        tasks=[TaskInfo(name=t, description=bench.tasks[t].description,
                        class_names=list(bench.tasks[t].class_names)) for t in recipe.tasks],
        variants=recipe.variants, pretrained=FileRecord(file=PRETRAINED, sha256=pre.outputs[PRETRAINED]),
        heads=FileRecord(file=HEADS, sha256=sha256_file(stage / HEADS)),
        pretrain_accuracy=pre.metrics.get("pretrain_accuracy"), checkpoints=checkpoints, versions=_versions(),
        device=device, threads=threads, build_wall_time_s=round(sum(r.wall_time_s or 0 for r in records.values()), 3),
        stage_times_s={k: round(v, 3) for k, v in stage_times.items()})
    atomic_write_text(stage / MANIFEST_NAME, manifest.model_dump_json(indent=2))


def stage_dir(out_dir: str | os.PathLike) -> Path:
    """Where a build of ``out_dir`` works (and resumes): ``.{name}.build`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.build"


def _prepare_stage(out_dir: Path, stage: Path) -> None:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        if not stage.exists() and out_dir.is_dir():  # extend/rebuild: start from the zoo's files and records
            shutil.copytree(out_dir, stage, copy_function=os.link, ignore=shutil.ignore_patterns(MANIFEST_NAME))
        stage.mkdir(exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{out_dir}: cannot create output directory ({exc.strerror or exc})") from exc
    (stage / MANIFEST_NAME).unlink(missing_ok=True)


def _swap_in(stage: Path, out_dir: Path) -> None:
    """Move the finished stage to ``out_dir``; an existing zoo is replaced only now."""
    backup = out_dir.parent / f".{out_dir.name}.old"
    if backup.exists():
        shutil.rmtree(backup)
    if out_dir.exists():
        os.replace(out_dir, backup)
    os.replace(stage, out_dir)
    shutil.rmtree(backup, ignore_errors=True)


def build_zoo(recipe: ZooRecipe, out_dir: str | os.PathLike, device: str = "auto", overwrite: bool = False,
              progress: Progress | None = None, benchmark=None, backend: str = "local", address: str | None = None,
              threads: int | None = None, cancel_event: threading.Event | None = None) -> Zoo:
    """Build (or resume, or extend) a zoo from a recipe into ``out_dir`` as a graph of jobs on ``backend``.

    ``overwrite``: replace an existing ``out_dir`` (its finished jobs are reused when their inputs are
    unchanged). ``threads``: torch threads inside every job (default: this process's setting).
    """
    from sammerge.data import load_benchmark

    out_dir = Path(out_dir)
    check_backend(backend, address)
    if out_dir.exists() and not overwrite:
        raise ZooError(f"{out_dir}: already exists (use --overwrite to replace it)")
    bench = benchmark if benchmark is not None else load_benchmark()
    unknown = [t for t in recipe.tasks if t not in bench.tasks]
    if unknown:
        raise ZooError(f"unknown task '{unknown[0]}' (known: {', '.join(bench.tasks)})")
    sha = data_sha256(bench)
    _BENCHMARKS[sha] = bench
    threads = threads or torch.get_num_threads()
    if backend == "ray" and device == "auto":
        from sammerge.jobs.ray_backend import ensure_ray
        dev = "cuda" if ensure_ray(address).cluster_resources().get("GPU", 0) > 0 else "cpu"
    else:
        dev = str(pick_device(device))
    stage = stage_dir(out_dir)
    _prepare_stage(out_dir, stage)
    with open(out_dir.parent / f".{out_dir.name}.build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per target at a time (in any process)
        try:
            clear_cancel(stage)
            jobs = zoo_jobs(recipe, sha, dev, threads)
            records = run_graph(jobs, stage, backend, progress, address, cancel_event)
            _assemble(recipe, bench, jobs, records, stage, out_dir.name, dev, threads)
            _swap_in(stage, out_dir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return open_zoo(out_dir)


def default_zoo_dir() -> Path:
    """Where the app keeps the demo zoo: $SAMMERGE_HOME or ~/.cache/sammerge."""
    root = Path(os.environ.get("SAMMERGE_HOME", Path.home() / ".cache" / "sammerge"))
    return root / "zoos"


def preset_zoo_dir(preset: str = "demo", root: str | os.PathLike | None = None) -> Path:
    """The cache directory of a preset's zoo: ``ROOT/{preset}-{fingerprint[:12]}``."""
    from sammerge.data import load_benchmark
    from sammerge.models.presets import get_preset

    fingerprint = get_preset(preset).fingerprint(data_sha256(load_benchmark()))
    return (Path(root) if root else default_zoo_dir()) / f"{preset}-{fingerprint[:12]}"


def ensure_zoo(preset: str = "demo", root: str | os.PathLike | None = None, progress: Progress | None = None,
               device: str = "auto", cancel_event: threading.Event | None = None) -> Zoo:
    """Open the cached zoo of a preset; if missing (or from another recipe) install the shipped demo zoo when it
    matches, else build it (a partly built one resumes; the previous zoo stays until the new one is complete)."""
    from sammerge.data import load_benchmark
    from sammerge.models.presets import get_preset

    recipe = get_preset(preset)
    bench = load_benchmark()
    fingerprint = recipe.fingerprint(data_sha256(bench))
    zoo_dir = preset_zoo_dir(preset, root)
    zoo_dir.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time (several app sessions or servers may ask for the same zoo at once)
    with open(zoo_dir.parent / f".{zoo_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if zoo_dir.exists():
                try:
                    zoo = open_zoo(zoo_dir)
                    if zoo.manifest.recipe_fingerprint == fingerprint:
                        return zoo
                except (ZooError, CheckpointError):
                    pass  # corrupt cache: rebuild it (finished jobs whose files verify are kept)
            from sammerge.shipped import install_shipped_zoo
            shipped = install_shipped_zoo(preset, fingerprint, zoo_dir)
            if shipped is not None:
                return shipped
            return build_zoo(recipe, zoo_dir, device=device, overwrite=True, progress=progress, benchmark=bench,
                             cancel_event=cancel_event)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
