"""Coefficient learners (e.g. AdaMerging): a settings schema plus a function of a zoo that returns a merge spec.

Registered with :func:`coefficient_learner` by the module that defines them (``sammerge.evaluation.adamerging``);
look them up with :func:`sammerge.evaluation.learners.get_learner`, which imports those modules.
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

from sammerge.merging.schema import ParamSpec, _Schema, spec_from_annotation

__all__ = ["CoefficientLearner", "coefficient_learner", "LEARNERS"]

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
_NOT_SETTINGS = {"progress", "should_stop"}


def coefficient_learner(name: str, label: str, description: str, reference: str = "",
                        validator: Callable[[dict[str, Any]], None] | None = None):
    """Register ``fn(zoo, variants, tasks, *, <typed settings>, progress, should_stop)``: its keyword-only typed
    arguments (except ``progress``/``should_stop``) are the settings schema, read like a merge method's."""
    def decorate(fn):
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        specs = tuple(spec_from_annotation(p.name, hints[p.name], p.default) for p in sig.parameters.values()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _NOT_SETTINGS)
        if name in LEARNERS:
            raise ValueError(f"coefficient learner '{name}' registered twice")
        LEARNERS[name] = CoefficientLearner(name=name, label=label, description=description, fn=fn, params=specs,
                                            reference=reference, validator=validator)
        return fn
    return decorate
