"""Display names and colours of fine-tuning variants, shared by every figure, table and sentence."""
from __future__ import annotations

from typing import Sequence

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
