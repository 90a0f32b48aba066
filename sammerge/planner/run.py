"""One planner run: measure the groups of every variant, plan them, and the report's data and page — what
``sammerge plan`` and the app's planner page both call."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from sammerge.errors import ConfigError
from sammerge.jobs import check_backend
from sammerge.merging import get_method
from sammerge.planner.compat import DEFAULT_METHODS, GroupResult, all_subsets, measure_groups, pairs
from sammerge.planner.greedy import greedy_plan
from sammerge.planner.plan import Plan, check_floors, plan_groups
from sammerge.planner.report import plan_html, plan_json
from sammerge.progress import Progress

__all__ = ["PlanSettings", "PlanResult", "run_plan", "MAX_SUBSET_TASKS", "SEARCHES"]

MAX_SUBSET_TASKS = 8  # every subset up to here (255 for 8 tasks); beyond: the greedy search
SEARCHES = ("auto", "exact", "greedy")


@dataclass(frozen=True)
class PlanSettings:
    tolerance: float = 2.0
    methods: tuple[str, ...] = DEFAULT_METHODS
    variants: tuple[str, ...] | None = None  # None: every variant of the zoo
    pairs_only: bool = False
    requests_per_day: float | None = None
    gpu_hour_cost: float | None = None
    floors: tuple[tuple[str, float], ...] = ()  # (task, least test accuracy in %)
    search: str = "auto"  # auto: exact up to MAX_SUBSET_TASKS tasks, else greedy

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
        problems += check_floors(dict(self.floors), zoo.tasks)
        if self.search not in SEARCHES:
            problems.append(f"search must be one of {', '.join(SEARCHES)}, not '{self.search}'")
        elif self.search == "exact" and len(zoo.tasks) > MAX_SUBSET_TASKS and not self.pairs_only:
            problems.append(f"an exact plan of every subset is limited to {MAX_SUBSET_TASKS} tasks (this zoo has "
                            f"{len(zoo.tasks)}): use the greedy search or pairs only")
        if self.search == "greedy" and self.pairs_only:
            problems.append("the greedy search grows groups beyond pairs: choose it or pairs only, not both")
        for name in ("requests_per_day", "gpu_hour_cost"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name.replace('_', ' ')} must be > 0, got {value:g}")
        return problems

    def groups_searched(self, n_tasks: int) -> str:
        """"pairs", "every subset" or "greedy" — what a run of these settings measures for ``n_tasks`` tasks."""
        if self.pairs_only:
            return "pairs"
        if self.search == "greedy" or (self.search == "auto" and n_tasks > MAX_SUBSET_TASKS):
            return "greedy"
        return "every subset"


@dataclass(frozen=True)
class PlanResult:
    plans: dict[str, Plan]
    results: dict[str, dict[tuple[str, ...], GroupResult]]
    data: dict
    html: str


def run_plan(zoo, settings: PlanSettings, progress: Progress | None = None,
             cancel_event: threading.Event | None = None, backend: str = "local",
             address: str | None = None) -> PlanResult:
    """Measure and plan every variant; the measurements run as jobs on ``backend`` ("local" or "ray")."""
    problems = settings.check(zoo)
    if problems:
        raise ConfigError("plan: " + "; ".join(problems))
    check_backend(backend, address)
    variants = list(settings.variants or zoo.variants)
    searched = settings.groups_searched(len(zoo.tasks))
    floors = dict(settings.floors)
    results, plans = {}, {}
    for v in variants:
        def measure(groups, _v=v):
            return measure_groups(zoo, _v, groups, list(settings.methods), progress=progress,
                                  cancel_event=cancel_event, backend=backend, address=address)

        if searched == "greedy":
            plans[v], results[v] = greedy_plan(zoo.tasks, measure, settings.tolerance, floors)
        else:
            results[v] = measure(pairs(zoo.tasks) if searched == "pairs" else all_subsets(zoo.tasks))
            plans[v] = plan_groups(results[v], zoo.tasks, settings.tolerance, floors)
    info = {"tolerance": settings.tolerance, "floors": floors, "methods": list(settings.methods),
            "variants": variants, "requests_per_day": settings.requests_per_day,
            "gpu_hour_cost": settings.gpu_hour_cost, "groups": searched,
            "validation": "val, 256 images per task, seed 0", "test": "every test image"}
    data = plan_json(zoo, plans, results, info, progress=progress)
    return PlanResult(plans, results, data, plan_html(zoo, data, results))
