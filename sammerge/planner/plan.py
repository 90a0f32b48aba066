"""The staged plan: the fewest groups that keep every task within a tolerance, from measured groups.

A group is *mergeable* when every task t in it loses at most ``tolerance`` points against its own model and, when a
floor is given for t, keeps a merged test accuracy ≥ ``floors[t]`` (percent); a single task always is (its own model;
:attr:`Plan.below_floor` names those whose own model is under their floor). The exact plan searches every partition
of the tasks into mergeable groups (set partitions: 4,140 for 8 tasks): fewest groups first, then the smallest total
loss, then the smallest worst loss. Stages list the merged groups largest first; single tasks stay separate. With only
pairs measured, groups are limited to pairs (and singles); for more than 8 tasks see :mod:`sammerge.planner.greedy`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from sammerge.planner.compat import GroupResult

__all__ = ["Plan", "plan_groups", "set_partitions", "mergeable", "check_floors"]


@dataclass(frozen=True)
class Plan:
    tolerance: float
    groups: tuple[GroupResult, ...]   # merged groups, largest first, then the single tasks
    floors: Mapping[str, float] = field(default_factory=dict)
    search: str = "exact"             # "exact" (every partition) or "greedy"

    @property
    def n_models(self) -> int:
        return len(self.groups)

    @property
    def stages(self) -> list[GroupResult]:
        return [g for g in self.groups if len(g.tasks) > 1]

    @property
    def separate(self) -> list[str]:
        return [g.tasks[0] for g in self.groups if len(g.tasks) == 1]

    @property
    def below_floor(self) -> list[str]:
        """Tasks whose own fine-tuned model is already under their floor (no plan can meet it)."""
        return [g.tasks[0] for g in self.groups if len(g.tasks) == 1 and g.tasks[0] in self.floors
                and 100 * g.merged[g.tasks[0]] < self.floors[g.tasks[0]] - 1e-9]


def mergeable(result: GroupResult, tolerance: float, floors: Mapping[str, float] | None = None) -> bool:
    """Whether a measured group keeps every task within ``tolerance`` points and above its floor (see module doc)."""
    if len(result.tasks) == 1:
        return True
    floors = floors or {}
    return result.worst_loss <= tolerance + 1e-9 and all(
        100 * result.merged[t] >= floors[t] - 1e-9 for t in result.tasks if t in floors)


def check_floors(floors: Mapping[str, float], tasks: Sequence[str]) -> list[str]:
    """Every problem of a task → floor mapping (unknown tasks, floors outside 0–100 %)."""
    problems = [f"floor for unknown task '{t}' (tasks: {', '.join(tasks)})" for t in floors if t not in tasks]
    problems += [f"floor of '{t}' must be between 0 and 100 (% accuracy), got {v:g}"
                 for t, v in floors.items() if not 0 <= v <= 100]
    return problems


def set_partitions(items: Sequence[str]) -> Iterator[list[tuple[str, ...]]]:
    """Every partition of ``items`` into non-empty blocks (each once; blocks keep ``items``' order)."""
    if not items:
        yield []
        return
    first, rest = items[0], list(items[1:])
    for part in set_partitions(rest):
        yield [(first,), *part]
        for i, block in enumerate(part):
            yield part[:i] + [(first, *block)] + part[i + 1:]


def order_groups(groups: Sequence[GroupResult], tasks: Sequence[str]) -> tuple[GroupResult, ...]:
    """Largest first, then in the zoo's task order."""
    return tuple(sorted(groups, key=lambda g: (-len(g.tasks), [tasks.index(t) for t in g.tasks])))


def plan_groups(results: Mapping[tuple[str, ...], GroupResult], tasks: Sequence[str], tolerance: float,
                floors: Mapping[str, float] | None = None) -> Plan:
    """The best partition of ``tasks`` into measured, mergeable groups (see the module doc)."""
    ok = {g: r for g, r in results.items() if mergeable(r, tolerance, floors)}
    best, best_key = None, None
    for part in set_partitions(list(tasks)):
        if not all(b in ok for b in part):
            continue
        losses = [v for b in part for v in ok[b].loss_points.values()]
        key = (len(part), round(sum(losses), 9), round(max(losses), 9))
        if best_key is None or key < best_key:
            best, best_key = part, key
    return Plan(tolerance, order_groups([ok[b] for b in best], tasks), dict(floors or {}), "exact")
