"""Merge configurations as data (pydantic v2): JSON/YAML I/O, provenance, mergekit interchange.

``MergeConfig`` records *what* to merge (base model + one checkpoint per task, with sha256), *how*
(method name from :data:`sammerge.merge.MERGE_METHODS` + its global parameters; per-task ``weight`` and
optional ``density``) and provenance (zoo, library version, creation time, optional measured results).

Relative checkpoint paths are resolved against ``root_dir`` (the directory of the config file when it
was loaded with :meth:`MergeConfig.load`, else the current directory).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from sammerge.errors import CheckpointError, ConfigError, SammergeError
from sammerge.io import atomic_write_text, load_state_dict, sha256_file
from sammerge.merging import check_compatible, get_method

__all__ = ["TaskEntry", "MergeConfig", "library_version", "method_kwargs", "to_mergekit_yaml",
           "from_mergekit_yaml", "is_mergekit_config", "load_any_config", "resolve_and_merge",
           "OURS_TO_MERGEKIT", "MERGEKIT_TO_OURS"]

OURS_TO_MERGEKIT = {"weight_average": "linear", "task_arithmetic": "task_arithmetic", "ties": "ties",
                    "dare_linear": "dare_linear", "dare_ties": "dare_ties", "breadcrumbs": "breadcrumbs",
                    "model_stock": "model_stock"}
MERGEKIT_TO_OURS = {v: k for k, v in OURS_TO_MERGEKIT.items()}


def library_version() -> str:
    """``sammerge.__version__`` (the installed distribution's version, or 0.1.0 from a bare source tree)."""
    from sammerge import __version__
    return str(__version__)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _first_error(exc: ValidationError, prefix: str = "merge config") -> ConfigError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
    msg = err.get("msg", "invalid value")
    inp = err.get("input")
    shown = "" if isinstance(inp, (dict, list)) else f" (got {inp!r})"
    return ConfigError(f"{prefix}: field '{loc}': {msg}{shown}")


class TaskEntry(BaseModel):
    """One input model: a task, the fine-tuned variant used for it, its coefficient and checkpoint."""
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1)
    variant: str = "plain"
    weight: float = 1.0
    density: float | None = None
    checkpoint: str = Field(min_length=1)
    sha256: str | None = None

    @field_validator("weight")
    @classmethod
    def _finite_weight(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("weight must be finite")
        return v

    @field_validator("density")
    @classmethod
    def _density_range(cls, v: float | None) -> float | None:
        if v is not None and not (0.0 < v <= 1.0):
            raise ValueError("density must be in (0, 1]")
        return v


class MergeConfig(BaseModel):
    """A complete, reproducible merge recipe plus provenance."""
    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    tasks: list[TaskEntry] = Field(min_length=1)
    base_model: str = Field(min_length=1)
    base_sha256: str | None = None
    zoo: str | None = None
    library_version: str = Field(default_factory=library_version)
    created: str = Field(default_factory=_now)
    results: dict[str, dict[str, float]] | None = None
    notes: str | None = None

    _root_dir: Path | None = PrivateAttr(default=None)

    # -- validation -----------------------------------------------------------------------------
    def model_post_init(self, __context: Any) -> None:
        method = get_method(self.method)  # ConfigError listing known methods
        for name in self.params:
            if name in {p.name for p in method.per_model_params}:
                field = "weight" if name == "weights" else "density" if name == "densities" else name
                raise ConfigError(f"merge config: parameter '{name}' is per task: set tasks[].{field} instead")
        method.validate_params(self.params)
        per_model = {p.name for p in method.per_model_params}
        for i, t in enumerate(self.tasks):
            if t.density is not None and "densities" not in per_model:
                raise ConfigError(f"merge config: field 'tasks.{i}.density' is not used by method '{self.method}'")
            if t.weight != 1.0 and "weights" not in per_model:
                raise ConfigError(f"merge config: field 'tasks.{i}.weight' is not used by method '{self.method}' "
                                  "(must be 1)")
        names = [f"{t.task}/{t.variant}" for t in self.tasks]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ConfigError(f"merge config: field 'tasks': '{dup}' appears twice")
        method_kwargs(self)  # cross-parameter checks (e.g. breadcrumbs density + gamma)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], root_dir: str | os.PathLike | None = None) -> "MergeConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"merge config: expected a mapping, got {type(data).__name__}")
        try:
            cfg = cls.model_validate(dict(data))
        except ValidationError as exc:
            raise _first_error(exc) from None
        cfg._root_dir = Path(root_dir) if root_dir is not None else None
        return cfg

    # -- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_json(cls, text: str, root_dir: str | os.PathLike | None = None) -> "MergeConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"merge config: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return cls.from_dict(data, root_dir)

    @classmethod
    def from_yaml(cls, text: str, root_dir: str | os.PathLike | None = None) -> "MergeConfig":
        return cls.from_dict(_safe_yaml(text, "merge config"), root_dir)

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON (``.json``) or YAML (``.yaml``/``.yml``) atomically."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            atomic_write_text(path, self.to_json())
        elif suffix in (".yaml", ".yml"):
            atomic_write_text(path, self.to_yaml())
        else:
            raise ConfigError(f"{path}: unsupported config suffix '{suffix}' (use .json, .yaml or .yml)")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MergeConfig":
        path = Path(path)
        text = _read_text(path)
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                return cls.from_json(text, root_dir=path.parent)
            if suffix in (".yaml", ".yml"):
                return cls.from_yaml(text, root_dir=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        raise ConfigError(f"{path}: unsupported config suffix '{suffix}' (use .json, .yaml or .yml)")

    # -- paths ---------------------------------------------------------------------------------
    @property
    def root_dir(self) -> Path:
        return self._root_dir if self._root_dir is not None else Path.cwd()

    def resolve_path(self, p: str, root_dir: str | os.PathLike | None = None) -> Path:
        path = Path(os.path.expanduser(p))
        if not path.is_absolute():
            path = Path(root_dir) / path if root_dir is not None else self.root_dir / path
        return path.absolute()

    @property
    def task_ids(self) -> list[str]:
        return [f"{t.task}/{t.variant}" for t in self.tasks]


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None


def _safe_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def method_kwargs(config: MergeConfig) -> dict[str, Any]:
    """Full validated keyword arguments for the method: global params + per-task weights/densities."""
    method = get_method(config.method)
    params = dict(config.params)
    per_model = {p.name for p in method.per_model_params}
    if "weights" in per_model:
        params["weights"] = [t.weight for t in config.tasks]
    if "densities" in per_model and any(t.density is not None for t in config.tasks):
        params["densities"] = [t.density for t in config.tasks]
    try:
        return method.validate_params(params, n_tasks=len(config.tasks))
    except ConfigError as exc:
        raise ConfigError(f"merge config: {exc}") from None


# ----------------------------------------------------------------------------------------------
# mergekit interchange
# ----------------------------------------------------------------------------------------------

def _differences(config: MergeConfig, kw: Mapping[str, Any]) -> list[str]:
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
    if m == "model_stock":
        notes.append("model_stock: same per-tensor formula as mergekit (filter_wise: false); mergekit needs at "
                     "least 2 fine-tuned models.")
    return notes


def to_mergekit_yaml(config: MergeConfig, root_dir: str | os.PathLike | None = None) -> str:
    """mergekit-compatible YAML (runnable with ``mergekit-pytorch`` on the same safetensors files).

    Paths are written absolute. Every model gets a ``parameters:`` mapping. Comments at the top state
    provenance and where sammerge's semantics differ from mergekit's.
    """
    kw = method_kwargs(config)
    mk_method = OURS_TO_MERGEKIT[config.method]
    base = str(config.resolve_path(config.base_model, root_dir))
    models = []
    for i, t in enumerate(config.tasks):
        params: dict[str, Any] = {}
        if config.method != "model_stock":  # model_stock has no per-model weight
            params["weight"] = float(t.weight)
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
        f"# mergekit configuration exported by sammerge {library_version()} on {_now()}",
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
                       ) -> MergeConfig:
    """Read a mergekit-style config (method and parameter names with mergekit's meaning) into a MergeConfig.

    Supported: ``linear`` (→ weight_average), ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``,
    ``breadcrumbs``, ``model_stock``; per-model ``weight``, ``density``, ``gamma``; top-level ``lambda``,
    ``normalize``, ``rescale`` (true only), ``int8_mask`` (ignored), and top-level ``weight``/``density``/``gamma``
    as defaults for every model. mergekit defaults apply: ``weight`` 1, ``density`` 1, ``lambda`` 1,
    ``normalize`` per method. Unknown method/parameter → ConfigError.
    """
    data = _safe_yaml(text_or_dict, "mergekit config") if isinstance(text_or_dict, str) else text_or_dict
    if not isinstance(data, Mapping):
        raise ConfigError(f"mergekit config: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in _MK_TOP_KEYS:
            raise ConfigError(f"mergekit config: unsupported key '{key}' (supported: {', '.join(sorted(_MK_TOP_KEYS))})")
    mk_method = data.get("merge_method")
    if mk_method not in MERGEKIT_TO_OURS:
        raise ConfigError(f"mergekit config: unknown or unsupported merge_method {mk_method!r} "
                          f"(supported: {', '.join(MERGEKIT_TO_OURS)})")
    ours = MERGEKIT_TO_OURS[mk_method]
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
        weight = _number(p.get("weight", 1.0), f"models[{i}].parameters.weight")
        entry: dict[str, Any] = {"task": task, "variant": variant, "weight": weight, "checkpoint": path}
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
        return MergeConfig.from_dict(cfg, root_dir=root)
    except ConfigError as exc:
        raise ConfigError(f"mergekit config: {exc}") from None


def load_any_config(path: str | os.PathLike) -> MergeConfig:
    """Load our JSON/YAML config or a mergekit YAML (detected by its keys)."""
    path = Path(path)
    text = _read_text(path)
    if path.suffix.lower() == ".json":
        return MergeConfig.load(path)
    data = _safe_yaml(text, str(path))
    if is_mergekit_config(data):
        try:
            return from_mergekit_yaml(data, root_dir=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    try:
        return MergeConfig.from_dict(data, root_dir=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ----------------------------------------------------------------------------------------------
# resolve and merge
# ----------------------------------------------------------------------------------------------

def _load_checked(path: Path, sha: str | None) -> tuple[dict[str, torch.Tensor], str]:
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    actual = sha256_file(path) if path.is_file() else None
    if sha is not None and actual is not None and actual != sha:
        raise CheckpointError(f"{path}: sha256 mismatch (expected {sha[:12]}…, got {actual[:12]}…)")
    sd = load_state_dict(path)  # existence / format / NaN-Inf checks (CheckpointError)
    return sd, actual or ""


def resolve_and_merge(config: MergeConfig, root_dir: str | os.PathLike | None = None
                      ) -> tuple[dict[str, torch.Tensor], MergeConfig]:
    """Load base + task checkpoints (verifying sha256 when recorded), check them, run the method.

    Returns ``(merged_state_dict, resolved_config)``; the resolved config has absolute paths, sha256 of
    every file, every global parameter (defaults filled in), the current library version and time.
    Nothing is written. Missing files → CheckpointError naming the path; incompatible tensors → MergeError.
    """
    method = get_method(config.method)
    kwargs = method_kwargs(config)
    base_path = config.resolve_path(config.base_model, root_dir)
    paths = [config.resolve_path(t.checkpoint, root_dir) for t in config.tasks]
    for p in [base_path, *paths]:
        if not p.exists():
            raise CheckpointError(f"{p}: file not found")
    base, base_sha = _load_checked(base_path, config.base_sha256)
    finetuned, shas = [], []
    for t, p in zip(config.tasks, paths):
        sd, sha = _load_checked(p, t.sha256)
        finetuned.append(sd)
        shas.append(sha)
    check_compatible([base, *finetuned], [str(base_path), *map(str, paths)])
    tvs = [{k: ft[k].float() - v.float() for k, v in base.items() if v.is_floating_point()} for ft in finetuned]
    merged = method(base, tvs, task_ids=config.task_ids, validate=False, **kwargs)
    global_names = {p.name for p in method.global_params}
    resolved = config.model_copy(update={
        "params": {k: v for k, v in kwargs.items() if k in global_names},
        "tasks": [t.model_copy(update={"checkpoint": str(p), "sha256": s})
                  for t, p, s in zip(config.tasks, paths, shas)],
        "base_model": str(base_path), "base_sha256": base_sha,
        "library_version": library_version(), "created": _now(),
    }, deep=True)
    resolved._root_dir = None
    # re-validate the resolved config (cheap; guards model_copy which skips validation)
    try:
        resolved = MergeConfig.from_dict(resolved.to_dict())
    except SammergeError:
        raise
    return merged, resolved
