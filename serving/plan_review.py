"""What a ``reschedule`` plan means for the cluster: the one check, and the match.

``review_plan`` is the one check of what a policy's ``reschedule`` returned, applied
by the simulator (``sandbox.sim_cluster``) and the live router's monitor
(``serving.router_monitor``) before anything is started; ``match_plan`` maps an
accepted plan onto the live replicas (``RoutingCore.follow_plan``): which it keeps,
which it starts, which it stops.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from serving.contract import Plan, ReplicaSpec
from serving.planning import plan_problem


class PlanMatch(NamedTuple):
    """How a plan maps onto the live replicas."""

    keep: tuple[tuple[int, float], ...]
    """(replica id, weight) of each live replica the plan keeps."""
    start: tuple[tuple[ReplicaSpec, float], ...]
    """(spec, weight) of each replica the plan adds, in plan order."""
    stop: tuple[int, ...]
    """Live replicas the plan no longer has."""


def match_plan(plan: Plan, live: Sequence[tuple[int, ReplicaSpec]]) -> PlanMatch:
    """Each plan entry keeps the oldest unmatched live replica of its spec, else starts one."""
    unmatched = list(live)
    keep: list[tuple[int, float]] = []
    start: list[tuple[ReplicaSpec, float]] = []
    for i, spec in enumerate(plan.replicas):
        weight = plan.weights[i] if plan.weights else 1.0
        for k, (rid, have) in enumerate(unmatched):
            if have == spec:
                del unmatched[k]
                keep.append((rid, weight))
                break
        else:
            start.append((spec, weight))
    return PlanMatch(tuple(keep), tuple(start), tuple(rid for rid, _ in unmatched))


class PlanReview(NamedTuple):
    plan: Plan | None
    """The plan to apply; None when there is nothing to do (no plan, or no change)."""
    problem: str | None
    """Why the returned plan cannot be applied (then ``plan`` is None)."""


def review_plan(
    plan: object,
    current: Plan | None,
    model: str,
    pool: Mapping[str, int],
    menu: Iterable[ReplicaSpec],
) -> PlanReview:
    """The one check of what ``reschedule`` returned, before anything is started."""
    if plan is None:
        return PlanReview(None, None)
    problem = plan_problem(plan, model, pool, menu)
    if problem is not None:
        return PlanReview(None, problem)
    if plan == current:
        return PlanReview(None, None)
    assert isinstance(plan, Plan)  # plan_problem said so
    return PlanReview(plan, None)
