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
from sammerge.merging.spec import MergeSpec, library_version, now, read_text, safe_yaml

__all__ = ["to_mergekit_yaml", "from_mergekit_yaml", "is_mergekit_config", "load_any_config", "mergekit_names",
           "layer_weight_conditions"]


def mergekit_names() -> dict[str, str]:
    """mergekit method name → our method name, from the registry."""
    return {m.mergekit_name: m.name for m in list_methods() if m.mergekit_name}


def _differences(config: MergeSpec, kw: Mapping[str, Any]) -> list[str]:
    m = config.method
    notes: list[str] = []
    if m == "weight_average":
        notes.append("weight_average is exported as mergekit 'linear' over the fine-tuned models "
                     "(sum w_t theta_t / sum w_t); identical weights.")
    if m == "task_arithmetic":
        notes.append("task_arithmetic: same formula as mergekit (base + lambda * sum w_t tau_t [/ sum w_t]); "
                     "identical weights up to float rounding.")
    if m == "ties":
        if kw.get("trim_scope") == "model":
            notes.append("SEMANTICS DIFFER: sammerge trimmed over the whole flattened task vector "
                         "(trim_scope: model, original TIES); mergekit trims each tensor separately, "
                         "so mergekit will NOT reproduce these weights.")
        else:
            notes.append("ties: per-tensor trim keeping max(1, int(density*n)) entries, weights applied before the "
                         "sign vote (mergekit 0.1.5 semantics); entries tied at the trim threshold may be "
                         "broken differently (sammerge: lowest index first).")
    if m in ("dare_linear", "dare_ties"):
        notes.append(f"SEMANTICS DIFFER: DARE drop masks use sammerge's per-(seed, task, tensor) generator "
                     f"(seed {kw.get('seed')}); mergekit draws from torch's global RNG and (0.1.5, rescale: true) "
                     "rescales survivors to the original L1 norm instead of by 1/density, so weights agree only "
                     "in expectation.")
    if m == "breadcrumbs":
        notes.append("SEMANTICS MAY DIFFER: breadcrumbs keeps ranks [int(gamma*n), int(gamma*n)+int(density*n)) "
                     "by |value| per tensor (mergekit 0.1.5 magnitude_outliers); ties at the thresholds may be "
                     "broken differently.")
    if m == "ties" and kw.get("vote") == "unweighted":
        notes.append("SEMANTICS DIFFER: vote: unweighted (AdaMerging++ TIES parts) elects the sign from the unweighted "
                     "trimmed task vectors; mergekit's ties votes with the weights applied, so mergekit reproduces "
                     "these weights only where every task has the same weight on a tensor.")
    if config.has_layer_weights:
        notes.append("per-layer coefficients are written as per-filter 'weight' conditions (first matching filter "
                     "wins, substring match; checked against every tensor name of the base model).")
    if m == "model_stock":
        notes.append("model_stock: same per-tensor formula as mergekit (filter_wise: false); mergekit needs at "
                     "least 2 fine-tuned models.")
    return notes


def to_mergekit_yaml(config: MergeSpec, root_dir: str | os.PathLike | None = None) -> str:
    """mergekit-compatible YAML (runnable with ``mergekit-pytorch`` on the same safetensors files).

    Paths are written absolute. Every model gets a ``parameters:`` mapping. Comments at the top state
    provenance and where sammerge's semantics differ from mergekit's.
    """
    kw = config.method_kwargs
    mk_method = get_method(config.method).mergekit_name
    base = str(config.resolve_path(config.base_model, root_dir))
    models = []
    keys = _base_keys(base) if config.has_layer_weights else []
    for i, t in enumerate(config.tasks):
        params: dict[str, Any] = {}
        if config.method != "model_stock":  # model_stock has no per-model weight
            params["weight"] = float(t.weight) if not t.layer_weights else \
                layer_weight_conditions(keys, float(t.weight), t.layer_weights)
        if "density" in kw:
            params["density"] = float(t.density if t.density is not None else kw["density"])
        if "gamma" in kw:
            params["gamma"] = float(kw["gamma"])
        models.append({"model": str(config.resolve_path(t.checkpoint, root_dir)), "parameters": params})
    top: dict[str, Any] = {}
    if config.method == "weight_average":
        top["normalize"] = True
    else:
        if "lambda" in kw:
            top["lambda"] = float(kw["lambda"])
        if "normalize" in kw:
            top["normalize"] = bool(kw["normalize"])
        if config.method in ("dare_linear", "dare_ties"):
            top["rescale"] = True
    doc: dict[str, Any] = {"merge_method": mk_method}
    if config.method != "weight_average":
        doc["base_model"] = base
    doc["models"] = models
    if top:
        doc["parameters"] = top
    doc["dtype"] = "float32"
    header = [
        f"# mergekit configuration exported by sammerge {library_version()} on {now()}",
        f"# sammerge method: {config.method} ({get_method(config.method).label}); "
        f"params: {json.dumps({k: v for k, v in kw.items() if k not in ('weights', 'densities')})}",
        f"# base model: {base} (sha256 {config.base_sha256 or 'not recorded'})",
    ]
    if config.zoo:
        header.append(f"# zoo: {config.zoo}")
    for t in config.tasks:
        header.append(f"# task {t.task} / variant {t.variant}: sha256 {t.sha256 or 'not recorded'}")
    header.append("# Run: mergekit-pytorch THIS_FILE OUT_DIR")
    for note in _differences(config, kw):
        header.append("# NOTE: " + note)
    return "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False)


_MK_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype"}


