"""mergekit interchange: export a :class:`MergeSpec` as mergekit YAML, read mergekit YAML into one.

Method names come from the registry (each method declares ``mergekit_name``); parameter names from
each parameter's ``mergekit_name``. Where semantics differ, the exported YAML says so in comments.

Per-layer coefficients (``tasks[].layer_weights``) are written in mergekit's per-filter form: a model's ``weight`` is a
list of ``{filter, value}`` conditions where the first condition whose filter is a substring of the tensor name wins
(mergekit 0.1.5 ``evaluate_setting``); the last condition has no filter (the default). Block groups are one filter
(``layer2.0.``), listed before the names of ``stem``/``head`` keys (else one name per key, longest first); the list is checked
against every tensor name of the base model before it is written. Reading such a list back gives per-layer
coefficients when every layer group gets one value (ConfigError otherwise).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from sammerge.errors import ConfigError
from sammerge.merging.registry import get_method, list_methods
from sammerge.io import read_config_text as read_text, safe_yaml
from sammerge.merging.mergekit_layers import _base_keys, _filtered_weight, layer_weight_conditions  # noqa: F401
from sammerge.merging.spec import MergeSpec, library_version, now

__all__ = ["to_mergekit_yaml", "from_mergekit_yaml", "is_mergekit_config", "load_any_config", "config_from_text",
           "mergekit_names",
           "layer_weight_conditions"]


def mergekit_names() -> dict[str, str]:
    """mergekit method name → our method name, from the registry."""
    return {m.mergekit_name: m.name for m in list_methods() if m.mergekit_name}


def _notes(config: MergeSpec, kw: Mapping[str, Any]) -> list[str]:
    """Where mergekit's semantics differ: the method's own notes, then per-layer weights."""
    mk = config.spec.mergekit
    notes = list(mk.notes(kw)) if mk and mk.notes else []
    if config.has_layer_weights:
        notes.append("per-layer coefficients are written as per-filter 'weight' conditions (first matching filter "
                     "wins, substring match; checked against every tensor name of the base model).")
    return notes


def _params_by_mergekit_name(method) -> tuple[dict[str, Any], dict[str, Any]]:
    """(per-task parameters, global parameters) of a method by their mergekit name."""
    per = {p.mergekit_name: p for p in method.per_model_params if p.mergekit_name}
    glob = {p.mergekit_name: p for p in method.global_params if p.mergekit_name}
    return per, glob


def no_equivalent_message(method: str) -> str:
    m = get_method(method)
    return (f"merge method '{m.name}' ({m.label}) has no mergekit equivalent: mergekit cannot reproduce it, so no "
            "mergekit YAML is written; keep the sammerge config (JSON/YAML) or the merged safetensors instead")


def mergekit_unavailable(config: MergeSpec) -> str | None:
    """Why no mergekit YAML can be written for ``config`` (None: it can): a method without an equivalent, or
    checkpoints stored as task vectors (mergekit reads full models)."""
    if get_method(config.method).mergekit is None:
        return no_equivalent_message(config.method)
    stored = [f"{t.task}/{t.variant}" for t in config.tasks if t.stored == "task_vector"]
    if stored:
        return (f"the checkpoints of {', '.join(stored)} are stored as task vectors τ = θ_t − θ0 (a zoo that ships "
                "small), and mergekit reads full models: no mergekit YAML is written; keep the sammerge config "
                "(JSON/YAML) or the merged safetensors instead")
    return None


def to_mergekit_yaml(config: MergeSpec, root_dir: str | os.PathLike | None = None) -> str:
    """mergekit-compatible YAML (runnable with ``mergekit-pytorch`` on the same safetensors files).

    Everything method-specific comes from the method's :class:`~sammerge.merging.registry.Mergekit` declaration:
    its name, which parameters go under each model and which at the top, fixed values, the base model, notes.
    Paths are written absolute. Comments at the top state provenance and where the semantics differ.
    A method without a mergekit equivalent, or checkpoints stored as task vectors → ConfigError saying so.
    """
    method = config.spec
    mk = method.mergekit
    problem = mergekit_unavailable(config)
    if problem:
        raise ConfigError(problem)
    kw = config.method_kwargs
    per, glob = _params_by_mergekit_name(method)
    base = str(config.resolve_path(config.base_model, root_dir))
    keys = _base_keys(base) if config.has_layer_weights else []
    models = []
    for t in config.tasks:
        params: dict[str, Any] = {}
        for key in mk.model_keys:
            value = t.value(per[key].name) if key in per else None
            if value is None and key in glob:
                value = kw[glob[key].name]
            if value is None:
                value = mk.model_defaults.get(key)
            if value is None:
                continue
            params[key] = layer_weight_conditions(keys, float(value), t.layer_weights) \
                if key == "weight" and t.layer_weights else _plain(value)
        models.append({"model": str(config.resolve_path(t.checkpoint, root_dir)), "parameters": params})
    top = {key: _plain(kw[p.name]) for key, p in glob.items() if key not in mk.model_keys}
    top.update(mk.fixed)
    doc: dict[str, Any] = {"merge_method": mk.name}
    if mk.base == "theta0":
        doc["base_model"] = base
    elif mk.base == "first_model":
        doc["base_model"] = models[0]["model"]
    doc["models"] = models
    if top:
        doc["parameters"] = top
    doc["dtype"] = "float32"
    header = [
        f"# mergekit configuration exported by sammerge {library_version()} on {now()}",
        f"# sammerge method: {config.method} ({method.label}); "
        f"params: {json.dumps({k: v for k, v in kw.items() if k not in {p.name for p in method.per_model_params}})}",
        f"# base model: {base} (sha256 {config.base_sha256 or 'not recorded'})",
    ]
    if config.zoo:
        header.append(f"# zoo: {config.zoo}")
    for t in config.tasks:
        header.append(f"# task {t.task} / variant {t.variant}: sha256 {t.sha256 or 'not recorded'}")
    header.append("# Run: mergekit-pytorch THIS_FILE OUT_DIR")
    for note in _notes(config, kw):
        header.append("# NOTE: " + note)
    return "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False)


def _plain(value: Any) -> Any:
    """A YAML-friendly scalar: bools and strings as they are, numbers as float (int kept)."""
    if isinstance(value, (bool, str, int)):
        return value
    return float(value)


_MK_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype"}


def is_mergekit_config(data: Any) -> bool:
    """True for a mergekit-style mapping (``merge_method`` / ``models``), False for ours."""
    return isinstance(data, Mapping) and ("merge_method" in data or "models" in data) and "method" not in data


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, (list, dict)):
        raise ConfigError(f"mergekit config: '{where}': gradients / per-tensor filters are not supported "
                          "(give one number)")
    return value


def _number(value: Any, where: str) -> float:
    value = _scalar(value, where)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"mergekit config: '{where}' must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"mergekit config: '{where}' is {value} (must be finite)")
    return value


def _task_name(path: str) -> tuple[str, str]:
    stem = Path(path).name
    for suffix in (".safetensors", ".bin", ".pt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    if "__" in stem:
        task, variant = stem.split("__", 1)
        return task or stem, variant or "plain"
    return stem or "model", "plain"


def _top_value(p, value: Any, where: str) -> Any:
    """A top-level mergekit value for our global parameter ``p`` (range-checked by the spec)."""
    value = _scalar(value, where)
    if p.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"mergekit config: '{where}' must be true or false, got {value!r}")
        return value
    if p.kind == "choice":
        return value
    return _number(value, where)


def from_mergekit_yaml(text_or_dict: str | Mapping[str, Any], root_dir: str | os.PathLike | None = None
                       ) -> MergeSpec:
    """Read a mergekit-style config (method and parameter names with mergekit's meaning) into a MergeSpec.

    Every method that declares a mergekit equivalent is read (``sammerge methods`` lists them), through its
    :class:`~sammerge.merging.registry.Mergekit` declaration: per-model keys (e.g. ``weight``, ``density``,
    ``gamma``; top-level values of these are defaults for every model), top-level parameters by their mergekit name
    (``lambda``, ``normalize``, ...), fixed values (e.g. DARE's ``rescale: true``), ``int8_mask`` (ignored).
    mergekit's defaults apply to what a config leaves out (``weight`` 1, ``density`` 1, ...). Unknown method or
    parameter → ConfigError.
    """
    data = safe_yaml(text_or_dict, "mergekit config") if isinstance(text_or_dict, str) else text_or_dict
    if not isinstance(data, Mapping):
        raise ConfigError(f"mergekit config: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in _MK_TOP_KEYS:
            raise ConfigError(f"mergekit config: unsupported key '{key}' (supported: {', '.join(sorted(_MK_TOP_KEYS))})")
    mk_method = data.get("merge_method")
    if mk_method not in mergekit_names():
        raise ConfigError(f"mergekit config: unknown or unsupported merge_method {mk_method!r} "
                          f"(supported: {', '.join(mergekit_names())})")
    ours = mergekit_names()[mk_method]
    method = get_method(ours)
    mk = method.mergekit
    per, glob = _params_by_mergekit_name(method)
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError("mergekit config: 'models' must be a non-empty list")
    top = data.get("parameters") or {}
    if not isinstance(top, Mapping):
        raise ConfigError("mergekit config: 'parameters' must be a mapping")
    per_model_allowed = set(mk.model_keys)
    top_params = {k: p for k, p in glob.items() if k not in per_model_allowed}
    global_allowed = {"int8_mask"} | set(mk.fixed) | set(top_params)
    for key in top:
        if key not in global_allowed | per_model_allowed:
            raise ConfigError(f"mergekit config: unknown parameter '{key}' for merge_method '{mk_method}' "
                              f"(known: {', '.join(sorted(global_allowed | per_model_allowed))})")
    root = Path(root_dir) if root_dir is not None else Path.cwd()

    def resolve(p: Any, where: str) -> str:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"mergekit config: '{where}' must be a path to a .safetensors file")
        path = Path(os.path.expanduser(p))
        if not path.is_absolute():
            path = root / path
        if path.is_dir() and (path / "model.safetensors").is_file():
            path = path / "model.safetensors"
        return str(path.absolute())

    base = data.get("base_model")
    entries = []
    for i, m in enumerate(models):
        if isinstance(m, str):
            m = {"model": m}
        if not isinstance(m, Mapping) or "model" not in m:
            raise ConfigError(f"mergekit config: 'models[{i}]' must be a mapping with a 'model' path")
        for key in m:
            if key not in ("model", "parameters"):
                raise ConfigError(f"mergekit config: unknown key '{key}' in models[{i}]")
        params = m.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"mergekit config: 'models[{i}].parameters' must be a mapping")
        for key in params:
            if key not in per_model_allowed:
                raise ConfigError(f"mergekit config: unknown parameter '{key}' in models[{i}].parameters for "
                                  f"merge_method '{mk_method}' (known: {', '.join(sorted(per_model_allowed)) or 'none'})")
        merged = {k: top[k] for k in per_model_allowed if k in top}
        merged.update(params)
        entries.append((resolve(m["model"], f"models[{i}].model"), merged, i))

    base_path = resolve(base, "base_model") if base is not None else None
    if mk.base == "none":
        if base_path is None:
            base_path = entries[0][0]  # mergekit combines the listed models: the result does not depend on θ0
    elif base_path is None:
        raise ConfigError(f"mergekit config: merge_method '{mk_method}' needs 'base_model'")
    elif mk.base == "first_model":  # mergekit's base is the first of the models (τ = 0 from our θ0 = that model)
        others = [e for e in entries if e[0] != base_path]
        entries = [(base_path, next((e[1] for e in entries if e[0] == base_path), {}), -1), *others]
    else:
        entries = [e for e in entries if e[0] != base_path]  # the base is not a task
        if not entries:
            raise ConfigError("mergekit config: no models besides the base model (empty task set)")

    for key, value in mk.fixed.items():
        if key in top and mk.check_import is None and _scalar(top[key], f"parameters.{key}") != value:
            raise ConfigError(f"mergekit config: 'parameters.{key}: {json.dumps(top[key])}' is not supported "
                              f"(sammerge's {ours} always means {key}: {json.dumps(value)})")
    if "int8_mask" in top and not isinstance(top["int8_mask"], bool):
        raise ConfigError("mergekit config: 'parameters.int8_mask' must be true or false")
    params_out = {p.name: _top_value(p, top[key], f"parameters.{key}") for key, p in top_params.items() if key in top}

    def where(i: int, key: str) -> str:
        return f"models[{i}].parameters.{key}" if i >= 0 else f"base_model parameters.{key}"

    tasks, seen = [], {}
    per_key_values: dict[str, list[float]] = {k: [] for k in per_model_allowed}
    for path, p, i in entries:
        task, variant = _task_name(path)
        n = seen.get((task, variant), 0)
        seen[(task, variant)] = n + 1
        if n:
            task = f"{task}_{n + 1}"
        entry: dict[str, Any] = {"task": task, "variant": variant, "checkpoint": path}
        for key in mk.model_keys:
            raw = p.get(key, mk.model_defaults.get(key))
            if raw is None:
                continue
            if key == "weight" and method.supports_layer_weights and isinstance(raw, list) and raw \
                    and all(isinstance(c, Mapping) for c in raw) and base_path:
                entry["layer_weights"] = _filtered_weight(raw, _base_keys(base_path), where(i, key))
                raw = 1.0
            per_key_values[key].append(_number(raw, where(i, key)))
        tasks.append(entry)
    for key, values in per_key_values.items():
        if not values:
            continue
        if key in per and not (key in glob and len(set(values)) == 1):
            name = per[key].name
            for entry, v in zip(tasks, values):
                if name == "weights":
                    entry["weight"] = v
                elif name == "densities":
                    entry["density"] = v
                else:
                    entry.setdefault("params", {})[name] = v
            if key in glob:
                params_out[glob[key].name] = max(values)
        elif key in glob:
            if len(set(values)) > 1:
                raise ConfigError(f"mergekit config: different '{key}' per model is not supported (use one value)")
            params_out[glob[key].name] = values[0]
    if mk.check_import is not None:
        mk.check_import(top, per_key_values.get("weight") or [1.0] * len(tasks))
    cfg = {"method": ours, "params": params_out, "tasks": tasks, "base_model": base_path,
           "notes": f"imported from mergekit config (merge_method: {mk_method})"}
    try:
        return MergeSpec.from_dict(cfg, root_dir=root)
    except ConfigError as exc:
        raise ConfigError(f"mergekit config: {exc}") from None


def load_any_config(path: str | os.PathLike) -> MergeSpec:
    """Load our JSON/YAML config or a mergekit YAML (detected by its keys)."""
    path = Path(path)
    text = read_text(path)
    if path.suffix.lower() == ".json":
        return MergeSpec.load(path)
    try:
        return config_from_text(text, str(path), root_dir=path.parent, json_first=False)
    except ConfigError as exc:
        raise ConfigError(str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}") from None


def config_from_text(text: str, what: str = "configuration", root_dir=None, json_first: bool = True) -> MergeSpec:
    """Our config (JSON or YAML) or a mergekit YAML (detected by its keys) from text; ConfigError naming the problem
    (the app's import box and ``sammerge merge`` read configs through here)."""
    try:
        data = json.loads(text) if json_first else safe_yaml(text, what)
    except json.JSONDecodeError:
        data = safe_yaml(text, what)
    if is_mergekit_config(data):
        return from_mergekit_yaml(data, root_dir=root_dir)
    return MergeSpec.from_dict(data, root_dir=root_dir)
