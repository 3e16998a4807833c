"""Headroom: the oracle transform, the clairvoyant router and the no-contention bound."""

from __future__ import annotations

import numpy as np
import pytest
from test_scenarios import needs_traces

from sandbox.harness import build
from sandbox.headroom import (
    ORACLE_SNAPSHOT_S,
    clairvoyant_source,
    gap_closed,
    headroom,
    no_contention,
    oracle,
)
from sandbox.simulator import simulate
from serving.policy_loader import builtin_policy, load_policy


def test_oracle_knows_lengths_sees_fresh_state_and_decides_for_free() -> None:
    sc = build("sandbox-tiny", 0)  # one cap for every request, as a client sends
    assert len(set(sc.workload.max_tokens.tolist())) == 1
    o = oracle(sc)
    assert np.array_equal(o.workload.max_tokens, o.workload.output_tokens)
    assert o.cluster.snapshot_interval_s == ORACLE_SNAPSHOT_S
    assert o.cluster.decision_time_factor == 0.0
    assert len(o.workload) == len(sc.workload) and o.events == sc.events


def test_clairvoyant_router_loads_with_its_speed_table() -> None:
    sc = build("sandbox-tiny", 0)
    policy = load_policy(clairvoyant_source(sc), name="clairvoyant")
    assert policy.module.SPEED == {"H100/tp1": 1.0} or max(policy.module.SPEED.values()) == 1.0
    s = simulate(oracle(sc), policy).summary()
    assert s["completed"] == len(sc.workload)


def test_no_contention_bounds_every_policy() -> None:
    sc = build("sandbox-tiny", 2)
    bound = no_contention(sc)["slo_attainment"]
    for name in ("round_robin", "least_outstanding"):
        assert simulate(sc, builtin_policy(name)).summary()["slo_attainment"] <= bound + 1e-9


def test_gap_closed() -> None:
    assert gap_closed(0.8, 0.7, 0.9) == pytest.approx(0.5)
    assert np.isnan(gap_closed(0.8, 0.9, 0.9))


@needs_traces
def test_headroom_orders_its_three_figures() -> None:
    h = headroom(
        "prefix-heavy",
        scale=0.5,
        split="test",
        baselines=("round_robin", "prefix_affinity"),
        capacity=True,
    )
    assert h.best_baseline.name == "prefix_affinity"
    assert h.best_baseline.value <= h.no_contention + 1e-9
    assert h.clairvoyant.value <= h.no_contention + 1e-9
    # The clairvoyant side keeps the plain baselines: it is never below the best of them.
    assert h.clairvoyant.value >= h.best_baseline.value
    assert h.best_baseline_capacity is not None and h.best_baseline_capacity.value > 0
    assert h.clairvoyant_capacity is not None
    assert h.clairvoyant_capacity.value >= h.best_baseline_capacity.value
    assert set(h.to_dict()) >= {"scenario", "best_baseline", "clairvoyant", "no_contention"}
