"""The merge-method registry: a method is a typed function, its parameters a schema (:mod:`sammerge.merging.schema`).

A method declares here, in one place, everything the CLI, the app, exports, caches and the paper table read:
its parameters (global and per-task), whether λ is a final scale of a merged direction, its linear coefficients,
its data needs (none / unlabeled images, with the function computing its statistics), whether it is static or
task-routed, and its mergekit mapping or none. A method that takes ``key_weights`` accepts per-layer coefficients:
``method(..., layer_weights=[{group: s}, ...])`` multiplies task t's weight by s_{t,g} on the keys of layer group g
(:mod:`sammerge.merging.layers`).
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import torch

from sammerge.errors import ConfigError, MergeError
from sammerge.merging.schema import Param, ParamSpec, _Schema, spec_from_annotation
from sammerge.merging.task_vector import StateDict, as_state_dict, check_coefficients, check_task_vectors

__all__ = ["Param", "ParamSpec", "Mergekit", "MergeMethod", "merge_method", "merge_direction", "scaled_direction",
           "MERGE_METHODS", "get_method", "list_methods", "table_methods"]


@dataclass(frozen=True)
class Mergekit:
    """A method's mergekit equivalent: how it is written as, and read from, a mergekit config.

    ``model_keys``: the mergekit keys under each model's ``parameters`` — a per-task parameter of ours with that
    ``mergekit_name`` (its global namesake, e.g. ``density``, fills the tasks without a value), or a global written
    on every model (e.g. breadcrumbs' ``gamma``); every other parameter with a ``mergekit_name`` is a top-level
    ``parameters`` entry. ``model_defaults``: mergekit's value of a model key a config leaves out. ``fixed``:
    top-level values sammerge always means (written on export; an import must not contradict them).
    ``base``: ``"theta0"`` (base_model is θ0), ``"none"`` (no base_model: mergekit combines the models, e.g.
    ``linear``), ``"first_model"`` (mergekit's base_model is the first model, e.g. ``slerp``).
    ``notes(kwargs)``: lines saying where mergekit's semantics differ (comments of the exported YAML).
    ``check_import(top, weights)``: extra checks of an imported config (ConfigError)."""
    name: str
    model_keys: tuple[str, ...] = ("weight",)
    model_defaults: Mapping[str, Any] = field(default_factory=lambda: {"weight": 1.0, "density": 1.0})
    fixed: Mapping[str, Any] = field(default_factory=dict)
    base: str = "theta0"
    notes: Callable[[Mapping[str, Any]], list[str]] | None = field(default=None, repr=False)
    check_import: Callable[[Mapping[str, Any], list[float]], None] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class MergeMethod(_Schema):
    """A registered merge method: a typed function plus its parameter schema."""
    name: str
    label: str
    description: str
    fn: Callable[..., StateDict]
    params: tuple[ParamSpec, ...]
    mergekit: Mergekit | None = None
    reference: str = ""
    validator: Callable[[dict[str, Any]], None] | None = None
    lambda_range: tuple[float, float, float] | None = None
    lambda_is_scale: bool = False
    direction_fn: Callable[..., StateDict] | None = field(default=None, repr=False)
    linear_coefficients_fn: Callable[[dict[str, Any], int], list[float] | None] | None = field(default=None, repr=False)
    data: str = "none"
    routing: str = "static"
    statistics: Any = field(default=None, repr=False)
    task_count: tuple[int, int | None] = (1, None)
    _argnames: dict[str, str] = field(default_factory=dict, repr=False)
    _wants_task_ids: bool = False
    _wants_key_weights: bool = False
    _wants_statistics: bool = False

    @property
    def mergekit_name(self) -> str | None:
        """mergekit's ``merge_method`` for this method; None: no mergekit equivalent."""
        return self.mergekit.name if self.mergekit else None

    @property
    def is_static(self) -> bool:
        """One merged model for every task (False: task-routed, one model per task)."""
        return self.routing == "static"

    def accepts_tasks(self, n: int) -> bool:
        """Whether the method merges ``n`` task vectors (``task_count`` = (min, max or None))."""
        lo, hi = self.task_count
        return n >= lo and (hi is None or n <= hi)

    def task_count_text(self) -> str:
        lo, hi = self.task_count
        return f"exactly {lo}" if hi == lo else (f"at least {lo}" if hi is None else f"{lo} to {hi}")

    @property
    def supports_layer_weights(self) -> bool:
        """Whether the method takes per-layer coefficients (``layer_weights``)."""
        return self._wants_key_weights

    @property
    def has_lambda(self) -> bool:
        return any(p.name == "lambda" for p in self.params)

    @property
    def needs_data(self) -> bool:
        """True for methods that read unlabeled inputs (statistics of the zoo's images), never labels."""
        return self.data != "none"

    def linear_coefficients(self, kwargs: Mapping[str, Any], n_tasks: int) -> list[float] | None:
        """c_t with merge = θ0 + Σ_t c_t τ_t for the complete kwargs of a call (``MergeSpec.method_kwargs``), for
        methods that declare such a combination; None otherwise (or with per-layer coefficients)."""
        if self.linear_coefficients_fn is None or kwargs.get("layer_weights"):
            return None
        return self.linear_coefficients_fn(dict(kwargs), n_tasks)

    def direction(self, pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                  task_ids: Sequence[str] | None = None, **params) -> StateDict:
        """τ_merged with merge(λ) = θ0 + λ τ_merged, for methods whose λ is a final scale (``lambda_is_scale``).

        Methods registered with :func:`merge_direction` compute it directly; others as merge(λ = 1) − θ0 (a method
        without λ: merge − θ0, its one point)."""
        if self.has_lambda and not self.lambda_is_scale:
            raise MergeError(f"merge method '{self.name}': λ is not a final scale of a merged direction")
        params = {k: v for k, v in params.items() if k != "lambda"}
        if self.has_lambda:
            params["lambda"] = 1.0
        merged = self(pretrained, task_vectors, task_ids=task_ids, **params, _direction=True)
        if self.direction_fn is not None:
            return merged
        from sammerge.merging.task_vector import task_vector
        return task_vector(merged, pretrained, check_finite=False)

    def lambda_grid(self) -> list[float]:
        """The λ values that sweeps, searches and the paper table try: low..high by step ([] without λ)."""
        if self.lambda_range is None:
            return []
        lo, hi, step = self.lambda_range
        return [round(lo + step * i, 6) for i in range(int(round((hi - lo) / step)) + 1)]

    def __call__(self, pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                 task_ids: Sequence[str] | None = None, validate: bool = True,
                 layer_weights: Sequence[Mapping[str, float] | None] | None = None, statistics=None,
                 _direction: bool = False, **params) -> StateDict:
        """Merge: ``θ = method(θ_0, [τ_1..τ_T], **params)``.

        ``task_ids`` (optional, e.g. task names) identify tasks for seeded randomness (DARE) so a task's
        drop mask does not change when other tasks are added or removed. ``validate=False`` skips the
        key/shape/finiteness scan of the inputs (parameters are always validated). ``layer_weights``: one
        ``{layer group: s}`` (or None) per task; task t's weight on the keys of group g is multiplied by s_{t,g}
        (groups not named: 1). Only for methods with ``key_weights`` (MergeError otherwise). ``statistics``: one
        mapping per task of the data statistics the method declares (``data != "none"``, e.g. RegMean's Gram
        matrices), computed from unlabeled inputs by ``method.statistics``.
        """
        task_vectors = [as_state_dict(tv) for tv in task_vectors] if isinstance(task_vectors, (list, tuple)) \
            else task_vectors
        if validate:
            check_task_vectors(pretrained, task_vectors)
        elif not task_vectors:
            raise MergeError("empty task set: select at least one task to merge")
        if not self.accepts_tasks(len(task_vectors)):
            raise MergeError(f"merge method '{self.name}' merges {self.task_count_text()} task vectors "
                             f"(models): got {len(task_vectors)}")
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
        if self._wants_statistics:
            if statistics is None or len(statistics) != len(task_vectors):
                raise MergeError(f"merge method '{self.name}' needs data statistics of every task "
                                 f"({self.data}): got {0 if statistics is None else len(statistics)} for "
                                 f"{len(task_vectors)} task vectors")
            kwargs["statistics"] = list(statistics)
        if self.direction_fn is not None:
            lam = kwargs.pop("lambda_")
            direction = self.direction_fn(pretrained, list(task_vectors), **kwargs)
            return direction if _direction else scaled_direction(pretrained, direction, lam)
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
                "layer_weights": self.supports_layer_weights, "lambda_is_scale": self.lambda_is_scale,
                "linear": self.linear_coefficients_fn is not None, "data": self.data, "routing": self.routing,
                "lambda_grid": self.lambda_grid(), "task_count": list(self.task_count),
                "params": [p.to_dict() for p in self.params]}


MERGE_METHODS: dict[str, MergeMethod] = {}
DATA_NEEDS = ("none", "unlabeled_images")
ROUTINGS = ("static", "task_routed")
_LAMBDA_META = Param(ui_low=0.0, ui_high=2.0, step=0.05, label="λ (scaling)", mergekit_name="lambda",
                     help="Scaling coefficient λ of the merged task vector: θ = θ0 + λ τ_merged (mergekit 'lambda').")


def scaled_direction(pretrained: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor], lam: float) -> StateDict:
    """θ0 + λ τ on float keys (others copied), in θ0's dtype."""
    out: StateDict = {}
    for key, base in pretrained.items():
        if base.is_floating_point() and key in direction:
            out[key] = (base.float() + lam * direction[key].float()).to(base.dtype)
        else:
            out[key] = base.clone()
    return out


