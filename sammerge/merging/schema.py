"""A method's parameters as a schema, read from its typed signature (mergekit ``easy_define``).

* scalar arguments (``float``, ``int``, ``bool``, ``Literal[...]``) are *global* parameters;
* ``list[float]`` arguments are *per-model* parameters (one value per task vector, e.g. ``weights``);
* ranges, step and help come from ``Annotated[float, Param(low=..., high=..., step=..., help=...)]``.

A trailing underscore is stripped from argument names (``lambda_`` is the parameter ``lambda``). Merge methods
(:mod:`sammerge.merging.registry`) and coefficient learners (:mod:`sammerge.merging.learners`) share it.
"""
from __future__ import annotations

import inspect
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence

import torch

from sammerge.errors import ConfigError

__all__ = ["Param", "ParamSpec", "spec_from_annotation", "fmt", "parse"]


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


def spec_from_annotation(arg: str, annotation, default) -> ParamSpec:
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
