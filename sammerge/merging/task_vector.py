"""Task vectors τ = θ_ft − θ0 over state dicts: the one owner of subtraction, linear combination and checks.

A *state dict* is ``dict[str, torch.Tensor]``; a *task vector* holds ``finetuned − pretrained`` for every
floating-point key (non-floating tensors such as step counters are not part of a task vector and are
copied unchanged from the base model). Every other module builds task vectors with :func:`task_vector`
and models from them with :func:`linear_combination` (θ = θ0 + Σ_t c_t τ_t).
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Mapping, Sequence

import torch

from sammerge.errors import MergeError

StateDict = dict[str, torch.Tensor]

__all__ = ["StateDict", "TaskVector", "task_vector", "apply_task_vector", "check_compatible", "check_task_vectors",
           "assert_finite", "linear_combination", "check_per_key", "float_keys", "as_state_dict", "check_coefficients"]

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
            assert_finite(sd, name)


def assert_finite(sd: Mapping[str, torch.Tensor], name: str) -> None:
    for key, value in sd.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            kind = "NaN" if bool(torch.isnan(value).any()) else "Inf"
            raise MergeError(f"{name}: tensor '{key}' contains {kind} values")


def float_keys(sd: Mapping[str, torch.Tensor]) -> list[str]:
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
        assert_finite(pretrained, "base model")
        for tv, name in zip(task_vectors, names):
            assert_finite(tv, name)


def check_coefficients(values: Iterable[float], what: str) -> list[float]:
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
    check_task_vectors(pretrained, [merged_tv], ["task vector"], check_finite=False)
    return linear_combination(pretrained, [merged_tv], [scale], validate=False)


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
        s = check_coefficients([scalar], "scalar")[0]
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


def as_state_dict(tv) -> Mapping[str, torch.Tensor]:
    return tv.vector if isinstance(tv, TaskVector) else tv


# ----------------------------------------------------------------------------------------------
# fast path
# ----------------------------------------------------------------------------------------------

def linear_combination(pretrained: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                       coefficients: Sequence[float | Mapping[str, float]], validate: bool = True) -> StateDict:
    """θ = θ_0 + Σ_t c_t τ_t (fast path: one fused ``add``/``mul`` per key and task, no element loops).

    A coefficient is one number for the whole task vector, or a mapping key → c_{t,k} for every floating key
    (per-layer coefficients: θ[k] = θ_0[k] + Σ_t c_{t,k} τ_t[k]; see :func:`sammerge.merging.layers.key_coefficients`).
    Pass ``validate=False`` in hot loops once inputs have been checked (coefficients are always checked).
    """
    task_vectors = [as_state_dict(tv) for tv in task_vectors]
    coefficients = list(coefficients)
    scalars = check_coefficients([0.0 if isinstance(c, Mapping) else c for c in coefficients], "coefficients")
    coefs = [check_per_key(c, f"coefficients[{i}]", pretrained) if isinstance(c, Mapping) else scalars[i]
             for i, c in enumerate(coefficients)]
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
            c = c[key] if isinstance(c, dict) else c
            if c != 0.0:
                acc.add_(tv[key], alpha=c)
        out[key] = acc.to(base.dtype)
    return out


def check_per_key(values: Mapping[str, float], what: str, pretrained: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-key coefficients: finite numbers for exactly the floating keys of the base (MergeError otherwise)."""
    fkeys = float_keys(pretrained)
    missing = [k for k in fkeys if k not in values]
    extra = [k for k in values if k not in pretrained]
    if missing or extra:
        parts = ([f"no coefficient for key(s) {', '.join(map(repr, missing[:5]))}"] if missing else []) + \
            ([f"unknown key(s) {', '.join(map(repr, extra[:5]))}"] if extra else [])
        raise MergeError(f"{what}: " + "; ".join(parts))
    checked = check_coefficients([values[k] for k in fkeys], what)
    return dict(zip(fkeys, checked))
