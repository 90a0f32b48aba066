"""Task vectors and model-merging methods: pure functions over state dicts.

A *state dict* is ``dict[str, torch.Tensor]``; a *task vector* is ``finetuned - pretrained`` for every
floating-point key (non-floating tensors such as step counters are not part of a task vector and are
copied unchanged from the base model by every merge).

Every method is registered in :data:`MERGE_METHODS` through the :func:`merge_method` decorator, which
reads the function's typed signature into a list of :class:`ParamSpec` (mergekit ``easy_define`` style):

* scalar arguments (``float``, ``int``, ``bool``, ``Literal[...]``) are *global* parameters;
* ``list[float]`` arguments are *per-model* parameters (one value per task vector, e.g. ``weights``);
* ranges, step and help text come from ``Annotated[float, Param(low=..., high=..., step=..., help=...)]``.

A trailing underscore is stripped from argument names (``lambda_`` is the parameter ``lambda``).
Methods are called as ``MERGE_METHODS[name](pretrained, task_vectors, **params)`` and never modify
their inputs. Bad input raises :class:`~sammerge.errors.MergeError` (tensors, coefficients) or
:class:`~sammerge.errors.ConfigError` (unknown method / parameter, value out of range).
"""
from __future__ import annotations

import hashlib
import inspect
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Iterable, Literal, Mapping, Sequence

import torch

from sammerge.errors import ConfigError, MergeError

StateDict = dict[str, torch.Tensor]

__all__ = [
    "StateDict", "TaskVector", "task_vector", "apply_task_vector", "check_compatible",
    "check_task_vectors", "linear_combination", "Param", "ParamSpec", "MergeMethod",
    "merge_method", "MERGE_METHODS", "get_method", "list_methods",
    "trim_magnitude", "dare_drop", "breadcrumbs_mask",
    "weight_average", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "model_stock",
]


# ----------------------------------------------------------------------------------------------
# compatibility / finiteness checks
# ----------------------------------------------------------------------------------------------

def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_compatible(state_dicts: Sequence[Mapping[str, torch.Tensor]],
                     names: Sequence[str] | None = None, check_finite: bool = True) -> None:
    """Check that all state dicts have the same keys, shapes and are finite.

    The first state dict is the reference. Raises :class:`MergeError` naming the first offending key
    and both shapes, or the missing/extra key and which model lacks/has it, or the first non-finite key.
    """
    if len(state_dicts) == 0:
        raise MergeError("no state dicts to compare")
    names = list(names) if names is not None else [f"model {i}" for i in range(len(state_dicts))]
    if len(names) != len(state_dicts):
        raise MergeError(f"{len(names)} names given for {len(state_dicts)} state dicts")
    ref, ref_name = state_dicts[0], names[0]
    for sd, name in zip(state_dicts[1:], names[1:]):
        for key in ref:
            if key not in sd:
                raise MergeError(f"key '{key}' is in {ref_name} but missing from {name}")
        for key in sd:
            if key not in ref:
                raise MergeError(f"key '{key}' is in {name} but missing from {ref_name} (extra key)")
        for key, value in ref.items():
            other = sd[key]
            if _shape(other) != _shape(value):
                raise MergeError(f"key '{key}': shape {list(_shape(value))} in {ref_name} "
                                 f"but {list(_shape(other))} in {name}")
    if check_finite:
        for sd, name in zip(state_dicts, names):
            _check_finite(sd, name)


def _check_finite(sd: Mapping[str, torch.Tensor], name: str) -> None:
    for key, value in sd.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            kind = "NaN" if bool(torch.isnan(value).any()) else "Inf"
            raise MergeError(f"{name}: tensor '{key}' contains {kind} values")


def _float_keys(sd: Mapping[str, torch.Tensor]) -> list[str]:
    return [k for k, v in sd.items() if v.is_floating_point()]


