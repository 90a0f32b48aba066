"""A recipe with a user's knobs turned: the one place the CLI (`zoo build`) and the app's zoo builder edit recipes."""
from __future__ import annotations

from typing import Sequence

from pydantic import ValidationError

from sammerge.errors import ConfigError, invalid_fields
from sammerge.models.presets import VariantSpec, ZooRecipe


def has_sam_and_asam(recipe: ZooRecipe) -> bool:
    """Whether ``recipe`` fine-tunes with SAM and with ASAM side by side (the ``adaptive`` knob then picks whose ρ)."""
    return len({v.adaptive for v in recipe.variants if v.sam}) > 1


def with_knobs(recipe: ZooRecipe, *, seed: int | None = None, tasks: Sequence[str] | None = None,
               lr: float | None = None, steps: int | None = None, rho: float | None = None,
               adaptive: bool | None = None, linearized: bool | None = None, trainable: str | None = None,
               precision: str | None = None, equal_compute: bool = False,
               seeds: Sequence[int] | None = None) -> ZooRecipe:
    """``recipe`` with the given knobs changed (None: unchanged), validated as a whole.

    ``rho``/``adaptive`` apply to every SAM variant (ASAM is named ``asam``; its ρ defaults to 0.5, the paper's);
    a recipe with both SAM and ASAM variants keeps both, and ``rho`` sets the ρ of the kind ``adaptive`` names (SAM
    when it is None or False);
    ``equal_compute`` adds ``plain_2x``: plain fine-tuning with twice the steps (SAM costs two passes a step).
    ``precision``: the fine-tuning precision ("fp32" or "bf16"). ``seeds``: every variant without its own seed becomes
    one variant per fine-tuning seed k, named ``{name}_s{k}`` with ``seed=k``, except k = the zoo's seed, which keeps
    the variant as it is (same name, same bytes). Every problem is reported at once (ConfigError)."""
    data = recipe.model_dump()
    if seed is not None:
        data["seed"] = seed
    if tasks is not None:
        data["tasks"] = list(tasks)
    for key, value in (("lr", lr), ("steps", steps), ("linearized", linearized), ("trainable", trainable),
                       ("precision", precision)):
        if value is not None:
            data["finetune"][key] = value
    variants = []
    both_kinds = has_sam_and_asam(recipe)
    for v in recipe.variants:
        if v.sam and both_kinds:  # SAM and ASAM side by side: each keeps its kind; ρ goes to the kind `adaptive` names
            if rho is not None and v.adaptive == bool(adaptive):
                v = v.model_copy(update={"rho": rho})
        elif v.sam and (rho is not None or adaptive is not None):
            asam = v.adaptive if adaptive is None else adaptive
            v = VariantSpec(name="asam" if asam else ("sam" if v.name == "asam" else v.name), sam=True,
                            rho=rho if rho is not None else (0.5 if asam and not v.adaptive else v.rho),
                            adaptive=asam, steps=v.steps, seed=v.seed)
        variants.append(v.model_dump())
    if equal_compute and not any(v["name"] == "plain_2x" for v in variants):
        base = data["finetune"]["steps"]
        variants.append(VariantSpec(name="plain_2x", steps=2 * base).model_dump())
    if seeds is not None:
        variants = _per_seed(variants, list(seeds), data["seed"])
    data["variants"] = variants
    try:
        return ZooRecipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"recipe: {invalid_fields(exc, 'recipe field')}") from None


def _per_seed(variants: list[dict], seeds: list[int], zoo_seed: int) -> list[dict]:
    """Each variant without its own seed, once per fine-tuning seed (``name_s{k}``; k = ``zoo_seed`` keeps it as is)."""
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(k, int) or k < 0 for k in seeds):
        raise ConfigError(f"seeds: give distinct integers ≥ 0, got {seeds}")
    out = []
    for v in variants:
        if v.get("seed") is not None:
            out.append(v)
            continue
        for k in seeds:
            out.append(v if k == zoo_seed else {**v, "name": f"{v['name']}_s{k}", "seed": k})
    return out
