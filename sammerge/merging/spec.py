"""One merge as data: :class:`MergeSpec` — validated once, shared by the CLI, the app, URLs, files and mergekit.

A spec says *what* to merge (one :class:`TaskEntry` per task: task, fine-tuning variant, per-task weight λ_t,
optional per-layer multipliers ``layer_weights`` {layer group: s} (λ_{t,g} = λ_t · s_{t,g}, groups from
:mod:`sammerge.merging.layers`), optional density, checkpoint file and sha256; the base model θ0), *how* (a method of the registry and its
global parameters, complete with defaults) and where it came from (zoo, library version, time, results).

Construction validates everything once (method, parameter names, types, ranges, per-task fields, cross-parameter
rules); afterwards :attr:`MergeSpec.method_kwargs` is the exact call of the method. Round trips:
JSON / YAML (:meth:`MergeSpec.to_json`, :meth:`MergeSpec.load`), URL query (:meth:`MergeSpec.to_query` /
:meth:`MergeSpec.from_query`) and mergekit YAML (:mod:`sammerge.merging.mergekit`).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from sammerge.errors import ConfigError
from sammerge.io import atomic_write_text
from sammerge.merging.registry import MergeMethod, ParamSpec, get_method

__all__ = ["TaskEntry", "MergeSpec", "fit_task_count", "library_version", "task_id", "LAMBDA", "WEIGHTS", "DENSITIES",
           "DEFAULT_METHOD", "DEFAULT_LAMBDA", "read_text", "safe_yaml", "now"]

# parameter names with a meaning outside their method (sliders, URLs, mergekit); everyone uses these names
LAMBDA, WEIGHTS, DENSITIES = "lambda", "weights", "densities"
TASK_FIELDS = {WEIGHTS: "weight", DENSITIES: "density"}  # per-task parameters with a field of their own in TaskEntry
DEFAULT_METHOD = "task_arithmetic"
DEFAULT_LAMBDA = 0.3  # a usual starting point for task arithmetic over several tasks (Ilharco et al. use 0.3–0.4)


def library_version() -> str:
    """``sammerge.__version__`` (the installed distribution's version, or 0.1.0 from a bare source tree)."""
    from sammerge import __version__
    return str(__version__)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def task_id(task: str, variant: str) -> str:
    """``task/variant``: identifies a checkpoint (seeds DARE masks, names spec entries)."""
    return f"{task}/{variant}"


def _first_error(exc: ValidationError, prefix: str = "merge config") -> ConfigError:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        inp = err.get("input")
        shown = "" if isinstance(inp, (dict, list)) else f" (got {inp!r})"
        problems.append(f"field '{loc}': {err.get('msg', 'invalid value')}{shown}")
    return ConfigError(f"{prefix}: " + "; ".join(problems))


class TaskEntry(BaseModel):
    """One input model: a task, the fine-tuned variant used for it, its coefficient and checkpoint."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(min_length=1)
    variant: str = "plain"
    weight: float = 1.0
    density: float | None = None
    layer_weights: dict[str, float] | None = None
    params: dict[str, float] | None = None  # this task's value of the method's other per-task parameters, by name
    checkpoint: str = Field(min_length=1)
    sha256: str | None = None

    @field_validator("layer_weights")
    @classmethod
    def _finite_layer_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if not v:
            return None
        bad = [g for g, w in v.items() if not g or not math.isfinite(w)]
        if bad:
            raise ValueError(f"layer weights must be finite numbers keyed by a layer group (bad: {bad})")
        return {str(g): float(w) for g, w in v.items()}

    @field_validator("params")
    @classmethod
    def _finite_params(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if not v:
            return None
        bad = [k for k, x in v.items() if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)]
        if bad:
            raise ValueError(f"per-task parameters must be finite numbers (bad: {bad})")
        return {str(k): float(x) for k, x in v.items()}

    def value(self, name: str) -> float | None:
        """This task's value of the per-task parameter ``name`` (``weights`` → weight, ``densities`` → density)."""
        field = TASK_FIELDS.get(name)
        return getattr(self, field) if field else (self.params or {}).get(name)

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

    @property
    def id(self) -> str:
        return task_id(self.task, self.variant)


def fit_task_count(method, chosen: list[str], available: list[str]) -> list[str]:
    """``chosen`` cut or filled (from ``available``, in order) to a task count the method merges (``task_count``)."""
    lo, hi = method.task_count
    names = list(chosen)[:hi] if hi is not None else list(chosen)
    for t in available:
        if len(names) >= lo:
            break
        if t not in names:
            names.append(t)
    if len(names) < lo:
        raise ConfigError(f"method '{method.name}' merges {method.task_count_text()} tasks; the zoo has "
                          f"{len(available)}")
    return sorted(names, key=available.index)


class MergeSpec(BaseModel):
    """A complete, reproducible merge: method + complete global parameters + one entry per task, with provenance."""
    model_config = ConfigDict(extra="forbid")

    schema_version: int = 1
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    tasks: list[TaskEntry] = Field(min_length=1)
    base_model: str = Field(min_length=1)
    base_sha256: str | None = None
    zoo: str | None = None
    library_version: str = Field(default_factory=library_version)
    created: str = Field(default_factory=now)
    results: dict[str, dict[str, float]] | None = None
    notes: str | None = None
    learned: dict[str, Any] | None = None  # provenance of learned coefficients (learner, settings, trace summary)

    _root_dir: Path | None = PrivateAttr(default=None)
    _kwargs: dict[str, Any] = PrivateAttr(default_factory=dict)

    # -- validation: once, here ------------------------------------------------------------------
    def model_post_init(self, __context: Any) -> None:
        method = get_method(self.method)  # ConfigError listing known methods
        per_model = {p.name for p in method.per_model_params}
        problems = []
        for name in self.params:
            if name in per_model:
                field = TASK_FIELDS.get(name, f"params.{name}")
                problems.append(f"parameter '{name}' is per task: set tasks[].{field} instead")
        for i, t in enumerate(self.tasks):
            if t.density is not None and DENSITIES not in per_model:
                problems.append(f"field 'tasks.{i}.density' is not used by method '{self.method}'")
            for name in sorted(set(t.params or {}) - per_model):
                problems.append(f"field 'tasks.{i}.params.{name}' is not a per-task parameter of method "
                                f"'{self.method}' (it has: {', '.join(sorted(per_model - set(TASK_FIELDS))) or 'none'})")
            if t.weight != 1.0 and WEIGHTS not in per_model:
                problems.append(f"field 'tasks.{i}.weight' is not used by method '{self.method}' (must be 1)")
            if t.layer_weights and not method.supports_layer_weights:
                problems.append(f"field 'tasks.{i}.layer_weights' is not used by method '{self.method}' "
                                "(it has no per-task weights)")
        ids = [t.id for t in self.tasks]
        problems += [f"field 'tasks': '{d}' appears twice" for d in sorted({i for i in ids if ids.count(i) > 1})]
        if problems:
            raise ConfigError("merge config: " + "; ".join(problems))
        kw = {k: v for k, v in self.params.items()}
        if WEIGHTS in per_model:
            kw[WEIGHTS] = [t.weight for t in self.tasks]
        for name in per_model - {WEIGHTS}:
            if any(t.value(name) is not None for t in self.tasks):
                kw[name] = [t.value(name) for t in self.tasks]
        if self.tasks and not method.accepts_tasks(len(self.tasks)):
            raise ConfigError(f"merge config: method '{method.name}' merges {method.task_count_text()} tasks, "
                              f"got {len(self.tasks)}")
        try:
            full = method.validate_params(kw, n_tasks=len(self.tasks))
        except ConfigError as exc:
            raise ConfigError(f"merge config: {exc}") from None
        # complete global parameters (defaults filled in) are part of the spec
        self.params = {p.name: full[p.name] for p in method.global_params}
        if self.has_layer_weights:
            full["layer_weights"] = [dict(t.layer_weights) if t.layer_weights else None for t in self.tasks]
        self._kwargs = full

    @property
    def spec(self) -> MergeMethod:
        """The registered method."""
        return get_method(self.method)

    @property
    def method_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the method call (global params + per-task weights/densities), validated."""
        return dict(self._kwargs)

    @property
    def task_ids(self) -> list[str]:
        return [t.id for t in self.tasks]

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]

    @property
    def variants(self) -> dict[str, str]:
        return {t.task: t.variant for t in self.tasks}

    @property
    def weights(self) -> dict[str, float]:
        return {t.task: t.weight for t in self.tasks}

    @property
    def layer_weights(self) -> dict[str, dict[str, float]]:
        """task → {layer group: multiplier} for the tasks that have per-layer coefficients."""
        return {t.task: dict(t.layer_weights) for t in self.tasks if t.layer_weights}

    @property
    def has_layer_weights(self) -> bool:
        return any(t.layer_weights for t in self.tasks)

    def coefficient(self, task: str, group: str) -> float:
        """Effective coefficient of ``task`` on layer ``group``: λ · λ_t · s_{t,g} (λ = 1 for methods without λ)."""
        t = next(e for e in self.tasks if e.task == task)
        lam = self.params.get(LAMBDA, 1.0)
        return lam * t.weight * (t.layer_weights or {}).get(group, 1.0)

    @property
    def lam(self) -> float | None:
        return self.params.get(LAMBDA)

    @property
    def has_lambda(self) -> bool:
        return LAMBDA in self.params

    @property
    def has_weights(self) -> bool:
        return any(p.name == WEIGHTS for p in self.spec.per_model_params)

    @property
    def has_densities(self) -> bool:
        return any(p.name == DENSITIES for p in self.spec.per_model_params)

    def uniform_variant(self) -> str | None:
        """The one variant used by every task, or None for a mix."""
        used = {t.variant for t in self.tasks}
        return used.pop() if len(used) == 1 else None

    def identity(self, with_lambda: bool = True, files: bool = False) -> dict[str, Any]:
        """The canonical identity of what this merge computes — the one source of every cache key.

        ``{"method", "params", "tasks": [[task, variant, weight, density] (+ [{group: s}] (+ [{param: value}]))]}``:
        the method, every global parameter (defaults filled in at construction), per task its variant, weight λ_t,
        density override, per-layer multipliers s_{t,g} and its values of the method's other per-task parameters. Forms that merge to the same weights share one identity: a per-task
        density equal to the global one is None, multipliers equal to 1 are dropped (no layer weights at all: the
        entry is left out). Provenance (paths, time, notes, results) is not part of it. ``with_lambda=False``: λ left
        out (what a λ sweep depends on); ``files=True``: the sha256 of θ0 and of every checkpoint appended.
        """
        params = {k: v for k, v in self.params.items() if with_lambda or k != LAMBDA}
        global_density = self.params.get("density")
        tasks = []
        for t in self.tasks:
            density = None if t.density is None or t.density == global_density else t.density
            row: list[Any] = [t.task, t.variant, t.weight, density]
            layers = {g: s for g, s in sorted((t.layer_weights or {}).items()) if s != 1.0}
            extra = dict(sorted((t.params or {}).items()))
            if layers or extra:
                row.append(layers)
            if extra:
                row.append(extra)
            tasks.append(row)
        out: dict[str, Any] = {"method": self.method, "params": params, "tasks": tasks}
        if files:
            out["files"] = [self.base_sha256] + [t.sha256 for t in self.tasks]
        return out

    def key(self, with_lambda: bool = True, files: bool = False) -> str:
        """:meth:`identity` as canonical JSON: two specs share a key iff they merge to the same weights."""
        return json.dumps(self.identity(with_lambda, files), sort_keys=True)

    # -- evolution: every change returns a new, validated spec ------------------------------------
    def evolve(self, **changes) -> "MergeSpec":
        data = self.model_dump(mode="python")
        data.update(changes)
        out = type(self).from_dict(data)
        out._root_dir = self._root_dir
        return out

    def with_params(self, **params) -> "MergeSpec":
        return self.evolve(params={**self.params, **params})

    def with_method(self, method: str) -> "MergeSpec":
        """Switch method: the new method's defaults, keeping λ when both have one; per-task fields it lacks reset;
        tasks beyond the new method's maximum count dropped (the first ones kept)."""
        if method == self.method:
            return self
        new = get_method(method)
        params = new.defaults()
        if LAMBDA in params:
            params[LAMBDA] = self.params.get(LAMBDA, DEFAULT_LAMBDA)
        per_model = {p.name for p in new.per_model_params}
        tasks = [t.model_copy(update={"weight": t.weight if WEIGHTS in per_model else 1.0,
                                      "density": t.density if DENSITIES in per_model else None,
                                      "layer_weights": t.layer_weights if new.supports_layer_weights else None,
                                      "params": {k: v for k, v in (t.params or {}).items() if k in per_model} or None})
                 for t in self.tasks]
        lo, hi = new.task_count
        if hi is not None:
            tasks = tasks[:hi]  # e.g. slerp: the first two tasks
        if len(tasks) < lo:
            raise ConfigError(f"method '{method}' merges {new.task_count_text()} tasks; this merge has {len(tasks)}")
        return self.evolve(method=method, params=params, tasks=tasks)

    def with_variants(self, variants: str | Mapping[str, str], zoo=None) -> "MergeSpec":
        """Every task (a str) or the named tasks (a mapping) on another variant; checkpoints from ``zoo``."""
        want = {t.task: variants for t in self.tasks} if isinstance(variants, str) else dict(variants)
        tasks = []
        for t in self.tasks:
            v = want.get(t.task, t.variant)
            update: dict[str, Any] = {"variant": v}
            if zoo is not None and v != t.variant:
                record = zoo.manifest.checkpoint(t.task, v)
                update.update(checkpoint=str((zoo.path / record.file).absolute()), sha256=record.sha256)
            tasks.append(t.model_copy(update=update))
        return self.evolve(tasks=tasks)

    # -- a zoo's checkpoints --------------------------------------------------------------------------
    @classmethod
    def for_zoo(cls, zoo, method: str = DEFAULT_METHOD, params: Mapping[str, Any] | None = None,
                variants: str | Mapping[str, str] | None = None, weights: Mapping[str, float] | None = None,
                densities: Mapping[str, float | None] | None = None, tasks: Sequence[str] | None = None,
                layer_weights: Mapping[str, Mapping[str, float] | None] | None = None,
                per_task: Mapping[str, Mapping[str, float | None]] | None = None, **provenance) -> "MergeSpec":
        """A spec over a zoo's checkpoints (paths and sha256 from its manifest).

        ``layer_weights``: task → {layer group: multiplier of λ_t} (per-layer coefficients; tasks not named: none).
        ``weights`` / ``densities`` / ``per_task`` (per-task parameter name → {task: value}): per-task values.

        ``variants``: one variant for all tasks or task → variant (default: the zoo's first variant);
        ``tasks``: which tasks, in zoo order (default: the tasks named in a ``variants`` mapping, else all).
        """
        if isinstance(variants, Mapping):
            chosen = dict(variants)
            names = list(tasks) if tasks is not None else list(chosen)
        else:
            names = list(tasks) if tasks is not None else list(zoo.tasks)
            chosen = {t: variants or zoo.variants[0] for t in names}
        if not names:
            raise ConfigError("empty task set: select at least one task to merge")
        problems = [f"unknown task '{t}' (zoo has: {', '.join(zoo.tasks)})" for t in names if t not in zoo.tasks]
        problems += [f"unknown variant '{chosen.get(t)}' for task '{t}' (zoo has: {', '.join(zoo.variants)})"
                     for t in names if t in zoo.tasks and chosen.get(t, zoo.variants[0]) not in zoo.variants]
        if problems:
            raise ConfigError("; ".join(problems))
        m = zoo.manifest
        entries = []
        for t in sorted(names, key=zoo.tasks.index):
            v = chosen.get(t, zoo.variants[0])
            record = m.checkpoint(t, v)
            entry: dict[str, Any] = {"task": t, "variant": v, "checkpoint": str((zoo.path / record.file).absolute()),
                                     "sha256": record.sha256}
            if weights and t in weights:
                entry["weight"] = float(weights[t])
            if densities and densities.get(t) is not None:
                entry["density"] = float(densities[t])
            if layer_weights and layer_weights.get(t):
                entry["layer_weights"] = {g: float(w) for g, w in layer_weights[t].items()}
            for name, values in (per_task or {}).items():
                if values.get(t) is None:
                    continue
                if name in TASK_FIELDS:
                    entry[TASK_FIELDS[name]] = float(values[t])
                else:
                    entry.setdefault("params", {})[name] = float(values[t])
            entries.append(entry)
        return cls.from_dict({"method": method, "params": dict(params or {}), "tasks": entries,
                              "base_model": str((zoo.path / m.pretrained.file).absolute()),
                              "base_sha256": m.pretrained.sha256, "zoo": str(zoo.path.absolute()), **provenance})

    @classmethod
    def default_for_zoo(cls, zoo, method: str = DEFAULT_METHOD) -> "MergeSpec":
        """The explorer's opening merge: every task, SAM checkpoints where the zoo has them, λ = 0.3."""
        schema = get_method(method)
        params = {LAMBDA: DEFAULT_LAMBDA} if any(p.name == LAMBDA for p in schema.params) else {}
        return cls.for_zoo(zoo, method, params, "sam" if "sam" in zoo.variants else zoo.variants[-1],
                           tasks=fit_task_count(schema, list(zoo.tasks), list(zoo.tasks)))

    def check_against_zoo(self, zoo) -> list[str]:
        """Problems (ConfigError) when a task/variant is not in ``zoo``; warnings for checkpoint hash mismatches."""
        problems, warnings = [], []
        for t in self.tasks:
            if t.task not in zoo.tasks:
                problems.append(f"task '{t.task}' is not in this zoo (zoo has: {', '.join(zoo.tasks)})")
            elif t.variant not in zoo.variants:
                problems.append(f"variant '{t.variant}' of task '{t.task}' is not in this zoo "
                                f"(zoo has: {', '.join(zoo.variants)})")
            else:
                record = zoo.manifest.checkpoint(t.task, t.variant)
                if t.sha256 and t.sha256 != record.sha256:
                    warnings.append(f"task '{t.task}' ({t.variant}): the config's checkpoint sha256 {t.sha256[:12]}… "
                                    f"differs from this zoo's {record.sha256[:12]}…; using this zoo's checkpoint")
        if problems:
            raise ConfigError("imported config: " + "; ".join(problems))
        return warnings

    def rebased(self, zoo) -> tuple["MergeSpec", list[str]]:
        """The same merge on ``zoo``'s files (tasks in zoo order); returns (spec, warnings)."""
        warnings = self.check_against_zoo(zoo)
        order = sorted(self.tasks, key=lambda t: zoo.tasks.index(t.task))
        spec = type(self).for_zoo(zoo, self.method, self.params, {t.task: t.variant for t in order},
                                  {t.task: t.weight for t in order}, {t.task: t.density for t in order},
                                  tasks=[t.task for t in order],
                                  layer_weights={t.task: t.layer_weights for t in order if t.layer_weights},
                                  per_task={k: {t.task: v for t in order if (v := (t.params or {}).get(k)) is not None}
                                            for k in {k for t in order for k in (t.params or {})}})
        return spec, warnings

    # -- URL query parameters -------------------------------------------------------------------------
    def to_query(self) -> dict[str, str]:
        """Compact query parameters: method, parameters, tasks, variants, λ_t, densities, ``lw.<task>`` = group:s,…"""
        q = {"method": self.method}
        for name, value in self.params.items():
            q[f"p.{name}"] = fmt(value)
        q["tasks"] = ",".join(self.task_names)
        q["variants"] = ",".join(f"{t.task}:{t.variant}" for t in self.tasks)
        if self.has_weights:
            q["weights"] = ",".join(f"{t.task}:{fmt(t.weight)}" for t in self.tasks)
        for p in self.spec.per_model_params:
            if p.name == WEIGHTS:
                continue
            values = [f"{t.task}:{fmt(t.value(p.name))}" for t in self.tasks if t.value(p.name) is not None]
            if values:
                q[p.name] = ",".join(values)
        for t in self.tasks:
            if t.layer_weights:
                q[f"lw.{t.task}"] = ",".join(f"{g}:{fmt(w)}" for g, w in t.layer_weights.items())
        return q

    @classmethod
    def from_query(cls, query: Mapping[str, str], zoo) -> tuple["MergeSpec", list[str]]:
        """Rebuild a spec over ``zoo`` from query parameters; returns (spec, warnings).

        Bad entries are ignored with a warning naming them, never an exception."""
        warnings: list[str] = []
        method = query.get("method", DEFAULT_METHOD)
        try:
            spec = get_method(method)
        except ConfigError as exc:
            warnings.append(f"link: {exc}; using {DEFAULT_METHOD}")
            method, spec = DEFAULT_METHOD, get_method(DEFAULT_METHOD)
        default = cls.default_for_zoo(zoo, method)
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
            out = cls.for_zoo(zoo, method, params, {t: variants[t] for t in names}, tasks=names,
                              layer_weights=layer_weights, per_task=per_task)
        except ConfigError as exc:
            warnings.append(f"link: {exc}; using the method's defaults")
            out = cls.for_zoo(zoo, method, default.params, {t: variants[t] for t in names}, tasks=names)
        return out, warnings

    # -- files ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], root_dir: str | os.PathLike | None = None) -> "MergeSpec":
        if not isinstance(data, Mapping):
            raise ConfigError(f"merge config: expected a mapping, got {type(data).__name__}")
        try:
            cfg = cls.model_validate(dict(data))
        except ValidationError as exc:
            raise _first_error(exc) from None
        cfg._root_dir = Path(root_dir) if root_dir is not None else None
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping; optional per-layer / learned fields only where set (older files stay identical)."""
        data = self.model_dump(mode="json")
        if data.get("learned") is None:
            data.pop("learned", None)
        for t in data["tasks"]:
            for optional in ("layer_weights", "params"):
                if t.get(optional) is None:
                    t.pop(optional, None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_json(cls, text: str, root_dir: str | os.PathLike | None = None) -> "MergeSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"merge config: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        return cls.from_dict(data, root_dir)

    @classmethod
    def from_yaml(cls, text: str, root_dir: str | os.PathLike | None = None) -> "MergeSpec":
        return cls.from_dict(safe_yaml(text, "merge config"), root_dir)

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
    def load(cls, path: str | os.PathLike) -> "MergeSpec":
        path = Path(path)
        text = read_text(path)
        suffix = path.suffix.lower()
        try:
            if suffix == ".json":
                return cls.from_json(text, root_dir=path.parent)
            if suffix in (".yaml", ".yml"):
                return cls.from_yaml(text, root_dir=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        raise ConfigError(f"{path}: unsupported config suffix '{suffix}' (use .json, .yaml or .yml)")

    @property
    def root_dir(self) -> Path:
        return self._root_dir if self._root_dir is not None else Path.cwd()

    def resolve_path(self, p: str, root_dir: str | os.PathLike | None = None) -> Path:
        path = Path(os.path.expanduser(p))
        if not path.is_absolute():
            path = Path(root_dir) / path if root_dir is not None else self.root_dir / path
        return path.absolute()


def read_text(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None


def safe_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None


def fmt(value: Any) -> str:
    """A parameter value as text (URLs, descriptions): booleans lower-case, floats to 6 significant digits."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def parse(raw: str, spec: ParamSpec) -> Any:
    """Inverse of :func:`fmt` for one parameter of the given schema."""
    if spec.kind == "bool":
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if spec.kind == "int":
        return int(float(raw))
    if spec.kind == "float":
        return float(raw)
    return raw


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
