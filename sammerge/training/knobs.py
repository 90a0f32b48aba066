"""A recipe with a user's knobs turned: the one place the CLI (`zoo build`) and the app's zoo builder edit recipes."""
from __future__ import annotations

from typing import Sequence

from pydantic import ValidationError

from sammerge.errors import ConfigError, invalid_fields
from sammerge.training.presets import VariantSpec, ZooRecipe


def with_knobs(recipe: ZooRecipe, *, seed: int | None = None, tasks: Sequence[str] | None = None,
               lr: float | None = None, steps: int | None = None, rho: float | None = None,
               adaptive: bool | None = None, linearized: bool | None = None, trainable: str | None = None,
               equal_compute: bool = False) -> ZooRecipe:
    """``recipe`` with the given knobs changed (None: unchanged), validated as a whole.

    ``rho``/``adaptive`` apply to every SAM variant (ASAM is named ``asam``; its ρ defaults to 0.5, the paper's);
    ``equal_compute`` adds ``plain_2x``: plain fine-tuning with twice the steps (SAM costs two passes a step).
    Every problem is reported at once (ConfigError)."""
    data = recipe.model_dump()
    if seed is not None:
        data["seed"] = seed
    if tasks is not None:
        data["tasks"] = list(tasks)
    for key, value in (("lr", lr), ("steps", steps), ("linearized", linearized), ("trainable", trainable)):
        if value is not None:
            data["finetune"][key] = value
    variants = []
    for v in recipe.variants:
        if v.sam and (rho is not None or adaptive is not None):
            asam = v.adaptive if adaptive is None else adaptive
            v = VariantSpec(name="asam" if asam else ("sam" if v.name == "asam" else v.name), sam=True,
                            rho=rho if rho is not None else (0.5 if asam and not v.adaptive else v.rho),
                            adaptive=asam, steps=v.steps)
        variants.append(v.model_dump())
    if equal_compute and not any(v["name"] == "plain_2x" for v in variants):
        base = data["finetune"]["steps"]
        variants.append(VariantSpec(name="plain_2x", steps=2 * base).model_dump())
    data["variants"] = variants
    try:
        return ZooRecipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"recipe: {invalid_fields(exc, 'recipe field')}") from None
