"""A merge spec as URL query parameters (the app's shareable links), and back.

``spec_to_query``: ``method``, ``p.<name>`` per global parameter, ``tasks``, ``variants`` (task:variant,…),
``weights`` and every other per-task parameter (task:value,…), ``lw.<task>`` = group:s,… per-layer coefficients.
``spec_from_query`` rebuilds a spec over a zoo; a bad entry is ignored with a warning naming it, never an exception.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from sammerge.errors import ConfigError
from sammerge.merging.registry import MergeMethod, get_method
from sammerge.merging.schema import fmt, parse
from sammerge.merging.spec import DEFAULT_METHOD, DENSITIES, TASK_FIELDS, WEIGHTS, MergeSpec, fit_task_count

__all__ = ["spec_to_query", "spec_from_query"]


def spec_to_query(spec: MergeSpec) -> dict[str, str]:
    """Compact query parameters: method, parameters, tasks, variants, λ_t, densities, ``lw.<task>`` = group:s,…"""
    q = {"method": spec.method}
    for name, value in spec.params.items():
        q[f"p.{name}"] = fmt(value)
    q["tasks"] = ",".join(spec.task_names)
    q["variants"] = ",".join(f"{t.task}:{t.variant}" for t in spec.tasks)
    if spec.has_weights:
        q["weights"] = ",".join(f"{t.task}:{fmt(t.weight)}" for t in spec.tasks)
    for p in spec.spec.per_model_params:
        if p.name == WEIGHTS:
            continue
        values = [f"{t.task}:{fmt(t.value(p.name))}" for t in spec.tasks if t.value(p.name) is not None]
        if values:
            q[p.name] = ",".join(values)
    for t in spec.tasks:
        if t.layer_weights:
            q[f"lw.{t.task}"] = ",".join(f"{g}:{fmt(w)}" for g, w in t.layer_weights.items())
    return q


def spec_from_query(query: Mapping[str, str], zoo) -> tuple[MergeSpec, list[str]]:
    """Rebuild a spec over ``zoo`` from query parameters; returns (spec, warnings).

    Bad entries are ignored with a warning naming them, never an exception."""
    warnings: list[str] = []
    method = query.get("method", DEFAULT_METHOD)
    try:
        spec = get_method(method)
    except ConfigError as exc:
        warnings.append(f"link: {exc}; using {DEFAULT_METHOD}")
        method, spec = DEFAULT_METHOD, get_method(DEFAULT_METHOD)
    default = MergeSpec.default_for_zoo(zoo, method)
    params = dict(default.params)
    for p in spec.global_params:
        raw = query.get(f"p.{p.name}")
        if raw is None:
            continue
        try:
            params[p.name] = p.check_value(parse(raw, p), p.name)
        except (ConfigError, ValueError) as exc:
            warnings.append(f"link: ignored parameter '{p.name}' ({exc})")
    names = list(zoo.tasks)
    if "tasks" in query:
        listed = [] if query["tasks"] in ("", "-") else query["tasks"].split(",")
        unknown = [n for n in listed if n not in zoo.tasks]
        if unknown:
            warnings.append(f"link: ignored unknown task(s) {', '.join(unknown)}")
        names = [t for t in zoo.tasks if t in listed]
    if not names:
        warnings.append("link: no task selected; showing every task")
        names = list(zoo.tasks)
    if not spec.accepts_tasks(len(names)):
        fitted = fit_task_count(spec, names, list(zoo.tasks))
        warnings.append(f"link: method '{method}' merges {spec.task_count_text()} tasks; using "
                        f"{', '.join(fitted)}")
        names = fitted
    fallback = default.uniform_variant() or zoo.variants[0]
    variants = {t: default.variants.get(t, fallback) for t in zoo.tasks}
    for t, v in _pairs(query.get("variants", ""), warnings, "variants"):
        if t in variants and v in zoo.variants:
            variants[t] = v
        else:
            warnings.append(f"link: ignored variant '{t}:{v}'")
    per_task: dict[str, dict[str, float]] = {p.name: {} for p in spec.per_model_params}
    for name in sorted(set(query) & ({WEIGHTS, DENSITIES} - set(per_task))):
        warnings.append(f"link: ignored '{name}' (method '{method}' has no such per-task parameter)")
    for pspec in spec.per_model_params:
        what = TASK_FIELDS.get(pspec.name, pspec.name)
        for t, v in _pairs(query.get(pspec.name, ""), warnings, pspec.name):
            try:
                if t not in zoo.tasks:
                    raise ValueError("unknown task")
                per_task[pspec.name][t] = pspec.check_value(float(v), f"{pspec.name}[{t}]")
            except (ConfigError, ValueError) as exc:
                warnings.append(f"link: ignored {what} '{t}:{v}' ({exc})")
    layer_weights = _query_layer_weights(query, zoo, names, spec, warnings)
    try:
        out = MergeSpec.for_zoo(zoo, method, params, {t: variants[t] for t in names}, tasks=names,
                          layer_weights=layer_weights, per_task=per_task)
    except ConfigError as exc:
        warnings.append(f"link: {exc}; using the method's defaults")
        out = MergeSpec.for_zoo(zoo, method, default.params, {t: variants[t] for t in names}, tasks=names)
    return out, warnings


def _query_layer_weights(query: Mapping[str, str], zoo, names: Sequence[str], method: MergeMethod,
                         warnings: list[str]) -> dict[str, dict[str, float]]:
    """task → {group: s} from ``lw.<task>`` query parameters; unknown tasks/groups and bad numbers are warned about."""
    raw = {k[3:]: v for k, v in query.items() if k.startswith("lw.")}
    if not raw:
        return {}
    if not method.supports_layer_weights:
        warnings.append(f"link: ignored per-layer coefficients (method '{method.name}' has no per-task weights)")
        return {}
    from sammerge.merging.layers import group_names
    groups = group_names(k for k, v in zoo.pretrained().items() if v.is_floating_point())
    out: dict[str, dict[str, float]] = {}
    for task, text in raw.items():
        if task not in names:
            warnings.append(f"link: ignored per-layer coefficients of unknown or unselected task '{task}'")
            continue
        for g, v in _pairs(text, warnings, f"lw.{task}"):
            try:
                if g not in groups:
                    raise ValueError(f"not a layer group of this model; it has {', '.join(groups)}")
                value = float(v)
                if not math.isfinite(value):
                    raise ValueError("not finite")
                out.setdefault(task, {})[g] = value
            except ValueError as exc:
                warnings.append(f"link: ignored layer weight '{task}:{g}:{v}' ({exc})")
    return out


def _pairs(text: str, warnings: list[str], what: str):
    for item in filter(None, text.split(",")):
        if ":" not in item:
            warnings.append(f"link: ignored {what} entry {item!r} (expected task:value)")
            continue
        t, v = item.split(":", 1)
        yield t, v
