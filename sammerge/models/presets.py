"""Zoo recipes as data: what a zoo build does, every knob explicit, fingerprinted for caching."""
from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sammerge.errors import ConfigError
from sammerge.models.model import EncoderConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PretrainRecipe(_Strict):
    """Supervised pretraining of the encoder (+ a throw-away head) on the disjoint pretraining classes."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    max_train: int | None = Field(None, ge=1, description="use at most this many pretraining images")
    fresh_noise: bool = Field(True, description="redraw the Gaussian pixel noise of every training batch")


class ProbeRecipe(_Strict):
    """Linear probe: one head per task fitted on frozen pretrained features, then frozen."""

    steps: int = Field(200, ge=1)
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


class FinetuneRecipe(_Strict):
    """Fine-tuning of the encoder on one task with its head frozen (shared by every variant)."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    steps: int = Field(150, ge=1)
    batch_size: int = Field(128, ge=1)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = Field(None, gt=0)
    fresh_noise: bool = Field(True, description="redraw the Gaussian pixel noise of every training batch")
    linearized: bool = Field(False, description="fine-tune (and evaluate) f(θ0) + J f(θ0)(θ − θ0) instead of f(θ)")
    trainable: Literal["all", "last_stage", "last_two_stages"] = Field(
        "all", description="which encoder parameters are fine-tuned (the rest stay at θ0)")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward and backward under bf16 autocast on the training device (both SAM passes), "
                            "fp32 master weights, optimizer and loss")

    @model_validator(mode="after")
    def _check_precision(self) -> "FinetuneRecipe":
        if self.linearized and self.precision != "fp32":
            raise ValueError("linearized fine-tuning runs in fp32 (precision bf16 is for plain forward passes)")
        return self

    def job_dump(self) -> dict:
        """JSON of the recipe for the build's job ids: fields added after the job graph existed are left out at their
        default, so finished jobs of older builds keep their ids (linearized and trainable predate it)."""
        return without_defaults(self.model_dump(mode="json"), {"precision": "fp32"})


# Fields added after zoos were shipped: left out of the fingerprint (and of the build's job ids) while at their
# default, so older recipes keep their fingerprint (and their cached zoos, and their finished jobs).
_FINGERPRINT_DEFAULTS = {"finetune": {"linearized": False, "trainable": "all", "precision": "fp32"}}
_VARIANT_FINGERPRINT_DEFAULTS = {"seed": None}


def without_defaults(dump: dict, defaults: dict) -> dict:
    """``dump`` without the keys whose value equals their (later added) default."""
    return {k: v for k, v in dump.items() if not (k in defaults and v == defaults[k])}