def _read_signature(name: str, fn: Callable, lambda_range) -> tuple[list[ParamSpec], dict[str, str], set[str]]:
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    args = list(sig.parameters.values())
    if len(args) < 2:
        raise TypeError(f"merge method '{name}' must take (pretrained, task_vectors, ...)")
    specs, argnames, special = [], {}, set()
    for p in args[2:]:
        if p.name in ("task_ids", "key_weights", "statistics"):
            special.add(p.name)
            continue
        spec = spec_from_annotation(p.name, hints[p.name], p.default)
        if spec.name == "lambda":
            if lambda_range is None:
                raise TypeError(f"merge method '{name}' has λ but declares no lambda_range")
            spec = replace(spec, ui_low=lambda_range[0], ui_high=max(2.0, lambda_range[1]))
        specs.append(spec)
        argnames[spec.name] = p.name
    return specs, argnames, special


def _register(name: str, fn: Callable, specs, argnames, special, *, data: str, routing: str, statistics,
              mergekit: str | Mergekit | None, **fields) -> None:
    if name in MERGE_METHODS:
        raise ValueError(f"merge method '{name}' registered twice")
    if data not in DATA_NEEDS:
        raise TypeError(f"merge method '{name}': data must be one of {DATA_NEEDS}")
    if routing not in ROUTINGS:
        raise TypeError(f"merge method '{name}': routing must be one of {ROUTINGS}")
    if (data != "none") != ("statistics" in special) or (data != "none" and statistics is None):
        raise TypeError(f"merge method '{name}': a method that needs data takes `statistics` and declares the "
                        "function that computes them (statistics=...)")
    if isinstance(mergekit, str):
        mergekit = Mergekit(mergekit)
    MERGE_METHODS[name] = MergeMethod(name=name, fn=fn, params=tuple(specs), data=data, routing=routing,
                                      mergekit=mergekit,
                                      statistics=statistics, _argnames=argnames,
                                      _wants_task_ids="task_ids" in special,
                                      _wants_key_weights="key_weights" in special,
                                      _wants_statistics="statistics" in special, **fields)


