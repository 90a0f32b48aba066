"""The merge-method registry: a method is a typed function, its parameters a schema (mergekit ``easy_define``).

:func:`merge_method` reads a function's typed signature into :class:`ParamSpec` entries:

* scalar arguments (``float``, ``int``, ``bool``, ``Literal[...]``) are *global* parameters;
* ``list[float]`` arguments are *per-model* parameters (one value per task vector, e.g. ``weights``);
* ranges, step and help come from ``Annotated[float, Param(low=..., high=..., step=..., help=...)]``.

A trailing underscore is stripped from argument names (``lambda_`` is the parameter ``lambda``).
A method that takes ``key_weights`` accepts per-layer coefficients: ``method(..., layer_weights=[{group: s}, ...])``
multiplies task t's weight by s_{t,g} on the keys of layer group g (:mod:`sammerge.merging.layers`).
CLI, app, sweeps and the paper table all read the schema from here.

*Coefficient learners* (:func:`coefficient_learner`, e.g. AdaMerging) are registered with the same schema machinery:
their keyword-only typed arguments are the settings; running one on a zoo returns a spec of a merge method.
"""
from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence

import torch

from sammerge.errors import ConfigError, MergeError
from sammerge.merging.task_vector import StateDict, as_state_dict, check_coefficients, check_task_vectors

__all__ = ["Param", "ParamSpec", "MergeMethod", "merge_method", "MERGE_METHODS", "get_method", "list_methods",
           "CoefficientLearner", "coefficient_learner", "get_learner", "list_learners"]

