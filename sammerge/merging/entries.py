"""One input model of a merge (:class:`TaskEntry`: task, variant, coefficients, checkpoint) and the small helpers a
:class:`~sammerge.merging.spec.MergeSpec` is built from (ids, provenance stamps, task-count fitting)."""
from __future__ import annotations

import datetime as _dt
import math
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sammerge.errors import ConfigError

__all__ = ["TaskEntry", "task_id", "fit_task_count", "library_version", "now", "zoo_entries", "check_against_zoo",
           "LAMBDA", "WEIGHTS", "DENSITIES"]

# parameter names with a meaning outside their method (sliders, URLs, mergekit); everyone uses these names
LAMBDA, WEIGHTS, DENSITIES = "lambda", "weights", "densities"
TASK_FIELDS = {WEIGHTS: "weight", DENSITIES: "density"}  # per-task parameters with a field of their own in TaskEntry


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
    stored: Literal["task_vector"] | None = None  # the file holds τ = θ_t − θ0 (a zoo that ships small), not θ_t

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


def zoo_entries(zoo, names, chosen: Mapping[str, str], weights=None, densities=None, layer_weights=None,
                per_task=None) -> list[dict[str, Any]]:
    """The task entries (as dicts) of a spec over ``zoo``'s checkpoints: tasks ``names`` in zoo order, each on its
    ``chosen`` variant (default the zoo's first), with its checkpoint path, sha256 and per-task values."""
    m = zoo.manifest
    entries = []
    for t in sorted(names, key=zoo.tasks.index):
        v = chosen.get(t, zoo.variants[0])
        record = m.checkpoint(t, v)
        entry: dict[str, Any] = {"task": t, "variant": v, "checkpoint": str((zoo.path / record.file).absolute()),
                                 "sha256": record.sha256}
        if record.stored == "task_vector":
            entry["stored"] = "task_vector"
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
    return entries


def check_against_zoo(tasks, zoo) -> list[str]:
    """For entries ``tasks`` of an imported config: ConfigError listing every task/variant not in ``zoo``; else the
    warnings for checkpoint hashes that differ from the zoo's (the zoo's checkpoint is used)."""
    problems, warnings = [], []
    for t in tasks:
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
