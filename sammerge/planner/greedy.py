"""A greedy plan for zoos too large for every subset (more than 8 tasks: 2^T − T − 1 groups to measure).

1. Measure every pair.
2. Among the tasks not yet placed, seed a group with the mergeable pair (:func:`~sammerge.planner.plan.mergeable`)
   of smallest (worst loss, total loss).
3. Grow it: each round measures the group plus each unplaced task that forms a mergeable pair with every member (one
   job graph per round, so the round runs in parallel on Ray) and adds the mergeable candidate of smallest (worst,
   total) loss; stop when none fits. Back to 2 until no mergeable pair is left; the rest stay separate.

Every group it returns was measured and is mergeable; it is maximal (no unplaced task that pairs well with all its
members can join it); it may need more models than the exact plan (:func:`~sammerge.planner.plan.plan_groups`).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from sammerge.planner.compat import GroupResult, pairs
from sammerge.planner.plan import Plan, mergeable, order_groups

__all__ = ["greedy_plan"]

Measure = Callable[[Sequence[tuple[str, ...]]], Mapping[tuple[str, ...], GroupResult]]


def _rank(r: GroupResult) -> tuple[float, float]:
    return round(r.worst_loss, 9), round(sum(r.loss_points.values()), 9)


def greedy_plan(tasks: Sequence[str], measure: Measure, tolerance: float,
                floors: Mapping[str, float] | None = None) -> tuple[Plan, dict[tuple[str, ...], GroupResult]]:
    """(the plan, every group it measured, singles included). ``measure(groups)`` → group → GroupResult for those
    groups and every single task (e.g. ``lambda gs: measure_groups(zoo, variant, gs, methods)``)."""
    order = {t: i for i, t in enumerate(tasks)}

    def key(group) -> tuple[str, ...]:
        return tuple(sorted(group, key=order.__getitem__))

    measured = dict(measure(pairs(tasks)))

    def ok(group) -> bool:
        return mergeable(measured[key(group)], tolerance, floors)

    unplaced, groups = list(tasks), []
    while True:
        seeds = [p for p in pairs(unplaced) if ok(p)]
        if not seeds:
            break
        group = list(min(seeds, key=lambda p: _rank(measured[p])))
        while True:
            candidates = [t for t in unplaced if t not in group and all(ok((t, m)) for m in group)]
            if not candidates:
                break
            measured.update(measure([key([*group, t]) for t in candidates]))
            fits = [t for t in candidates if ok([*group, t])]
            if not fits:
                break
            group.append(min(fits, key=lambda t: _rank(measured[key([*group, t])])))
        groups.append(measured[key(group)])
        unplaced = [t for t in unplaced if t not in group]
    groups += [measured[(t,)] for t in unplaced]
    return Plan(tolerance, order_groups(groups, list(tasks)), dict(floors or {}), "greedy"), measured
