"""One planner run: measure the groups of every variant, plan them, and the report's data and page — what
``sammerge plan`` and the app's planner page both call."""
from __future__ import annotations

from dataclasses import dataclass

from sammerge.errors import ConfigError
from sammerge.merging import get_method
from sammerge.planner.compat import DEFAULT_METHODS, GroupResult, all_subsets, measure_groups, pairs
from sammerge.planner.plan import Plan, plan_groups
from sammerge.planner.report import plan_html, plan_json
from sammerge.progress import Progress

__all__ = ["PlanSettings", "PlanResult", "run_plan", "MAX_SUBSET_TASKS"]

MAX_SUBSET_TASKS = 8  # every subset up to here (255 for 8 tasks); beyond: pairs only


@dataclass(frozen=True)
class PlanSettings:
    tolerance: float = 2.0
    methods: tuple[str, ...] = DEFAULT_METHODS
    variants: tuple[str, ...] | None = None  # None: every variant of the zoo
    pairs_only: bool = False
    requests_per_day: float | None = None
    gpu_hour_cost: float | None = None

    def check(self, zoo) -> list[str]:
        """Every problem of these settings for ``zoo`` (ConfigError text), at once."""
        problems = []
        for m in self.methods:
            try:
                if not get_method(m).is_static:
                    problems.append(f"method '{m}' is task-routed (one model per task); the planner merges groups")
            except ConfigError as exc:
                problems.append(str(exc))
        unknown = [v for v in (self.variants or ()) if v not in zoo.variants]
        if unknown:
            problems.append(f"unknown variant(s) {', '.join(unknown)} (zoo has: {', '.join(zoo.variants)})")
        if not self.methods:
            problems.append("choose at least one method")
        if self.tolerance < 0:
            problems.append(f"the tolerance must be ≥ 0 points, got {self.tolerance:g}")
        for name in ("requests_per_day", "gpu_hour_cost"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name.replace('_', ' ')} must be > 0, got {value:g}")
        return problems


@dataclass(frozen=True)
class PlanResult:
    plans: dict[str, Plan]
    results: dict[str, dict[tuple[str, ...], GroupResult]]
    data: dict
    html: str


def run_plan(zoo, settings: PlanSettings, progress: Progress | None = None, should_stop=None) -> PlanResult:
    problems = settings.check(zoo)
    if problems:
        raise ConfigError("plan: " + "; ".join(problems))
    variants = list(settings.variants or zoo.variants)
    only_pairs = settings.pairs_only or len(zoo.tasks) > MAX_SUBSET_TASKS
    groups = pairs(zoo.tasks) if only_pairs else all_subsets(zoo.tasks)
    results, plans = {}, {}
    for v in variants:
        results[v] = measure_groups(zoo, v, groups, list(settings.methods), progress=progress,
                                    should_stop=should_stop)
        plans[v] = plan_groups(results[v], zoo.tasks, settings.tolerance)
    info = {"tolerance": settings.tolerance, "methods": list(settings.methods), "variants": variants,
            "requests_per_day": settings.requests_per_day, "gpu_hour_cost": settings.gpu_hour_cost,
            "groups": "pairs" if only_pairs else "every subset", "validation": "val, 256 images per task, seed 0",
            "test": "every test image"}
    data = plan_json(zoo, plans, results, info)
    return PlanResult(plans, results, data, plan_html(zoo, data, results))