def check_task_vectors(pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                       names: Sequence[str] | None = None, check_finite: bool = True) -> None:
    """Check task vectors against the base: non-empty, every floating key present with the base's shape.

    Task vectors may omit non-floating keys of the base (those are copied from the base), but may not
    have keys the base lacks. Raises :class:`MergeError`.
    """
    if not isinstance(task_vectors, (list, tuple)):
        raise MergeError(f"task_vectors must be a list of state dicts, got {type(task_vectors).__name__}")
    if len(task_vectors) == 0:
        raise MergeError("empty task set: select at least one task to merge")
    names = list(names) if names is not None else [f"task vector {i}" for i in range(len(task_vectors))]
    for tv, name in zip(task_vectors, names):
        if not isinstance(tv, Mapping):
            raise MergeError(f"{name}: expected a state dict, got {type(tv).__name__}")
        for key, base in pretrained.items():
            if not base.is_floating_point():
                continue
            if key not in tv:
                raise MergeError(f"key '{key}' is in the base model but missing from {name}")
            if _shape(tv[key]) != _shape(base):
                raise MergeError(f"key '{key}': shape {list(_shape(base))} in the base model "
                                 f"but {list(_shape(tv[key]))} in {name}")
        for key in tv:
            if key not in pretrained:
                raise MergeError(f"key '{key}' is in {name} but missing from the base model (extra key)")
    if check_finite:
        _check_finite(pretrained, "base model")
        for tv, name in zip(task_vectors, names):
            _check_finite(tv, name)


