"""Per-layer coefficients λ_{t,g} in mergekit configs: written as mergekit 0.1.5's per-filter ``weight`` conditions
(the first matching condition wins) and read back, one value per layer group (:mod:`sammerge.merging.layers`)."""
from __future__ import annotations

import math
from typing import Any, Mapping

from sammerge.errors import ConfigError

__all__ = ["layer_weight_conditions"]


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(f"mergekit config: '{where}' must be a finite number, got {value!r}")
    return float(value)


def _base_keys(path: str) -> list[str]:
    """Floating-point tensor names of a safetensors file (header only; never unpickled)."""
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            return [k for k in f.keys() if f.get_slice(k).get_dtype().startswith(("F", "BF"))]
    except (OSError, Exception) as exc:  # safetensors raises its own error types
        raise ConfigError(f"{path}: cannot read the base model's tensor names for per-layer weights ({exc})") from None


def _first_match(conditions: list[dict[str, Any]], key: str) -> float | None:
    """mergekit 0.1.5's rule: the first condition without filter, with filter '*', or whose filter is in the name."""
    for c in conditions:
        f = c.get("filter")
        if f is None or f == "*" or f in key:
            return c["value"]
    return None


def layer_weight_conditions(keys: list[str], weight: float, layer_weights: Mapping[str, float]
                            ) -> list[dict[str, Any]]:
    """mergekit per-filter ``weight`` for w_t · s_{t,g(k)} on every key k (checked against ``keys``)."""
    from sammerge.merging.layers import HEAD, STEM, key_coefficients, layer_groups
    want = {k: weight * s for k, s in key_coefficients(keys, layer_weights).items()}
    groups = layer_groups(keys)

    def build(per_key: bool) -> list[dict[str, Any]]:
        conds = []
        for g, ks in groups.items():  # every group (a stem key's name is a substring of block keys)
            value = float(weight * layer_weights.get(g, 1.0))
            if per_key or g in (STEM, HEAD):
                conds += [{"filter": k, "value": value} for k in ks]
            else:
                conds.append({"filter": g + ".", "value": value})
        # compact: block filters first, then stem/head names; per key: longest name first (always exact)
        conds.sort(key=lambda c: -len(c["filter"]) if per_key else (c["filter"].endswith("."), len(c["filter"])),
                   reverse=not per_key)
        return conds + [{"value": float(weight)}]

    for per_key in (False, True):
        conds = build(per_key)
        if all(_first_match(conds, k) == want[k] for k in keys):
            return conds
    raise ConfigError("mergekit export: per-layer weights could not be expressed as filters")  # not reached


def _filtered_weight(value: Any, keys: list[str], where: str) -> dict[str, float] | None:
    """{layer group: value} from a list of mergekit filter conditions; ConfigError if a group gets two values."""
    from sammerge.merging.layers import layer_groups
    if not (isinstance(value, list) and value and all(isinstance(c, Mapping) and "value" in c for c in value)):
        return None
    for c in value:
        _finite(c["value"], where)
    out, problems = {}, []
    for g, ks in layer_groups(keys).items():
        values = {_first_match(list(value), k) for k in ks}
        if None in values:
            problems.append(f"no condition matches tensor '{next(k for k in ks if _first_match(list(value), k) is None)}'")
        elif len(values) > 1:
            problems.append(f"layer group '{g}' gets different values {sorted(values)}")
        else:
            out[g] = float(values.pop())
    if problems:
        raise ConfigError(f"mergekit config: '{where}': per-filter weights must give one value per layer group: "
                          + "; ".join(problems))
    return out
