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

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from sammerge.errors import ConfigError
from sammerge.io import atomic_write_text, read_config_text as read_text, safe_yaml
from sammerge.merging.entries import (DENSITIES, LAMBDA, TASK_FIELDS, WEIGHTS, TaskEntry,  # noqa: F401
                                      _first_error, fit_task_count, library_version, now, task_id, zoo_entries,
                                      check_against_zoo)
from sammerge.merging.registry import MergeMethod, get_method

__all__ = ["TaskEntry", "MergeSpec", "fit_task_count", "library_version", "task_id", "LAMBDA", "WEIGHTS", "DENSITIES",
           "DEFAULT_METHOD", "DEFAULT_LAMBDA", "read_text", "safe_yaml", "now"]

DEFAULT_METHOD = "task_arithmetic"
DEFAULT_LAMBDA = 0.3  # a usual starting point for task arithmetic over several tasks (Ilharco et al. use 0.3–0.4)


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

    def with_provenance(self, **fields) -> "MergeSpec":
        """A copy with other ``results``, ``notes``, ``learned`` or ``created`` — fields that change no merge, so
        the copy is not validated again."""
        unknown = set(fields) - {"results", "notes", "learned", "created"}
        if unknown:
            raise ConfigError(f"with_provenance: {', '.join(sorted(unknown))} would change the merge (use evolve)")
        return self.model_copy(update=fields)

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
        if all(want.get(t.task, t.variant) == t.variant for t in self.tasks):
            return self  # nothing changes: the same spec, not a copy to validate again
        tasks = []
        for t in self.tasks:
            v = want.get(t.task, t.variant)
            update: dict[str, Any] = {"variant": v}
            if zoo is not None and v != t.variant:
                record = zoo.manifest.checkpoint(t.task, v)
                update.update(checkpoint=str((zoo.path / record.file).absolute()), sha256=record.sha256,
                              stored="task_vector" if record.stored == "task_vector" else None)
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
        entries = zoo_entries(zoo, names, chosen, weights, densities, layer_weights, per_task)
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

    def rebased(self, zoo) -> tuple["MergeSpec", list[str]]:
        """The same merge on ``zoo``'s files (tasks in zoo order); returns (spec, warnings)."""
        warnings = check_against_zoo(self.tasks, zoo)
        order = sorted(self.tasks, key=lambda t: zoo.tasks.index(t.task))
        spec = type(self).for_zoo(zoo, self.method, self.params, {t.task: t.variant for t in order},
                                  {t.task: t.weight for t in order}, {t.task: t.density for t in order},
                                  tasks=[t.task for t in order],
                                  layer_weights={t.task: t.layer_weights for t in order if t.layer_weights},
                                  per_task={k: {t.task: v for t in order if (v := (t.params or {}).get(k)) is not None}
                                            for k in {k for t in order for k in (t.params or {})}})
        return spec, warnings

    # -- URL query parameters (sammerge.merging.url_codec) ----------------------------------------------
    def to_query(self) -> dict[str, str]:
        """Compact query parameters (:func:`sammerge.merging.url_codec.spec_to_query`)."""
        from sammerge.merging.url_codec import spec_to_query
        return spec_to_query(self)

    @classmethod
    def from_query(cls, query: Mapping[str, str], zoo) -> tuple["MergeSpec", list[str]]:
        """(spec over ``zoo``, warnings) from query parameters (:func:`sammerge.merging.url_codec.spec_from_query`);
        bad entries are ignored with a warning naming them, never an exception."""
        from sammerge.merging.url_codec import spec_from_query
        return spec_from_query(query, zoo)

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
            for optional in ("layer_weights", "params", "stored"):
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
