"""Look up the coefficient learners (their registry: :mod:`sammerge.merging.learners`); importing this module
registers every learner sammerge ships (AdaMerging)."""
from __future__ import annotations

from sammerge.errors import ConfigError
from sammerge.evaluation import adamerging  # noqa: F401  (registers 'adamerging')
from sammerge.merging.learners import LEARNERS, CoefficientLearner

__all__ = ["get_learner", "list_learners"]


def get_learner(name: str) -> CoefficientLearner:
    """Look up a coefficient learner; unknown name → ConfigError listing the known ones."""
    try:
        return LEARNERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown coefficient learner '{name}' (known: {', '.join(LEARNERS)})") from None


def list_learners() -> list[CoefficientLearner]:
    return list(LEARNERS.values())
