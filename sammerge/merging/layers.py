"""Layer groups of a model, derived from its parameter names: ``stem``, one group per block, ``head``.

A *block* is the shortest key prefix ending in ``<container>.<index>`` where the container is one of timm's block
lists (``layer1`` … ``layerN`` of a ResNet, ``blocks`` of a ViT, ``stages``/``layers`` of hierarchical models):
``layer2.0.conv1.weight`` → ``layer2.0``, ``blocks.11.attn.qkv.weight`` → ``blocks.11``. Keys outside every block
are ``head`` when their first name is a head-side module (``norm``, ``fc_norm``, ``head``, ``fc``, ``classifier``,
``pre_logits``, ``attn_pool``, an EfficientNet's ``conv_head`` and ``bn2``), else ``stem`` (``conv1``, ``bn1``, ``patch_embed``, ``pos_embed``, ``cls_token`` …).
The grouping is a function of the names alone, so a spec can name groups and any copy of the model resolves them.

Per-layer coefficients are ``{group: s}``; :func:`key_coefficients` expands them to ``{key: s}`` (groups not named
get ``default``), which :func:`~sammerge.merging.task_vector.linear_combination` and the methods take.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping

from sammerge.errors import MergeError

__all__ = ["STEM", "HEAD", "group_of", "layer_groups", "group_names", "key_coefficients", "check_group_names"]

STEM, HEAD = "stem", "head"
_BLOCK = re.compile(r"^(.*?\b(?:layer\d+|blocks|stages|layers)\.\d+)(?:\.|$)")
_HEAD_MODULES = {"norm", "fc_norm", "head", "head_drop", "fc", "classifier", "pre_logits", "attn_pool", "global_pool",
                 "conv_head", "bn2"}  # the last two: the 1×1 head convolution of timm's EfficientNets / MobileNets


def group_of(key: str) -> str:
    """The layer group of one parameter name (see the module docstring)."""
    m = _BLOCK.match(key)
    if m:
        return m.group(1)
    return HEAD if key.split(".", 1)[0] in _HEAD_MODULES else STEM


def _order(group: str) -> tuple:
    if group == STEM:
        return (0,)
    if group == HEAD:
        return (2,)
    return (1, *[(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.]|(?<=\D)(?=\d)", group) if p])


def layer_groups(keys: Iterable[str]) -> dict[str, list[str]]:
    """group → its keys (in the given order); groups ordered stem, blocks (numerically), head."""
    out: dict[str, list[str]] = {}
    for key in keys:
        out.setdefault(group_of(key), []).append(key)
    return {g: out[g] for g in sorted(out, key=_order)}


def group_names(keys: Iterable[str]) -> list[str]:
    """The ordered group names of a model's keys."""
    return list(layer_groups(keys))


def check_group_names(names: Iterable[str], groups: Iterable[str], where: str = "per-layer coefficients") -> None:
    """MergeError listing every name that is not a group of the model (and the model's groups)."""
    groups = list(groups)
    unknown = [n for n in names if n not in groups]
    if unknown:
        raise MergeError(f"{where}: unknown layer group(s) {', '.join(repr(u) for u in unknown)} "
                         f"(this model has: {', '.join(groups)})")


def key_coefficients(keys: Iterable[str], group_weights: Mapping[str, float], default: float = 1.0,
                     where: str = "per-layer coefficients") -> dict[str, float]:
    """{key: s_{g(key)}} for every key (``default`` for groups not in ``group_weights``); unknown group → MergeError."""
    keys = list(keys)
    groups = layer_groups(keys)
    check_group_names(group_weights, groups, where)
    return {k: float(group_weights.get(g, default)) for g, ks in groups.items() for k in ks}
