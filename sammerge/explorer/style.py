"""Display names and colours of fine-tuning variants, shared by every figure, table and sentence."""
from __future__ import annotations

from typing import Sequence

from sammerge.merging.schema import fmt
from sammerge.merging.spec import LAMBDA, MergeSpec

PRETRAINED_COLOR = "#9aa0a6"
MIXED_COLOR = "#2ca02c"
VARIANT_COLORS = {"plain": "#1f77b4", "sam": "#d62728", "asam": "#9467bd"}
_EXTRA_COLORS = ["#2ca02c", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def variant_color(variant: str, variants: Sequence[str] = ()) -> str:
    if variant in VARIANT_COLORS:
        return VARIANT_COLORS[variant]
    others = [v for v in variants if v not in VARIANT_COLORS]
    return _EXTRA_COLORS[others.index(variant) % len(_EXTRA_COLORS)] if variant in others else _EXTRA_COLORS[0]


def variant_label(variant: str) -> str:
    return {"plain": "plain", "sam": "SAM", "asam": "ASAM"}.get(variant, variant)


def describe(spec: MergeSpec) -> str:
    """One line naming a merge (shown above the results; changes with every control)."""
    parts = [spec.spec.label]
    parts += [f"{'λ' if k == LAMBDA else k} = {fmt(v)}" for k, v in spec.params.items() if k != "normalize" or v]
    used = spec.uniform_variant()
    ckpt = f"all {variant_label(used)}" if used else ", ".join(
        f"{t.task}: {variant_label(t.variant)}" for t in spec.tasks)
    parts.append(f"{len(spec.tasks)} task{'s' if len(spec.tasks) != 1 else ''} ({ckpt})")
    if spec.has_weights and any(t.weight != 1.0 for t in spec.tasks):
        parts.append("λ_t: " + ", ".join(f"{t.task} {fmt(t.weight)}" for t in spec.tasks))
    return " · ".join(parts)