def merge_method(name: str, label: str, description: str, mergekit: str | Mergekit | None = None,
                 reference: str = "", validator: Callable[[dict[str, Any]], None] | None = None,
                 lambda_range: tuple[float, float, float] | None = None, lambda_is_scale: bool = False,
                 linear_coefficients: Callable[[dict[str, Any], int], list[float] | None] | None = None,
                 data: str = "none", routing: str = "static", statistics: Any = None,
                 mergekit_name: str | None = None, task_count: tuple[int, int | None] = (1, None)):
    """Register ``fn(pretrained, task_vectors, *, <typed params>)`` in :data:`MERGE_METHODS`.

    ``lambda_range`` = (low, high, step) of the λ grid searched for this method (required iff it has λ);
    the λ slider spans at least [low, max(2, high)]. ``lambda_is_scale``: merge(λ) = θ0 + λ·τ_merged(other
    parameters), so a λ move needs no new merge. ``linear_coefficients(kwargs, T)``: c_t with merge = θ0 + Σ c_t τ_t
    (instant preview on linearized zoos). ``data``: "none" or "unlabeled_images" (then ``fn`` takes ``statistics``,
    computed by ``statistics``). ``routing``: "static" (one model) or "task_routed" (one model per task).
    ``mergekit``: mergekit's method name, or a :class:`Mergekit` mapping; None: no mergekit equivalent (exports
    say so); ``mergekit_name``: the same, by name only. ``task_count``: (min, max or None) task vectors merged.
    """
    mergekit = mergekit or mergekit_name

    def decorate(fn):
        specs, argnames, special = _read_signature(name, fn, lambda_range)
        _register(name, fn, specs, argnames, special, data=data, routing=routing, statistics=statistics,
                  label=label, description=description, mergekit=mergekit, reference=reference,
                  validator=validator, lambda_range=lambda_range,
                  lambda_is_scale=lambda_is_scale and any(s.name == "lambda" for s in specs),
                  linear_coefficients_fn=linear_coefficients, task_count=task_count)
        return fn
    return decorate