# ----------------------------------------------------------------------------------------------
# parameter schema and registry
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """Metadata for a merge-method argument, used inside ``typing.Annotated[...]``."""
    low: float | None = None
    high: float | None = None
    step: float | None = None
    help: str = ""
    label: str | None = None
    low_exclusive: bool = False
    high_exclusive: bool = False
    mergekit_name: str | None = None
    ui_low: float | None = None
    ui_high: float | None = None
    entry_default: Any = None


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a merge method.

    ``kind`` is ``"float"``, ``"int"``, ``"bool"`` or ``"choice"`` (with ``choices``). For a per-model
    parameter (``per_model=True``) the value is a list with one entry per task and ``default`` is the
    default of each entry (``None``: falls back to the global parameter of the same meaning).
    """
    name: str
    kind: str
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    help: str = ""
    per_model: bool = False
    label: str = ""
    choices: tuple | None = None
    low_exclusive: bool = False
    high_exclusive: bool = False
    mergekit_name: str | None = None
    optional: bool = False
    ui_low: float | None = None
    ui_high: float | None = None
    entry_default: Any = None

    @property
    def slider_range(self) -> tuple[float | None, float | None]:
        """(low, high) for a UI control: the soft UI range where set, else the hard bounds."""
        return (self.ui_low if self.ui_low is not None else self.low,
                self.ui_high if self.ui_high is not None else self.high)

    def range_text(self) -> str:
        if self.choices:
            return "{" + ", ".join(map(str, self.choices)) + "}"
        if self.low is None and self.high is None:
            return ""
        lo = "(" if self.low_exclusive else "["
        hi = ")" if self.high_exclusive else "]"
        def fmt(v):
            return str(int(v)) if float(v).is_integer() else f"{v:g}"
        low = "-inf" if self.low is None else fmt(self.low)
        high = "inf" if self.high is None else fmt(self.high)
        return f"{lo}{low}, {high}{hi}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "kind": self.kind, "default": self.default,
                "low": self.low, "high": self.high, "step": self.step, "low_exclusive": self.low_exclusive,
                "high_exclusive": self.high_exclusive, "choices": list(self.choices) if self.choices else None,
                "per_model": self.per_model, "optional": self.optional, "help": self.help,
                "mergekit_name": self.mergekit_name, "range": self.range_text(),
                "ui_low": self.slider_range[0], "ui_high": self.slider_range[1],
                "entry_default": self.entry_default}

    def check_value(self, value: Any, where: str) -> Any:
        """Coerce and range-check one scalar value; ConfigError naming ``where`` otherwise."""
        if value is None and self.optional:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"parameter '{where}' must be true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ConfigError(f"parameter '{where}' must be one of {list(self.choices)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"parameter '{where}' must be a number, got {value!r}")
        if self.kind == "int":
            if float(value) != int(value):
                raise ConfigError(f"parameter '{where}' must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise ConfigError(f"parameter '{where}' is {value} (must be finite)")
        bad_low = self.low is not None and (value <= self.low if self.low_exclusive else value < self.low)
        bad_high = self.high is not None and (value >= self.high if self.high_exclusive else value > self.high)
        if bad_low or bad_high:
            raise ConfigError(f"parameter '{where}' = {value!r} is outside {self.range_text()}")
        return value


def _public_name(arg: str) -> str:
    return arg[:-1] if arg.endswith("_") else arg


def _unwrap_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _spec_from_annotation(arg: str, annotation, default) -> ParamSpec:
    meta = Param()
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
        for extra in extras:
            if isinstance(extra, Param):
                meta = extra
    else:
        base = annotation
    base, optional = _unwrap_optional(base)
    per_model = False
    choices = None
    if typing.get_origin(base) in (list, Sequence, typing.Sequence):
        (inner,) = typing.get_args(base)
        per_model = True
        base = inner
    if base is float:
        kind = "float"
    elif base is bool:
        kind = "bool"
    elif base is int:
        kind = "int"
    elif typing.get_origin(base) is Literal:
        kind, choices = "choice", tuple(typing.get_args(base))
    else:
        raise TypeError(f"merge method argument '{arg}': unsupported annotation {annotation!r}")
    if default is inspect.Parameter.empty:
        raise TypeError(f"merge method argument '{arg}' needs a default value")
    name = _public_name(arg)
    if per_model:
        if default is not None:
            raise TypeError(f"per-model argument '{arg}' must default to None")
        default = None
    return ParamSpec(
        name=name, kind=kind, default=default, low=meta.low, high=meta.high, step=meta.step,
        help=meta.help, per_model=per_model, label=meta.label or name, choices=choices,
        low_exclusive=meta.low_exclusive, high_exclusive=meta.high_exclusive,
        mergekit_name=meta.mergekit_name, optional=optional or per_model,
        ui_low=meta.ui_low, ui_high=meta.ui_high, entry_default=meta.entry_default)


class _Schema:
    """Parameter-schema behaviour shared by merge methods and coefficient learners (``params``, ``validator``)."""
    name: str
    params: tuple[ParamSpec, ...]
    validator: Callable[[dict[str, Any]], None] | None
    kind_label = "merge method"

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.fn) or ""

    @property
    def global_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if not p.per_model)

    @property
    def per_model_params(self) -> tuple[ParamSpec, ...]:
        return tuple(p for p in self.params if p.per_model)

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "none"
        raise ConfigError(f"{self.kind_label} '{self.name}' has no parameter '{name}' (known: {known})")

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if not p.per_model}

    def validate_params(self, params: Mapping[str, Any] | None, n_tasks: int | None = None) -> dict[str, Any]:
        """Check names, types and ranges; return a full dict (defaults filled in).

        Unknown parameter → ConfigError naming it; a value out of range → ConfigError with the range.
        Per-model parameters must be lists (of length ``n_tasks`` when given) or None.
        """
        params = dict(params or {})
        known = {p.name for p in self.params}
        for name in params:
            if name not in known:
                raise ConfigError(f"unknown parameter '{name}' for {self.kind_label} '{self.name}' "
                                  f"(known: {', '.join(sorted(known)) or 'none'})")
        out: dict[str, Any] = {}
        for spec in self.params:
            if spec.name not in params:
                out[spec.name] = spec.default
                continue
            value = params[spec.name]
            if spec.per_model:
                if value is None:
                    out[spec.name] = None
                    continue
                if isinstance(value, (str, bytes)) or not (isinstance(value, Sequence) or torch.is_tensor(value)):
                    raise ConfigError(f"parameter '{spec.name}' must be a list with one value per task")
                values = [float(v) if torch.is_tensor(v) else v for v in list(value)]
                if n_tasks is not None and len(values) != n_tasks:
                    raise ConfigError(f"parameter '{spec.name}' has {len(values)} values for {n_tasks} tasks")
                out[spec.name] = [spec.check_value(v, f"{spec.name}[{i}]") for i, v in enumerate(values)]
            else:
                out[spec.name] = spec.check_value(value, spec.name)
        if self.validator is not None:
            self.validator(out)
        return out


@dataclass(frozen=True)
class MergeMethod(_Schema):
    """A registered merge method: a typed function plus its parameter schema."""
    name: str
    label: str
    description: str
    fn: Callable[..., StateDict]
    params: tuple[ParamSpec, ...]
    mergekit_name: str | None = None
    reference: str = ""
    validator: Callable[[dict[str, Any]], None] | None = None
    lambda_range: tuple[float, float, float] | None = None
    _argnames: dict[str, str] = field(default_factory=dict, repr=False)
    _wants_task_ids: bool = False
    _wants_key_weights: bool = False

    @property
    def supports_layer_weights(self) -> bool:
        """Whether the method takes per-layer coefficients (``layer_weights``)."""
        return self._wants_key_weights

    def lambda_grid(self) -> list[float]:
        """The λ values that sweeps, searches and the paper table try: low..high by step ([] without λ)."""
        if self.lambda_range is None:
            return []
        lo, hi, step = self.lambda_range
        return [round(lo + step * i, 6) for i in range(int(round((hi - lo) / step)) + 1)]

    def __call__(self, pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                 task_ids: Sequence[str] | None = None, validate: bool = True,
                 layer_weights: Sequence[Mapping[str, float] | None] | None = None, **params) -> StateDict:
        """Merge: ``θ = method(θ_0, [τ_1..τ_T], **params)``.

        ``task_ids`` (optional, e.g. task names) identify tasks for seeded randomness (DARE) so a task's
        drop mask does not change when other tasks are added or removed. ``validate=False`` skips the
        key/shape/finiteness scan of the inputs (parameters are always validated). ``layer_weights``: one
        ``{layer group: s}`` (or None) per task; task t's weight on the keys of group g is multiplied by s_{t,g}
        (groups not named: 1). Only for methods with ``key_weights`` (MergeError otherwise).
        """
        task_vectors = [as_state_dict(tv) for tv in task_vectors] if isinstance(task_vectors, (list, tuple)) \
            else task_vectors
        if validate:
            check_task_vectors(pretrained, task_vectors)
        elif not task_vectors:
            raise MergeError("empty task set: select at least one task to merge")
        try:
            full = self.validate_params(params, n_tasks=len(task_vectors))
        except ConfigError as exc:
            # out-of-range / non-finite coefficients are a merge problem when called directly
            msg = str(exc)
            if "must be finite" in msg or "must be a number" in msg:
                raise MergeError(msg) from exc
            raise
        if task_ids is not None and len(task_ids) != len(task_vectors):
            raise MergeError(f"{len(task_ids)} task ids given for {len(task_vectors)} task vectors")
        kwargs = {self._argnames[k]: v for k, v in full.items()}
        if layer_weights is not None and any(lw for lw in layer_weights):
            kwargs["key_weights"] = self._key_weights(pretrained, layer_weights, len(task_vectors))
        if self._wants_task_ids:
            kwargs["task_ids"] = [str(t) for t in task_ids] if task_ids is not None \
                else [str(i) for i in range(len(task_vectors))]
        return self.fn(pretrained, list(task_vectors), **kwargs)

    def _key_weights(self, pretrained: Mapping[str, torch.Tensor], layer_weights, n_tasks: int
                     ) -> list[dict[str, float] | None]:
        from sammerge.merging.layers import key_coefficients
        if not self._wants_key_weights:
            raise MergeError(f"merge method '{self.name}' has no per-task weights: per-layer coefficients "
                             "cannot be applied")
        if len(layer_weights) != n_tasks:
            raise MergeError(f"{len(layer_weights)} per-layer coefficient sets given for {n_tasks} task vectors")
        fkeys = [k for k, v in pretrained.items() if v.is_floating_point()]
        out = []
        for i, lw in enumerate(layer_weights):
            if not lw:
                out.append(None)
                continue
            check_coefficients(lw.values(), f"layer_weights[{i}]")
            out.append(key_coefficients(fkeys, lw, where=f"layer_weights[{i}]"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "description": self.description,
                "mergekit_name": self.mergekit_name, "reference": self.reference,
                "layer_weights": self.supports_layer_weights, "params": [p.to_dict() for p in self.params]}


MERGE_METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, label: str, description: str, mergekit_name: str | None = None,
                 reference: str = "", validator: Callable[[dict[str, Any]], None] | None = None,
                 lambda_range: tuple[float, float, float] | None = None):
    """Register ``fn(pretrained, task_vectors, *, <typed params>)`` in :data:`MERGE_METHODS`.

    ``lambda_range`` = (low, high, step) of the λ grid searched for this method (required iff it has λ);
    the λ slider spans at least [low, max(2, high)].
    """
    def decorate(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        args = list(sig.parameters.values())
        if len(args) < 2:
            raise TypeError(f"merge method '{name}' must take (pretrained, task_vectors, ...)")
        specs, argnames, wants_ids = [], {}, False
        wants_kw = False
        for p in args[2:]:
            if p.name == "task_ids":
                wants_ids = True
                continue
            if p.name == "key_weights":
                wants_kw = True
                continue
            spec = _spec_from_annotation(p.name, hints[p.name], p.default)
            if spec.name == "lambda":
                if lambda_range is None:
                    raise TypeError(f"merge method '{name}' has λ but declares no lambda_range")
                spec = replace(spec, ui_low=lambda_range[0], ui_high=max(2.0, lambda_range[1]))
            specs.append(spec)
            argnames[spec.name] = p.name
        if name in MERGE_METHODS:
            raise ValueError(f"merge method '{name}' registered twice")
        MERGE_METHODS[name] = MergeMethod(name=name, label=label, description=description, fn=fn,
                                          params=tuple(specs), mergekit_name=mergekit_name,
                                          reference=reference, validator=validator, lambda_range=lambda_range,
                                          _argnames=argnames, _wants_task_ids=wants_ids,
                                          _wants_key_weights=wants_kw)
        return fn
    return decorate


def get_method(name: str) -> MergeMethod:
    """Look up a merge method; unknown name → ConfigError listing the known ones."""
    try:
        return MERGE_METHODS[name]
    except (KeyError, TypeError):
        hint = (f"; '{name}' learns coefficients: run it with sammerge.merging.get_learner('{name}') or "
                f"`sammerge learn`, which gives a spec of a merge method" if name in _learners() else "")
        raise ConfigError(f"unknown merge method '{name}' (known: {', '.join(MERGE_METHODS)}){hint}") from None


def list_methods() -> list[MergeMethod]:
    return list(MERGE_METHODS.values())


# ----------------------------------------------------------------------------------------------
# coefficient learners: settings schema + a function of a zoo that returns a merge spec
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CoefficientLearner(_Schema):
    """A registered coefficient learner (e.g. AdaMerging): ``fn(zoo, variants, tasks=None, *, <settings>,
    progress=None, should_stop=None)`` returns a result whose ``.spec`` is a :class:`MergeSpec` of a merge method."""
    name: str
    label: str
    description: str
    fn: Callable[..., Any]
    params: tuple[ParamSpec, ...]
    reference: str = ""
    validator: Callable[[dict[str, Any]], None] | None = None
    kind_label = "coefficient learner"

    def __call__(self, zoo, variants, tasks=None, progress=None, should_stop=None, **settings):
        return self.fn(zoo, variants, tasks, progress=progress, should_stop=should_stop,
                       **self.validate_params(settings))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "description": self.description,
                "reference": self.reference, "kind": "learner", "params": [p.to_dict() for p in self.params]}


LEARNERS: dict[str, CoefficientLearner] = {}
_LEARNER_MODULES = ("sammerge.evaluation.adamerging",)  # imported on first lookup (merging does not import evaluation)
_NOT_SETTINGS = {"progress", "should_stop"}


def coefficient_learner(name: str, label: str, description: str, reference: str = "",
                        validator: Callable[[dict[str, Any]], None] | None = None):
    """Register ``fn(zoo, variants, tasks, *, <typed settings>, progress, should_stop)``: its keyword-only typed
    arguments (except ``progress``/``should_stop``) are the settings schema, read like a merge method's."""
    def decorate(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        specs = tuple(_spec_from_annotation(p.name, hints[p.name], p.default) for p in sig.parameters.values()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _NOT_SETTINGS)
        if name in LEARNERS:
            raise ValueError(f"coefficient learner '{name}' registered twice")
        LEARNERS[name] = CoefficientLearner(name=name, label=label, description=description, fn=fn, params=specs,
                                            reference=reference, validator=validator)
        return fn
    return decorate


def _learners() -> dict[str, CoefficientLearner]:
    import importlib
    for module in _LEARNER_MODULES:
        importlib.import_module(module)
    return LEARNERS


def get_learner(name: str) -> CoefficientLearner:
    """Look up a coefficient learner; unknown name → ConfigError listing the known ones."""
    learners = _learners()
    try:
        return learners[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown coefficient learner '{name}' (known: {', '.join(learners)})") from None


def list_learners() -> list[CoefficientLearner]:
    return list(_learners().values())