def _check_coefficients(values: Iterable[float], what: str) -> list[float]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise MergeError(f"{what}[{i}] must be a number, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise MergeError(f"{what}[{i}] is {v} (coefficients must be finite)")
        out.append(v)
    return out


# ----------------------------------------------------------------------------------------------
# task vectors
# ----------------------------------------------------------------------------------------------

def task_vector(finetuned: Mapping[str, torch.Tensor], pretrained: Mapping[str, torch.Tensor],
                check_finite: bool = True) -> StateDict:
    """τ = θ_ft − θ_0 for every floating-point key (keys and shapes must match; MergeError otherwise)."""
    check_compatible([pretrained, finetuned], ["pretrained", "finetuned"], check_finite=check_finite)
    return {k: finetuned[k].detach() - v.detach() for k, v in pretrained.items() if v.is_floating_point()}


def apply_task_vector(pretrained: Mapping[str, torch.Tensor], merged_tv: Mapping[str, torch.Tensor],
                      scale: float = 1.0) -> StateDict:
    """θ = θ_0 + scale · τ (non-floating keys copied from θ_0). Returns new tensors."""
    scale = _check_coefficients([scale], "scale")[0]
    check_task_vectors(pretrained, [merged_tv], ["task vector"], check_finite=False)
    out: StateDict = {}
    for key, base in pretrained.items():
        if not base.is_floating_point():
            out[key] = base.clone()
        else:
            out[key] = (base.float() + scale * merged_tv[key].float()).to(base.dtype)
    return out


class TaskVector:
    """A task vector θ_ft − θ_0 with ``+``, ``-``, negation, scalar ``*`` and :meth:`apply_to`.

    In the spirit of ``mlfoundations/task_vectors`` but over in-memory state dicts / safetensors files:
    nothing is unpickled, and incompatible operands raise :class:`MergeError` instead of printing warnings.
    """

    __slots__ = ("vector",)

    def __init__(self, vector: Mapping[str, torch.Tensor] | None = None, *,
                 pretrained: Mapping[str, torch.Tensor] | None = None,
                 finetuned: Mapping[str, torch.Tensor] | None = None) -> None:
        if vector is not None:
            if pretrained is not None or finetuned is not None:
                raise MergeError("TaskVector: give either a vector or pretrained+finetuned, not both")
            self.vector: StateDict = {k: v.detach() for k, v in vector.items()}
        else:
            if pretrained is None or finetuned is None:
                raise MergeError("TaskVector: both pretrained and finetuned state dicts are required")
            self.vector = task_vector(finetuned, pretrained)

    @classmethod
    def from_files(cls, pretrained_path, finetuned_path, pretrained_sha256: str | None = None,
                   finetuned_sha256: str | None = None) -> "TaskVector":
        """Build from two safetensors files (``sammerge.io.load_state_dict``, never pickle)."""
        from sammerge.io import load_state_dict
        pre = load_state_dict(pretrained_path, expected_sha256=pretrained_sha256)
        ft = load_state_dict(finetuned_path, expected_sha256=finetuned_sha256)
        return cls(pretrained=pre, finetuned=ft)

    def keys(self):
        return self.vector.keys()

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.vector[key]

    def __len__(self) -> int:
        return len(self.vector)

    def _binary(self, other: "TaskVector", sign: float) -> "TaskVector":
        if not isinstance(other, TaskVector):
            return NotImplemented
        check_compatible([self.vector, other.vector], ["left task vector", "right task vector"],
                         check_finite=False)
        return TaskVector({k: v + sign * other.vector[k] for k, v in self.vector.items()})

    def __add__(self, other):
        return self._binary(other, 1.0)

    def __radd__(self, other):
        if isinstance(other, numbers.Number) and other == 0:  # sum([...]) support
            return self
        return self.__add__(other)

    def __sub__(self, other):
        return self._binary(other, -1.0)

    def __neg__(self) -> "TaskVector":
        return TaskVector({k: -v for k, v in self.vector.items()})

    def __mul__(self, scalar) -> "TaskVector":
        if isinstance(scalar, bool) or not isinstance(scalar, numbers.Real):
            return NotImplemented
        s = _check_coefficients([scalar], "scalar")[0]
        return TaskVector({k: v * s for k, v in self.vector.items()})

    __rmul__ = __mul__

    def norm(self) -> float:
        return float(torch.sqrt(sum((v.float() ** 2).sum() for v in self.vector.values())))

    def apply_to(self, pretrained: Mapping[str, torch.Tensor], scaling_coef: float = 1.0) -> StateDict:
        """θ_0 + scaling_coef · τ as a new state dict."""
        return apply_task_vector(pretrained, self.vector, scaling_coef)

    def __repr__(self) -> str:
        n = sum(v.numel() for v in self.vector.values())
        return f"TaskVector({len(self.vector)} tensors, {n} values)"


def _as_dict(tv) -> Mapping[str, torch.Tensor]:
    return tv.vector if isinstance(tv, TaskVector) else tv


# ----------------------------------------------------------------------------------------------
# fast path
# ----------------------------------------------------------------------------------------------

def linear_combination(pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                       coefficients: Sequence[float], validate: bool = True) -> StateDict:
    """θ = θ_0 + Σ_t c_t τ_t (fast path: one fused ``add``/``mul`` per key and task, no element loops).

    Pass ``validate=False`` in hot loops once inputs have been checked (coefficients are always checked).
    """
    task_vectors = [_as_dict(tv) for tv in task_vectors]
    coefs = _check_coefficients(coefficients, "coefficients")
    if validate:
        check_task_vectors(pretrained, task_vectors)
    elif not task_vectors:
        raise MergeError("empty task set: select at least one task to merge")
    if len(coefs) != len(task_vectors):
        raise MergeError(f"{len(coefs)} coefficients given for {len(task_vectors)} task vectors")
    out: StateDict = {}
    for key, base in pretrained.items():
        if not base.is_floating_point():
            out[key] = base.clone()
            continue
        acc = base.float().clone() if base.dtype != torch.float32 else base.clone()
        for c, tv in zip(coefs, task_vectors):
            if c != 0.0:
                acc.add_(tv[key], alpha=c)
        out[key] = acc.to(base.dtype)
    return out


# ----------------------------------------------------------------------------------------------
# sparsification primitives (per tensor, batched over tasks)
# ----------------------------------------------------------------------------------------------

def _topk_mask_rows(absval: torch.Tensor, k: Sequence[int] | int) -> torch.Tensor:
    """Boolean mask keeping, in each row of ``absval`` [R, n], the ``k`` (per row) largest entries.

    Exactly ``k`` entries are kept; ties at the threshold are broken by lowest flat index, so the
    result is deterministic. O(n) per row (one batched ``kthvalue`` per distinct k), no sorting.
    """
    rows, n = absval.shape
    ks = [int(k)] * rows if isinstance(k, (int, numbers.Integral)) else [int(v) for v in k]
    mask = torch.zeros_like(absval, dtype=torch.bool)
    for kr in sorted(set(ks)):
        idx = [r for r in range(rows) if ks[r] == kr]
        if kr <= 0:
            continue
        if kr >= n:
            mask[idx] = True
            continue
        sub = absval[idx] if len(idx) < rows else absval
        thr = torch.kthvalue(sub, n - kr + 1, dim=1, keepdim=True).values  # the kr-th largest value
        above = sub > thr
        need = kr - above.sum(1, keepdim=True)
        eq = sub == thr
        keep = above | (eq & (torch.cumsum(eq, 1) <= need))
        if len(idx) < rows:
            mask[idx] = keep
        else:
            mask = keep
    return mask


def trim_magnitude(tv: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``max(1, int(density·n))`` largest-|value| entries of one tensor, zero the rest (TIES trim).

    Same count as mergekit 0.1.5 ``magnitude`` sparsification (a positive density keeps at least one entry).
    """
    if density >= 1.0:
        return tv.clone()
    n = tv.numel()
    k = max(1, int(density * n)) if n > 0 else 0
    mask = _topk_mask_rows(tv.detach().abs().reshape(1, -1).float(), k).reshape(tv.shape)
    return tv * mask


def breadcrumbs_mask(absval: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Mask over a 1-D |τ| keeping ranks [n_top, n_top + n_keep) by descending magnitude.

    ``n_keep = int(density·n)``, ``n_top = int(gamma·n)`` (reduced if ``n_top + n_keep > n``).
    """
    n = absval.numel()
    n_keep = int(density * n)
    n_top = int(gamma * n)
    if n_top + n_keep > n:
        n_top = n - n_keep
    row = absval.reshape(1, -1)
    top_plus = _topk_mask_rows(row, n_top + n_keep)
    top = _topk_mask_rows(row, n_top)
    return (top_plus & ~top).reshape(absval.shape)


def _key_seed(seed: int, task_id: str, key: str) -> int:
    digest = hashlib.sha256(f"sammerge-dare\x00{seed}\x00{task_id}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def dare_drop(tv: torch.Tensor, density: float, seed: int, task_id: str, key: str) -> torch.Tensor:
    """DARE on one tensor: keep each entry with probability ``density``, rescale survivors by 1/density.

    The random mask comes from a generator seeded by (seed, task_id, key) only, so it does not depend
    on the order of keys or on which other tasks are merged.
    """
    if density >= 1.0:
        return tv.clone()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(_key_seed(seed, task_id, key))
    keep = torch.rand(tv.shape, generator=gen) < density
    return tv.float() * keep.to(tv.device) / density


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


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: a typed function plus its parameter schema."""
    name: str
    label: str
    description: str
    fn: Callable[..., StateDict]
    params: tuple[ParamSpec, ...]
    mergekit_name: str | None = None
    reference: str = ""
    validator: Callable[[dict[str, Any]], None] | None = None
    _argnames: dict[str, str] = field(default_factory=dict, repr=False)
    _wants_task_ids: bool = False

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
        raise ConfigError(f"merge method '{self.name}' has no parameter '{name}' (known: {known})")

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
                raise ConfigError(f"unknown parameter '{name}' for merge method '{self.name}' "
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

    def __call__(self, pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                 task_ids: Sequence[str] | None = None, validate: bool = True, **params) -> StateDict:
        """Merge: ``θ = method(θ_0, [τ_1..τ_T], **params)``.

        ``task_ids`` (optional, e.g. task names) identify tasks for seeded randomness (DARE) so a task's
        drop mask does not change when other tasks are added or removed. ``validate=False`` skips the
        key/shape/finiteness scan of the inputs (parameters are always validated).
        """
        task_vectors = [_as_dict(tv) for tv in task_vectors] if isinstance(task_vectors, (list, tuple)) \
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
        if self._wants_task_ids:
            kwargs["task_ids"] = [str(t) for t in task_ids] if task_ids is not None \
                else [str(i) for i in range(len(task_vectors))]
        return self.fn(pretrained, list(task_vectors), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "description": self.description,
                "mergekit_name": self.mergekit_name, "reference": self.reference,
                "params": [p.to_dict() for p in self.params]}


MERGE_METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, label: str, description: str, mergekit_name: str | None = None,
                 reference: str = "", validator: Callable[[dict[str, Any]], None] | None = None):
    """Register ``fn(pretrained, task_vectors, *, <typed params>)`` in :data:`MERGE_METHODS`."""
    def decorate(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        args = list(sig.parameters.values())
        if len(args) < 2:
            raise TypeError(f"merge method '{name}' must take (pretrained, task_vectors, ...)")
        specs, argnames, wants_ids = [], {}, False
        for p in args[2:]:
            if p.name == "task_ids":
                wants_ids = True
                continue
            spec = _spec_from_annotation(p.name, hints[p.name], p.default)
            specs.append(spec)
            argnames[spec.name] = p.name
        if name in MERGE_METHODS:
            raise ValueError(f"merge method '{name}' registered twice")
        MERGE_METHODS[name] = MergeMethod(name=name, label=label, description=description, fn=fn,
                                          params=tuple(specs), mergekit_name=mergekit_name,
                                          reference=reference, validator=validator,
                                          _argnames=argnames, _wants_task_ids=wants_ids)
        return fn
    return decorate


def get_method(name: str) -> MergeMethod:
    """Look up a merge method; unknown name → ConfigError listing the known ones."""
    try:
        return MERGE_METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown merge method '{name}' (known: {', '.join(MERGE_METHODS)})") from None


def list_methods() -> list[MergeMethod]:
    return list(MERGE_METHODS.values())


# ----------------------------------------------------------------------------------------------
# shared parameter annotations
# ----------------------------------------------------------------------------------------------

Lambda = Annotated[float, Param(ui_low=0.0, ui_high=2.0, step=0.05, label="λ (scaling)", mergekit_name="lambda",
                                help="Scaling coefficient λ applied to the merged task vector (mergekit 'lambda').")]
Weights = Annotated[list[float] | None, Param(
    ui_low=0.0, ui_high=2.0, step=0.05, entry_default=1.0, label="per-task weight", mergekit_name="weight",
    help="One weight w_t per task, multiplied into its task vector (mergekit 'weight'); default 1 each.")]
Density = Annotated[float, Param(
    low=0.0, high=1.0, low_exclusive=True, ui_low=0.05, step=0.05, label="density", mergekit_name="density",
    help="Fraction of entries of each task vector that is kept, in (0, 1].")]
Densities = Annotated[list[float] | None, Param(
    low=0.0, high=1.0, low_exclusive=True, ui_low=0.05, step=0.05, label="per-task density", mergekit_name="density",
    help="Optional per-task override of density (mergekit per-model 'density'); default: the global density.")]
Seed = Annotated[int, Param(low=0, high=2**31 - 1, ui_high=1000, step=1, label="seed",
                            help="Seed of the random drop masks (one generator per task and tensor).")]


def _normalize_help(default: bool) -> str:
    return (f"Divide the weighted sum by the sum of the weights (mergekit 'normalize'; default {str(default).lower()}).")


def _weights(weights: list[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise MergeError(f"{len(weights)} weights given for {n} task vectors")
    return _check_coefficients(weights, "weights")


def _densities(densities: list[float] | None, density: float, n: int) -> list[float]:
    if densities is None:
        return [density] * n
    if len(densities) != n:
        raise MergeError(f"{len(densities)} densities given for {n} task vectors")
    return [density if d is None else float(d) for d in densities]


def _combine(pretrained: Mapping[str, torch.Tensor], sparse_tvs: Sequence[Mapping[str, torch.Tensor]],
             weights: Sequence[float], lam: float, normalize: bool, consensus: bool) -> StateDict:
    """Generalized task arithmetic on (already sparsified) task vectors, mergekit 0.1.5 semantics.

    Weighted deltas d_t = w_t τ̂_t. Without consensus: Δ = Σ_t d_t, divisor Σ_t w_t. With consensus
    (TIES sign election): γ = sign(Σ_t d_t) (0 → +), mask_t = [sign(d_t) = γ], Δ = Σ_t d_t mask_t,
    divisor Σ_t w_t mask_t (0 → 1). If normalize: Δ /= divisor. θ = θ_0 + λ Δ.
    """
    out: StateDict = {}
    w = torch.tensor(list(weights), dtype=torch.float32)
    wsum = float(w.sum())
    for key, base in pretrained.items():
        if not base.is_floating_point():
            out[key] = base.clone()
            continue
        deltas = torch.stack([tv[key].float() for tv in sparse_tvs], 0)
        wv = w.view(-1, *([1] * base.dim()))
        weighted = deltas * wv
        if consensus:
            majority = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
            mask = torch.sign(weighted) == majority
            mixed = (weighted * mask).sum(0)
            if normalize:
                divisor = (wv * mask).sum(0)
                divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
                mixed = mixed / divisor
        else:
            mixed = weighted.sum(0)
            if normalize:
                mixed = mixed / (wsum if abs(wsum) >= 1e-8 else 1.0)
        out[key] = (base.float() + lam * mixed).to(base.dtype)
    return out


def _trim_all(pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
              densities: Sequence[float], scope: str) -> list[StateDict]:
    """TIES trim of every task vector: per tensor (``int(d·n)`` per tensor) or per model (top-k overall)."""
    fkeys = _float_keys(pretrained)
    out: list[StateDict] = []
    for tv, d in zip(task_vectors, densities):
        if d >= 1.0:
            out.append({k: tv[k] for k in fkeys})
            continue
        if scope == "tensor":
            out.append(None)  # filled below, batched over tasks
        else:
            flat = torch.cat([tv[k].detach().float().reshape(-1) for k in fkeys])
            k_keep = max(1, int(d * flat.numel())) if flat.numel() else 0
            mask = _topk_mask_rows(flat.abs().reshape(1, -1), k_keep).reshape(-1)
            res, offset = {}, 0
            for k in fkeys:
                n = tv[k].numel()
                res[k] = tv[k] * mask[offset:offset + n].reshape(tv[k].shape)
                offset += n
            out.append(res)
    if scope == "tensor":
        todo = [i for i, d in enumerate(densities) if d < 1.0]
        if todo:
            trimmed = {i: {} for i in todo}
            for key in fkeys:
                n = pretrained[key].numel()
                stack = torch.stack([task_vectors[i][key].detach().float().reshape(-1) for i in todo])
                ks = [max(1, int(densities[i] * n)) if n > 0 else 0 for i in todo]
                mask = _topk_mask_rows(stack.abs(), ks)
                for row, i in enumerate(todo):
                    tv = task_vectors[i][key]
                    trimmed[i][key] = tv * mask[row].reshape(tv.shape)
            for i in todo:
                out[i] = trimmed[i]
    return out


def _dare_all(pretrained, task_vectors, densities, seed, task_ids) -> list[StateDict]:
    fkeys = _float_keys(pretrained)
    return [{k: dare_drop(tv[k], d, seed, tid, k) for k in fkeys}
            for tv, d, tid in zip(task_vectors, densities, task_ids)]


# ----------------------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------------------

@merge_method(name="weight_average", label="Weight averaging",
              description="Average of the fine-tuned weights: θ0 + Σ w_t τ_t / Σ w_t (equal weights: the plain mean).",
              mergekit_name="linear", reference="https://arxiv.org/abs/2203.05482")
def weight_average(pretrained: StateDict, task_vectors: list[StateDict], weights: Weights = None) -> StateDict:
    """θ = θ_0 + Σ_t w_t τ_t / Σ_t w_t  ==  Σ_t w_t θ_t / Σ_t w_t (w_t = 1: the mean of the fine-tuned weights).

    Equals mergekit ``linear`` over the fine-tuned models (normalize: true).
    """
    w = _weights(weights, len(task_vectors))
    if abs(sum(w)) < 1e-8:
        raise MergeError("weight_average: the weights sum to 0")
    return _combine(pretrained, task_vectors, w, 1.0, normalize=True, consensus=False)


@merge_method(name="task_arithmetic", label="Task arithmetic",
              description="θ0 + λ Σ w_t τ_t (optionally divided by Σ w_t); one shared λ and/or one weight per task.",
              mergekit_name="task_arithmetic", reference="https://arxiv.org/abs/2212.04089")
def task_arithmetic(pretrained: StateDict, task_vectors: list[StateDict],
                    lambda_: Lambda = 1.0, weights: Weights = None,
                    normalize: Annotated[bool, Param(label="normalize", mergekit_name="normalize",
                                                     help=_normalize_help(False))] = False) -> StateDict:
    """θ = θ_0 + λ Σ_t w_t τ_t, or θ_0 + λ Σ_t w_t τ_t / Σ_t w_t when ``normalize``.

    Equals mergekit ``task_arithmetic`` (``lambda``, per-model ``weight``, ``normalize``, default false).
    """
    w = _weights(weights, len(task_vectors))
    return _combine(pretrained, task_vectors, w, lambda_, normalize=normalize, consensus=False)


TrimScope = Annotated[Literal["tensor", "model"], Param(
    label="trim scope",
    help="'tensor' (default, mergekit 0.1.5): keep max(1, int(density·n)) entries of each tensor; "
         "'model' (original TIES): keep the top-k entries of the whole flattened task vector.")]


@merge_method(name="ties", label="TIES merging",
              description="Trim each task vector to its top-density entries by |value|, elect a sign per entry, "
                          "average the agreeing entries (disjoint mean), scale by λ.",
              mergekit_name="ties", reference="https://arxiv.org/abs/2306.01708")
def ties(pretrained: StateDict, task_vectors: list[StateDict], density: Density = 0.2, lambda_: Lambda = 1.0,
         weights: Weights = None, densities: Densities = None, trim_scope: TrimScope = "tensor",
         normalize: Annotated[bool, Param(label="normalize (disjoint mean)", mergekit_name="normalize",
                                          help=_normalize_help(True) + " False: disjoint sum.")] = True) -> StateDict:
    """TIES: τ̂_t = trim(τ_t, density); d_t = w_t τ̂_t; γ = sign(Σ_t d_t) (0 → +);
    τ_m = Σ_t d_t [sign d_t = γ] / Σ_t w_t [sign d_t = γ]  (disjoint mean; a sum if not ``normalize``);
    θ = θ_0 + λ τ_m.

    ``trim_scope="tensor"`` (default) matches mergekit 0.1.5 ``ties``: exactly max(1, int(density·n)) entries of each
    tensor are kept (ties at the threshold broken by lowest index). ``"model"`` is the original paper's
    top-k over the whole flattened task vector.
    """
    n = len(task_vectors)
    w = _weights(weights, n)
    trimmed = _trim_all(pretrained, task_vectors, _densities(densities, density, n), trim_scope)
    return _combine(pretrained, trimmed, w, lambda_, normalize=normalize, consensus=True)


@merge_method(name="dare_linear", label="DARE + task arithmetic",
              description="Randomly drop 1−density of each task vector's entries, rescale survivors by 1/density, "
                          "then task arithmetic.",
              mergekit_name="dare_linear", reference="https://arxiv.org/abs/2311.03099")
def dare_linear(pretrained: StateDict, task_vectors: list[StateDict], task_ids: list[str],
                density: Density = 0.5, lambda_: Lambda = 1.0, weights: Weights = None, densities: Densities = None,
                seed: Seed = 0,
                normalize: Annotated[bool, Param(label="normalize", mergekit_name="normalize",
                                                 help=_normalize_help(False))] = False) -> StateDict:
    """DARE: τ̃_t = m_t ⊙ τ_t / density with m_t ~ Bernoulli(density) per entry (E[τ̃_t] = τ_t);
    θ = θ_0 + λ Σ_t w_t τ̃_t (/ Σ_t w_t if ``normalize``).

    Masks come from one generator per (seed, task id, tensor key): reproducible and independent of dict order.
    """
    n = len(task_vectors)
    dropped = _dare_all(pretrained, task_vectors, _densities(densities, density, n), seed, task_ids)
    return _combine(pretrained, dropped, _weights(weights, n), lambda_, normalize=normalize, consensus=False)


@merge_method(name="dare_ties", label="DARE + TIES",
              description="Randomly drop 1−density of each task vector's entries, rescale by 1/density, "
                          "then TIES sign election and disjoint merge.",
              mergekit_name="dare_ties", reference="https://arxiv.org/abs/2311.03099")
def dare_ties(pretrained: StateDict, task_vectors: list[StateDict], task_ids: list[str],
              density: Density = 0.5, lambda_: Lambda = 1.0, weights: Weights = None, densities: Densities = None,
              seed: Seed = 0,
              normalize: Annotated[bool, Param(label="normalize (disjoint mean)", mergekit_name="normalize",
                                               help=_normalize_help(False))] = False) -> StateDict:
    """DARE-TIES: τ̃_t = m_t ⊙ τ_t / density; d_t = w_t τ̃_t; γ = sign(Σ d_t);
    τ_m = Σ_t d_t [sign d_t = γ] (/ Σ_t w_t [sign d_t = γ] if ``normalize``); θ = θ_0 + λ τ_m.

    ``normalize`` defaults to false as in mergekit 0.1.5 ``dare_ties``.
    """
    n = len(task_vectors)
    dropped = _dare_all(pretrained, task_vectors, _densities(densities, density, n), seed, task_ids)
    return _combine(pretrained, dropped, _weights(weights, n), lambda_, normalize=normalize, consensus=True)


def _check_breadcrumbs(params: dict[str, Any]) -> None:
    dens = [params["density"]] + [d for d in (params.get("densities") or []) if d is not None]
    for d in dens:
        if d + params["gamma"] > 1.0 + 1e-12:
            raise ConfigError(f"parameter 'gamma' = {params['gamma']} plus density {d} exceeds 1")


@merge_method(name="breadcrumbs", label="Model Breadcrumbs",
              description="Per tensor, drop the largest gamma fraction (outliers) and the smallest entries so that "
                          "density remain, then task arithmetic.",
              mergekit_name="breadcrumbs", reference="https://arxiv.org/abs/2312.06795",
              validator=_check_breadcrumbs)
def breadcrumbs(pretrained: StateDict, task_vectors: list[StateDict], density: Density = 0.9,
                gamma: Annotated[float, Param(low=0.0, high=1.0, high_exclusive=True, step=0.01, label="gamma",
                                              mergekit_name="gamma",
                                              help="Fraction of largest-|value| entries of each tensor dropped "
                                                   "as outliers (density + gamma ≤ 1).")] = 0.01,
                lambda_: Lambda = 1.0, weights: Weights = None, densities: Densities = None,
                normalize: Annotated[bool, Param(label="normalize", mergekit_name="normalize",
                                                 help=_normalize_help(False))] = False) -> StateDict:
    """Breadcrumbs: per tensor of n entries sorted by |τ| descending, keep ranks [int(γn), int(γn)+int(density·n))
    (the top int(γn) outliers and the small tail are zeroed); θ = θ_0 + λ Σ_t w_t τ̂_t (/ Σ w_t if ``normalize``).
    """
    n = len(task_vectors)
    fkeys = _float_keys(pretrained)
    sparse = []
    for tv, d in zip(task_vectors, _densities(densities, density, n)):
        if d + gamma > 1.0 + 1e-12:
            raise MergeError(f"breadcrumbs: density {d} + gamma {gamma} exceeds 1")
        sparse.append({k: tv[k] * breadcrumbs_mask(tv[k].detach().abs().float(), d, gamma) for k in fkeys})
    return _combine(pretrained, sparse, _weights(weights, n), lambda_, normalize=normalize, consensus=False)


@merge_method(name="model_stock", label="Model Stock",
              description="Per tensor, interpolate between the average fine-tuned weights and θ0 with a ratio set by "
                          "the angle between task vectors.",
              mergekit_name="model_stock", reference="https://arxiv.org/abs/2403.19522")
def model_stock(pretrained: StateDict, task_vectors: list[StateDict]) -> StateDict:
    """Model Stock: per tensor, cos = mean pairwise cosine of the task vectors (1 for one task),
    t = T·cos / (1 + (T−1)·cos) (t = 0 where the denominator vanishes); θ = θ_0 + t · (1/T) Σ_t τ_t.

    Same formula as mergekit 0.1.5 ``model_stock`` (filter_wise: false); mergekit needs ≥ 2 fine-tuned models.
    """
    T = len(task_vectors)
    out: StateDict = {}
    for key, base in pretrained.items():
        if not base.is_floating_point():
            out[key] = base.clone()
            continue
        flat = torch.stack([tv[key].float().reshape(-1) for tv in task_vectors], 0)
        if T == 1:
            cos = 1.0
        else:
            norms = flat.norm(dim=1)
            dots = flat @ flat.T
            cosm = (dots / (norms[:, None] * norms[None, :]).clamp_min(1e-6)).clamp(-1, 1)
            iu = torch.triu_indices(T, T, offset=1)
            cos = float(cosm[iu[0], iu[1]].mean())
        denom = 1 + (T - 1) * cos
        t = 0.0 if abs(denom) < 1e-6 else T * cos / denom
        mean = flat.mean(0).reshape(base.shape)
        out[key] = (base.float() + t * mean).to(base.dtype)
    return out
