"""The named scenario suite: every scenario builds, fits its cluster, reproduces, runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shared_support import require_shared

from sandbox.scenario_spec import Scenario
from sandbox.scenarios import (
    SCENARIO_NAMES,
    SCENARIO_REQUESTS,
    build_scenario,
    ramp,
    scenario_size,
)
from sandbox.simulator import simulate
from sandbox.traces import TRACE_FILES
from sandbox.workload import Workload
from serving.hardware import check_deployment
from serving.policy_loader import builtin_policy

TRACES = tuple(TRACE_FILES[name] for name in ("azure-conv", "azure-code", "mooncake", "bwb"))
needs_traces = pytest.mark.shared(*TRACES)


@pytest.fixture(scope="module")
def full() -> dict[str, Scenario]:
    require_shared(*TRACES)
    return {name: build_scenario(name, seed=0) for name in SCENARIO_NAMES}


def test_suite_is_named_and_documented() -> None:
    assert len(SCENARIO_NAMES) >= 8
    assert len(set(SCENARIO_NAMES)) == len(SCENARIO_NAMES)
    assert set(SCENARIO_REQUESTS) == set(SCENARIO_NAMES)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'nope'") as info:
        build_scenario("nope")
    for name in SCENARIO_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("scale", [0.0, -1.0, 1.5, math.nan])
def test_bad_scale_is_refused(scale: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        scenario_size("steady-conv", scale)


def test_scale_removes_spare_units_never_run_length() -> None:
    # prefix-heavy has 4 units (min 2): half scale halves the fleet, keeps the length.
    half = scenario_size("prefix-heavy", 0.5)
    assert (half.units, half.keep) == (2, 0.5)
    assert half.duration_s == scenario_size("prefix-heavy").duration_s
    assert scenario_size("prefix-heavy", 0.01) == half
    # Two crashes in turn need three replicas: replica-failure has none to spare.
    assert scenario_size("replica-failure", 0.1) == scenario_size("replica-failure")


def test_ramp_is_linear_in_time() -> None:
    n = 20_000
    flat = Workload(
        arrival_s=np.linspace(0.0, 100.0, n),
        prompt_tokens=np.ones(n, dtype=np.int64),
        output_tokens=np.ones(n, dtype=np.int64),
        max_tokens=np.ones(n, dtype=np.int64),
    )
    w = ramp(flat, 0.5, 1.5)
    assert w.duration_s == pytest.approx(100.0, rel=1e-3)  # 2 S / (lo + hi)
    counts = np.histogram(w.arrival_s, bins=10, range=(0.0, 100.0))[0]
    rates = counts / 10.0
    mean = n / 100.0
    assert rates[0] == pytest.approx(0.55 * mean, rel=0.02)
    assert rates[-1] == pytest.approx(1.45 * mean, rel=0.02)
    assert np.all(np.diff(rates) > 0)


@needs_traces
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_scenario_is_well_formed(name: str, full: dict[str, Scenario]) -> None:
    sc = full[name]
    w, c = sc.workload, sc.cluster
    assert sc.name == name
    assert sc.description and "\n" not in sc.description
    assert len(w) >= SCENARIO_REQUESTS[name]
    assert len(w) <= 12_000  # keep the suite x baselines runnable in minutes
    assert np.all(np.diff(w.arrival_s) >= 0) and w.arrival_s[0] >= 0
    assert 60.0 <= w.duration_s <= 600.0
    # The starting plan fits its pool and every replica can serve the model.
    for gpu, used in c.plan.gpus_by_type().items():
        assert used <= c.gpus.get(gpu, 0), (gpu, used, dict(c.gpus))
    for spec in c.plan.replicas:
        check_deployment(c.model, spec.gpu, spec.tp, profiled=True)
    assert len(c.plan.replicas) >= 2  # routing must have a choice
    # Events happen while traffic is still arriving, in time order.
    times = [e.at_s for e in sc.events]
    assert times == sorted(times)
    for e in sc.events:
        assert 0.0 < e.at_s < w.arrival_s[-1]
        if e.kind == "fail_replica":
            assert 0 <= e.replica < len(c.plan.replicas)
        else:
            assert e.count > 0 and (e.gpu in c.gpus or e.kind == "add_gpus")
    removed = sum(e.count for e in sc.events if e.kind == "remove_gpus")
    assert all(removed <= n for n in c.gpus.values()) or not removed


@needs_traces
def test_event_scenarios_have_their_events(full: dict[str, Scenario]) -> None:
    kinds = {name: [e.kind for e in sc.events] for name, sc in full.items()}
    assert kinds["gpu-loss"] == ["remove_gpus", "add_gpus"]
    assert "fail_replica" in kinds["replica-failure"]
    assert full["prefix-heavy"].workload.has_prefixes
    assert {s.gpu for s in full["mixed-pool"].cluster.plan.replicas} == {"H100", "A100"}


@needs_traces
@pytest.mark.parametrize("name", ["steady-conv", "bursty-code", "prefix-heavy", "decode-heavy"])
def test_same_seed_same_scenario(name: str) -> None:
    a, b = build_scenario(name, seed=3), build_scenario(name, seed=3)
    c = build_scenario(name, seed=4)
    assert _same(a, b)
    assert not _same(a, c)


def _same(a: Scenario, b: Scenario) -> bool:
    wa, wb = a.workload, b.workload
    return (
        a.cluster == b.cluster
        and a.events == b.events
        and a.slo == b.slo
        and len(wa) == len(wb)
        and np.array_equal(wa.arrival_s, wb.arrival_s)
        and np.array_equal(wa.prompt_tokens, wb.prompt_tokens)
        and np.array_equal(wa.output_tokens, wb.output_tokens)
        and wa.prefix_hashes == wb.prefix_hashes
    )


@needs_traces
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_small_scale_keeps_the_shape(name: str, full: dict[str, Scenario]) -> None:
    small = build_scenario(name, seed=0, scale=0.1)
    big = full[name]
    assert small.workload.duration_s == pytest.approx(big.workload.duration_s, rel=0.05)
    if len(small.cluster.plan.replicas) < len(big.cluster.plan.replicas):
        assert 0 < len(small.workload) < len(big.workload)
    else:
        assert len(small.workload) == len(big.workload)
    assert len(small.cluster.plan.replicas) >= 2
    assert [e.kind for e in small.events] == [e.kind for e in big.events]
    for e in small.events:
        assert 0.0 < e.at_s < small.workload.arrival_s[-1]
    for gpu, used in small.cluster.plan.gpus_by_type().items():
        assert used <= small.cluster.gpus.get(gpu, 0)


@needs_traces
@pytest.mark.parametrize("name", ["mixed-pool", "gpu-loss", "prefix-heavy"])
def test_quick_run_has_sane_metrics(name: str) -> None:
    sc = build_scenario(name, seed=1, scale=0.1)
    s = simulate(sc, builtin_policy("least_outstanding"), seed=1).summary()
    assert s["requests"] == len(sc.workload)
    assert s["completed"] >= 0.95 * s["requests"]
    assert 0.0 < s["slo_attainment"] <= 1.0
    assert 0.0 < s["ttft_p50_s"] < 60.0
    assert 0.0 < s["tpot_p50_s"] < 1.0
    assert s["gpu_seconds"] > 0


@needs_traces
def test_thinning_keeps_whole_prefix_groups() -> None:
    from sandbox.stretches import request_groups

    big, small = build_scenario("prefix-heavy", 0), build_scenario("prefix-heavy", 0, scale=0.5)
    groups = request_groups(big.workload)
    first_block = {h[0] for h in small.workload.prefix_hashes if h}
    # Every kept prefix group is kept whole: as many requests start with it as at full size.
    for key in list(first_block)[:50]:
        n_big = sum(1 for h in big.workload.prefix_hashes if h and h[0] == key)
        n_small = sum(1 for h in small.workload.prefix_hashes if h and h[0] == key)
        assert n_small == n_big
    assert len(set(groups.tolist())) > len(first_block)
