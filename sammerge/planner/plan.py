"""The staged plan: the fewest groups that keep every task within a tolerance, from measured groups.

A group is *mergeable* when every task in it loses at most ``tolerance`` points against its own model (a single
task always is). The plan is an exact search over every partition of the tasks into mergeable groups (set
partitions: 4,140 for 8 tasks): fewest groups first, then the smallest total loss, then the smallest worst loss.
Stages list the merged groups largest first; single tasks stay separate. With only pairs measured, groups are
limited to pairs (and singles).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from sammerge.planner.compat import GroupResult

__all__ = ["Plan", "plan_groups", "set_partitions"]


@dataclass(frozen=True)
class Plan:
    tolerance: float
    groups: tuple[GroupResult, ...]   # merged groups, largest first, then the single tasks

    @property
    def n_models(self) -> int:
        return len(self.groups)

    @property
    def stages(self) -> list[GroupResult]:
        return [g for g in self.groups if len(g.tasks) > 1]

    @property
    def separate(self) -> list[str]:
        return [g.tasks[0] for g in self.groups if len(g.tasks) == 1]


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


def plan_groups(results: Mapping[tuple[str, ...], GroupResult], tasks: Sequence[str], tolerance: float) -> Plan:
    """The best partition of ``tasks`` into measured, mergeable groups (see the module doc)."""
    ok = {g: r for g, r in results.items() if len(g) == 1 or r.worst_loss <= tolerance + 1e-9}
    best, best_key = None, None
    for part in set_partitions(list(tasks)):
        if not all(b in ok for b in part):
            continue
        losses = [v for b in part for v in ok[b].loss_points.values()]
        key = (len(part), round(sum(losses), 9), round(max(losses), 9))
        if best_key is None or key < best_key:
            best, best_key = part, key
    groups = sorted((ok[b] for b in best), key=lambda g: (-len(g.tasks), [tasks.index(t) for t in g.tasks]))
    return Plan(tolerance, tuple(groups))