def merge_direction(name: str, label: str, description: str, lambda_range: tuple[float, float, float],
                    mergekit: str | Mergekit | None = None, reference: str = "",
                    validator: Callable[[dict[str, Any]], None] | None = None, data: str = "none",
                    statistics: Any = None, lambda_default: float = 1.0, mergekit_name: str | None = None):
    """Register a method by its merged direction: ``fn(pretrained, task_vectors, *, <typed params>) -> τ_merged``
    (float keys of θ0). The registered method is θ = θ0 + λ τ_merged with a λ parameter added (default
    ``lambda_default``, grid ``lambda_range``); ``lambda_is_scale`` is declared, so λ moves never merge again.
    ``mergekit`` / ``mergekit_name``: as for :func:`merge_method`."""
    mergekit = mergekit or mergekit_name

    def decorate(fn):
        specs, argnames, special = _read_signature(name, fn, None)
        lam = ParamSpec(name="lambda", kind="float", default=float(lambda_default), step=_LAMBDA_META.step,
                        help=_LAMBDA_META.help, label=_LAMBDA_META.label, mergekit_name="lambda",
                        ui_low=lambda_range[0], ui_high=max(2.0, lambda_range[1]))
        _register(name, fn, [lam, *specs], {"lambda": "lambda_", **argnames}, special, data=data, routing="static",
                  statistics=statistics, label=label, description=description, mergekit=mergekit,
                  reference=reference, validator=validator, lambda_range=lambda_range, lambda_is_scale=True,
                  direction_fn=fn)
        return fn
    return decorate


def get_method(name: str) -> MergeMethod:
    """Look up a merge method; unknown name → ConfigError listing the known ones."""
    try:
        return MERGE_METHODS[name]
    except (KeyError, TypeError):
        from sammerge.merging.learners import LEARNERS
        hint = (f"; '{name}' learns coefficients: run it with sammerge.evaluation.learners.get_learner('{name}') "
                f"or `sammerge learn`, which gives a spec of a merge method" if name in LEARNERS else "")
        raise ConfigError(f"unknown merge method '{name}' (known: {', '.join(MERGE_METHODS)}){hint}") from None


def list_methods() -> list[MergeMethod]:
    return list(MERGE_METHODS.values())


def table_methods(n_tasks: int | None = None, with_data: bool = False) -> list[str]:
    """The methods the paper table, the seed study and sweeps run by default: every static method (that merges
    ``n_tasks`` task vectors; that reads no data unless ``with_data``), in registration order."""
    return [m.name for m in MERGE_METHODS.values() if m.is_static and (with_data or not m.needs_data)
            and (n_tasks is None or m.accepts_tasks(n_tasks))]