class VariantSpec(_Strict):
    """One fine-tuning variant: plain base optimizer, or SAM / ASAM around it."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    sam: bool = False
    rho: float = Field(0.05, gt=0)
    adaptive: bool = False
    steps: int | None = Field(None, ge=1, description="override of the fine-tuning steps")
    seed: int | None = Field(None, ge=0, description="fine-tuning seed of this variant (its batch order and SAM "
                                                     "noise); None: the zoo's seed")

    def describe(self) -> str:
        label = "plain" if not self.sam else f"{'ASAM' if self.adaptive else 'SAM'} ρ={self.rho:g}"
        return label if self.seed is None else f"{label}, seed {self.seed}"

    def job_dump(self) -> dict:
        """JSON of the variant without later-added fields at their default (job ids and fingerprints)."""
        return without_defaults(self.model_dump(mode="json"), _VARIANT_FINGERPRINT_DEFAULTS)


class EvalRecipe(_Strict):
    max_train_eval: int = Field(1024, ge=1, description="train accuracy is measured on this many images")


class ZooRecipe(_Strict):
    """Everything a zoo build depends on (together with the benchmark data hash)."""

    preset: str
    seed: int = 0
    encoder: EncoderConfig = EncoderConfig()
    tasks: list[str]
    max_train_per_task: int | None = Field(None, ge=1)
    pretrain: PretrainRecipe = PretrainRecipe()
    probe: ProbeRecipe = ProbeRecipe()
    finetune: FinetuneRecipe = FinetuneRecipe()
    variants: list[VariantSpec] = [VariantSpec(name="plain"), VariantSpec(name="sam", sam=True, rho=0.05)]
    evaluation: EvalRecipe = EvalRecipe()

    @model_validator(mode="after")
    def _check(self) -> "ZooRecipe":
        if not self.tasks:
            raise ValueError("a zoo needs at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError("tasks must be unique")
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ValueError("variants must be non-empty with unique names")
        return self

    def fingerprint(self, data_sha256: str = "") -> str:
        """sha256 over the recipe and the data hash: a changed recipe means a rebuild."""
        recipe = self.model_dump(mode="json")
        for section, defaults in _FINGERPRINT_DEFAULTS.items():
            recipe[section] = without_defaults(recipe[section], defaults)
        recipe["variants"] = [v.job_dump() for v in self.variants]
        payload = json.dumps({"recipe": recipe, "data": data_sha256}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


ALL_TASKS = ["digits", "latin_upper", "latin_lower", "greek_lower", "cyrillic_upper", "symbols",
             "greek_upper", "font_style"]


GLYPH7_TASKS = [t for t in ALL_TASKS if t != "font_style"]  # font_style: fine-tuning gains only +11 pts here


def _glyphs7() -> ZooRecipe:
    """The first demo recipe: 7 glyph tasks, stride-2 stem, long fine-tuning (merging closes little of the gap).

    Merging closes only ≈10 % of the
    pretrained → individual gap there; kept for comparison (README, "Looking for a regime")."""
    return ZooRecipe(
        preset="glyphs7", seed=0, tasks=list(GLYPH7_TASKS),
        encoder=EncoderConfig(channels=(16, 32, 64, 96), stem_width=16, stem_stride=2, output_stride=16),
        pretrain=PretrainRecipe(steps=300, batch_size=128, lr=2e-3),
        probe=ProbeRecipe(),
        finetune=FinetuneRecipe(optimizer="adamw", lr=4e-3, steps=400, batch_size=64, warmup_steps=40),
        variants=[VariantSpec(name="plain"), VariantSpec(name="sam", sam=True, rho=0.05)],
    )


def _tiny() -> ZooRecipe:
    """A seconds-long smoke build for tests of the build machinery: 3 tasks, a small encoder, 20 fine-tuning steps.

    It barely learns (fine-tuned ≈ pretrained ≈ chance): never read numbers from it; tests that do use ``test``."""
    return ZooRecipe(
        preset="tiny", seed=0, tasks=["digits", "latin_upper", "symbols"], max_train_per_task=512,
        encoder=EncoderConfig(channels=(8, 16, 16, 32), stem_width=8, stem_stride=2, gn_groups=4, output_stride=16),
        pretrain=PretrainRecipe(steps=40, batch_size=64, lr=4e-3, max_train=2048),
        probe=ProbeRecipe(steps=60),
        finetune=FinetuneRecipe(optimizer="adamw", lr=4e-3, steps=20, batch_size=64),
        variants=[VariantSpec(name="plain"), VariantSpec(name="sam", sam=True, rho=0.05)],
        evaluation=EvalRecipe(max_train_eval=256),
    )


def _test() -> ZooRecipe:
    """The test suite's fixture zoo: 3 tasks that clearly learn in ≈ 30 s on one core (not for results).

    Unlike ``tiny`` (a seconds-long smoke build that barely learns), its models are well above chance and every
    fine-tuned model gains clearly over θ0 (tests/conftest.py checks it when the fixture is built): wider stages,
    200 pretraining steps of batch 128 on all pretraining images, 120 fine-tuning steps of batch 64 at lr 5e-3."""
    return ZooRecipe(
        preset="test", seed=0, tasks=["digits", "latin_upper", "symbols"], max_train_per_task=1024,
        encoder=EncoderConfig(channels=(16, 32, 32, 64), stem_width=16, stem_stride=2, gn_groups=4, output_stride=16),
        pretrain=PretrainRecipe(steps=200, batch_size=128, lr=3e-3),
        probe=ProbeRecipe(steps=60),
        finetune=FinetuneRecipe(optimizer="adamw", lr=5e-3, steps=120, batch_size=64),
        variants=[VariantSpec(name="plain"), VariantSpec(name="sam", sam=True, rho=0.05)],
        evaluation=EvalRecipe(max_train_eval=256),
    )


DEMO_TASKS = ["digits", "latin_upper", "latin_lower", "symbols"]


def _demo() -> ZooRecipe:
    """The shipped demo: 4 tasks, plain / SAM / ASAM, short fine-tuning that keeps task vectors mergeable.

    The regime search's best recipe (benchmarks/demo_regime.py, formerly ``demo_v2``): 4 tasks,
    a full-resolution encoder (stride-1 stem), short pretraining and short, small AdamW fine-tuning steps, so task
    vectors stay in the pretrained basin and task arithmetic closes about half of the pretrained → individual gap."""
    return ZooRecipe(
        preset="demo", seed=0, tasks=list(DEMO_TASKS),
        encoder=EncoderConfig(channels=(16, 32, 64, 96), stem_width=16, stem_stride=1, output_stride=32),
        pretrain=PretrainRecipe(steps=150, batch_size=128, lr=2e-3),
        probe=ProbeRecipe(),
        finetune=FinetuneRecipe(optimizer="adamw", lr=1e-3, steps=150, batch_size=128, warmup_steps=0),
        variants=[VariantSpec(name="plain"), VariantSpec(name="sam", sam=True, rho=0.05),
                  VariantSpec(name="asam", sam=True, rho=0.5, adaptive=True)],
    )


def _demo_fair() -> ZooRecipe:
    """demo plus plain runs at half and twice the steps, for the fair SAM comparisons.

    Equal compute: SAM costs two passes per step; equal individual accuracy: the plain family's
    merged-vs-individual curve. Its plain /
    sam / asam checkpoints are those of demo (same seeds, same batches)."""
    recipe = _demo()
    steps = recipe.finetune.steps
    return recipe.model_copy(update={"preset": "demo_fair", "variants": [
        VariantSpec(name="plain_half", steps=steps // 2), *recipe.variants, VariantSpec(name="plain_2x", steps=2 * steps)]})


PRESETS = {"demo": _demo, "demo_fair": _demo_fair, "tiny": _tiny, "test": _test, "glyphs7": _glyphs7}


def describe_preset(name: str) -> str:
    """One line on a preset: the first line of its recipe function's docstring."""
    doc = (PRESETS[name].__doc__ or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else name


def get_preset(name: str) -> ZooRecipe:
    """The recipe of a named preset (a fresh copy)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})") from None