def is_mergekit_config(data: Any) -> bool:
    """True for a mergekit-style mapping (``merge_method`` / ``models``), False for ours."""
    return isinstance(data, Mapping) and ("merge_method" in data or "models" in data) and "method" not in data


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
        _number(c["value"], where)
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


def from_mergekit_yaml(text_or_dict: str | Mapping[str, Any], root_dir: str | os.PathLike | None = None
                       ) -> MergeSpec:
    """Read a mergekit-style config (method and parameter names with mergekit's meaning) into a MergeSpec.

    Supported: ``linear`` (→ weight_average), ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``,
    ``breadcrumbs``, ``model_stock``; per-model ``weight``, ``density``, ``gamma``; top-level ``lambda``,
    ``normalize``, ``rescale`` (true only), ``int8_mask`` (ignored), and top-level ``weight``/``density``/``gamma``
    as defaults for every model. mergekit defaults apply: ``weight`` 1, ``density`` 1, ``lambda`` 1,
    ``normalize`` per method. Unknown method/parameter → ConfigError.
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
    models = data.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError("mergekit config: 'models' must be a non-empty list")
    top = data.get("parameters") or {}
    if not isinstance(top, Mapping):
        raise ConfigError("mergekit config: 'parameters' must be a mapping")
    method_param_names = {p.name for p in method.params}
    per_model_allowed = {"weight"} if "weights" in method_param_names else set()
    if "densities" in method_param_names:
        per_model_allowed.add("density")
    if "gamma" in method_param_names:
        per_model_allowed.add("gamma")
    global_allowed = {"int8_mask"} | ({"normalize"} if "normalize" in method_param_names or ours == "weight_average"
                                      else set())
    if "lambda" in method_param_names:
        global_allowed.add("lambda")
    if ours in ("dare_linear", "dare_ties"):
        global_allowed.add("rescale")
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
    if ours == "weight_average":
        # mergekit linear: sum w_i theta_i / sum w_i over the listed models (base only if listed).
        normalize = _scalar(top.get("normalize", True), "parameters.normalize")
        weights = [_number(p.get("weight", 1.0), f"models[{i}].parameters.weight") for _, p, i in entries]
        if normalize is not True and abs(sum(weights) - 1.0) > 1e-9:
            raise ConfigError("mergekit config: linear with normalize: false is only supported when the weights "
                              "sum to 1")
        if abs(sum(weights)) < 1e-8:
            raise ConfigError("mergekit config: linear weights sum to 0")
        if base_path is None:
            base_path = entries[0][0]  # result does not depend on the reference point
    elif base_path is None:
        raise ConfigError(f"mergekit config: merge_method '{mk_method}' needs 'base_model'")
    else:
        entries = [e for e in entries if e[0] != base_path]  # the base is not a task
        if not entries:
            raise ConfigError("mergekit config: no models besides the base model (empty task set)")

    params_out: dict[str, Any] = {}
    if "lambda" in top:
        params_out["lambda"] = _number(top["lambda"], "parameters.lambda")
    if "normalize" in top and ours != "weight_average":
        v = _scalar(top["normalize"], "parameters.normalize")
        if not isinstance(v, bool):
            raise ConfigError(f"mergekit config: 'parameters.normalize' must be true or false, got {v!r}")
        params_out["normalize"] = v
    if "rescale" in top and _scalar(top["rescale"], "parameters.rescale") is not True:
        raise ConfigError("mergekit config: 'parameters.rescale: false' is not supported (DARE always rescales)")
    if "int8_mask" in top and not isinstance(top["int8_mask"], bool):
        raise ConfigError("mergekit config: 'parameters.int8_mask' must be true or false")

    tasks, seen = [], {}
    densities, gammas = [], set()
    for path, p, i in entries:
        task, variant = _task_name(path)
        n = seen.get((task, variant), 0)
        seen[(task, variant)] = n + 1
        if n:
            task = f"{task}_{n + 1}"
        raw_weight = p.get("weight", 1.0)
        layer_w = _filtered_weight(raw_weight, _base_keys(base_path), f"models[{i}].parameters.weight") \
            if isinstance(raw_weight, list) and raw_weight and all(isinstance(c, Mapping) for c in raw_weight) \
            and "weights" in method_param_names and base_path else None
        weight = 1.0 if layer_w is not None else _number(raw_weight, f"models[{i}].parameters.weight")
        entry: dict[str, Any] = {"task": task, "variant": variant, "weight": weight, "checkpoint": path}
        if layer_w is not None:
            entry["layer_weights"] = layer_w
        if "density" in per_model_allowed:
            densities.append(_number(p.get("density", 1.0), f"models[{i}].parameters.density"))
        if "gamma" in per_model_allowed:
            gammas.add(_number(p.get("gamma", 0.01), f"models[{i}].parameters.gamma"))
        tasks.append(entry)
    if densities:
        if len(set(densities)) == 1:
            params_out["density"] = densities[0]
        else:
            params_out["density"] = max(densities)
            for entry, d in zip(tasks, densities):
                entry["density"] = d
        for d in densities:
            if not 0.0 < d <= 1.0:
                raise ConfigError(f"mergekit config: density {d} is outside (0, 1]")
    if gammas:
        if len(gammas) > 1:
            raise ConfigError("mergekit config: different 'gamma' per model is not supported (use one value)")
        params_out["gamma"] = gammas.pop()
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
    data = safe_yaml(text, str(path))
    if is_mergekit_config(data):
        try:
            return from_mergekit_yaml(data, root_dir=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    try:
        return MergeSpec.from_dict(data, root_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


