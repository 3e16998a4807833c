"""SLO capacity: the bracketing bisection, the rate transform, and real capacities."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from sandbox.harness import build
from sandbox.scenario_spec import ClusterEvent
from sandbox.simulator import simulate
from sandbox.slo_capacity import (
    Capacity,
    CapacitySearch,
    at_rate,
    nominal_rps,
    scenario_capacity,
    search_capacity,
)
from serving.policy_loader import builtin_policy


def _knee(at: float):
    # Attainment falls smoothly through 0.9 at ``at``: a stand-in for a policy's curve.
    return lambda f: 1.0 / (1.0 + 0.1111111 * (f / at) ** 8)


@pytest.mark.parametrize("knee", [0.3, 1.0, 2.7])
def test_bisection_finds_the_knee_within_tolerance(knee: float) -> None:
    search = CapacitySearch(target=0.9, tolerance=0.03)
    scale, probes, bracketed = search_capacity(_knee(knee), search)
    assert bracketed
    assert knee / 1.03 <= scale <= knee
    assert len(probes) <= 10
    passing = [f for f, a in probes if a >= 0.9]
    assert scale == max(passing)


@pytest.mark.parametrize("knee", [0.3, 1.0, 2.7])
def test_the_crossing_reads_the_knee_finer_than_the_bisection(knee: float) -> None:
    search = CapacitySearch(target=0.9, tolerance=0.03)
    scale, probes, bracketed = search_capacity(_knee(knee), search)
    cap = Capacity(scale, scale, 1.0, probes, bracketed, search.target)
    assert scale <= cap.crossing <= scale * 1.03
    assert abs(cap.crossing - knee) <= max(abs(scale - knee) / 4, 1e-6)  # a quarter or less
    unbracketed = Capacity(4.0, 4.0, 1.0, ((4.0, 1.0),), False, 0.9)
    assert unbracketed.crossing == 4.0


def test_a_close_hint_saves_probes() -> None:
    cold = search_capacity(_knee(2.0), CapacitySearch())[1]
    warm = search_capacity(_knee(2.0), CapacitySearch(), hint=2.05)[1]
    assert len(warm) < len(cold)


def test_limits_are_reported_not_hidden() -> None:
    search = CapacitySearch(lowest=0.1, highest=4.0)
    scale, _, bracketed = search_capacity(lambda f: 1.0, search)
    assert 4.0 / 1.3**4 < scale <= 4.0 and not bracketed
    scale, _, bracketed = search_capacity(lambda f: 0.0, search)
    assert (scale, bracketed) == (0.0, False)
    with pytest.raises(ValueError):
        CapacitySearch(tolerance=0.5, growth=1.2)


def test_at_rate_compresses_the_clock_events_included() -> None:
    sc = replace(build("sandbox-tiny", 0), events=(ClusterEvent(6.0, "fail_replica", replica=0),))
    fast = at_rate(sc, 2.0)
    assert np.allclose(fast.workload.arrival_s, sc.workload.arrival_s / 2.0)
    assert fast.events[0].at_s == 3.0
    assert nominal_rps(fast) == pytest.approx(2.0 * nominal_rps(sc))
    assert at_rate(sc, 1.0) is sc
    with pytest.raises(ValueError, match="positive"):
        at_rate(sc, math.nan)


def test_a_load_aware_policy_has_more_capacity_than_a_load_blind_one() -> None:
    # Unequal replicas (an H100 and an A100): round robin overloads the slower one first.
    from sandbox.scenario_spec import ClusterSpec
    from serving.contract import Plan, ReplicaSpec

    pair = Plan((ReplicaSpec("H100"), ReplicaSpec("A100")))
    mixed = replace(
        build("sandbox-tiny", 1), cluster=ClusterSpec("llama-3-8b", {"H100": 1, "A100": 1}, pair)
    )

    def capacity(policy: str):
        return scenario_capacity(
            mixed, lambda s: simulate(s, builtin_policy(policy)).summary()["slo_attainment"]
        )

    lo, rr = capacity("least_outstanding"), capacity("round_robin")
    assert lo.scale > rr.scale > 0
    assert lo.rps == pytest.approx(lo.scale * nominal_rps(mixed))
    assert len(lo.probes) <= 10 and len(rr.probes) <= 10
