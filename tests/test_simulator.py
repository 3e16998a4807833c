"""The cluster simulator: router semantics, cluster events, policy faults, both modes."""

from __future__ import annotations

import numpy as np
import pytest

from sandbox.scenario_spec import ClusterEvent, ClusterSpec, Scenario, parse_cluster
from sandbox.simulator import PolicyFault, simulate
from sandbox.workload import Workload
from serving.contract import Plan, ReplicaSpec
from serving.engine import EngineConfig
from serving.policy_loader import builtin_policy, load_policy


def synthetic(n: int = 600, rate: float = 40.0, seed: int = 0, prefixes: bool = False) -> Workload:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    prompt = rng.integers(50, 2000, n)
    output = rng.integers(1, 300, n)
    hashes: tuple = ()
    if prefixes:
        hashes = tuple(
            tuple(int(rng.integers(0, 4)) * 1000 + j for j in range(p // 16)) for p in prompt
        )
    return Workload(arrivals, prompt, output, output.copy(), prefix_hashes=hashes, name="synthetic")


def cluster(n: int = 2, **kw) -> ClusterSpec:
    plan = Plan(tuple(ReplicaSpec("H100") for _ in range(n)))
    kw.setdefault("decision_time_factor", 0.0)
    return ClusterSpec("llama-3-8b", {"H100": n}, plan, **kw)


def scenario(workload=None, spec=None, events=()) -> Scenario:
    return Scenario("test", "", workload or synthetic(), spec or cluster(), tuple(events))


def policy(source: str):
    return load_policy(source, name="test-policy")


def test_every_request_completes_with_sane_metrics():
    result = simulate(scenario(), builtin_policy("least_outstanding"))
    s = result.summary()
    assert s["completed"] == 600 and s["failed"] == 0
    assert (result.ttft_s > 0).all() and (result.e2e_s >= result.ttft_s).all()
    assert not np.isnan(result.e2e_s).any()
    assert 0 < s["slo_attainment"] <= 1
    assert s["gpu_seconds"] == pytest.approx(2 * result.end_s, rel=1e-9)


@pytest.mark.parametrize("name", ["shortest_queue", "llmd_weighted", "round_robin"])
def test_fast_and_reference_modes_agree_through_the_router(name):
    # shortest_queue and llmd read stale engine snapshots: this checks that the
    # fast engine reports the same mid-span state as the reference.
    sc = scenario(synthetic(500, rate=60.0, prefixes=True), cluster(3, snapshot_interval_s=0.1))
    fast = simulate(sc, builtin_policy(name), mode="fast")
    ref = simulate(sc, builtin_policy(name), mode="reference")
    np.testing.assert_array_equal(fast.replica, ref.replica)
    np.testing.assert_allclose(fast.e2e_s, ref.e2e_s, rtol=1e-9)
    np.testing.assert_allclose(fast.ttft_s, ref.ttft_s, rtol=1e-9)


def test_removed_gpu_stops_its_replica_and_its_requests_are_retried():
    events = [ClusterEvent(5.0, "remove_gpus", gpu="H100", count=1)]
    result = simulate(
        scenario(synthetic(800, rate=40.0), events=events), builtin_policy("round_robin")
    )
    late = result.arrival_s > 5.0
    # Replica 1 (the newest) lost its GPU: nothing that arrives later runs there.
    assert set(result.replica[late]) == {0}
    assert result.retries.sum() > 0
    assert result.summary()["completed"] == 800


def test_failed_replica_restarts_after_its_cold_start():
    spec = cluster(2, cold_start_s=10.0)
    events = [ClusterEvent(3.0, "fail_replica", replica=0)]
    result = simulate(
        scenario(synthetic(800, rate=40.0), spec, events), builtin_policy("round_robin")
    )
    window = (result.arrival_s > 3.5) & (result.arrival_s < 12.0)
    assert set(result.replica[window]) == {1}
    assert 0 in set(result.replica[result.arrival_s > 14.0])
    assert result.retries.sum() > 0 and result.summary()["completed"] == 800


def test_autoscaler_uses_gpus_that_arrive():
    spec = ClusterSpec(
        "llama-3-8b",
        {"H100": 1},
        Plan((ReplicaSpec("H100"),)),
        monitor_interval_s=2.0,
        cold_start_s=5.0,
        decision_time_factor=0.0,
    )
    events = [ClusterEvent(1.0, "add_gpus", gpu="H100", count=3)]
    result = simulate(
        scenario(synthetic(3000, rate=60.0), spec, events), builtin_policy("threshold_autoscaler")
    )
    assert result.replans >= 1
    assert len(set(result.replica)) > 1
    assert result.gpu_seconds > result.end_s  # more than one GPU held part of the time


def test_hold_everything_times_out_and_scores_zero():
    held = policy("def route(request, replicas, now):\n    return None\n")
    result = simulate(scenario(synthetic(50)), held, drain_timeout_s=5.0)
    s = result.summary()
    assert s["completed"] == 0 and s["slo_attainment"] == 0.0


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("def route(request, replicas, now):\n    return 99\n", "no such replica"),
        ("def route(request, replicas, now):\n    return 'a'\n", "returned str"),
        ("def route(request, replicas, now):\n    return True\n", "returned bool"),
        ("def route(request, replicas, now):\n    raise KeyError('x')\n", "route raised KeyError"),
        (
            "from serving.contract import Plan, ReplicaSpec\n"
            "def route(request, replicas, now):\n    return replicas[0].id\n"
            "def reschedule(cluster, now):\n    return Plan((ReplicaSpec('H100'),) * 9)\n",
            "plan needs 9 H100 GPUs but the pool has 2",
        ),
        (
            "from serving.contract import Plan, ReplicaSpec\n"
            "def route(request, replicas, now):\n    return replicas[0].id\n"
            "def reschedule(cluster, now):\n    return Plan((ReplicaSpec('V100'),))\n",
            "cannot serve",
        ),
        (
            "from serving.contract import Plan, ReplicaSpec\n"
            "def route(request, replicas, now):\n    return replicas[0].id\n"
            "def reschedule(cluster, now):\n"
            "    return Plan(cluster.plan.replicas, weights=(float('nan'),) * 2)\n",
            "finite",
        ),
    ],
)
def test_misbehaving_policy_is_a_fault_with_a_reason(source, reason):
    with pytest.raises(PolicyFault, match=reason):
        simulate(scenario(synthetic(300, rate=20.0)), policy(source))


def test_slow_policy_pays_for_its_decisions():
    slow = policy(
        "import time\n"
        "def route(request, replicas, now):\n"
        # 20 ms of this thread's CPU (what the simulator charges), however loaded the machine.
        "    end = time.thread_time() + 0.02\n"
        "    while time.thread_time() < end:\n        pass\n"
        "    return min(replicas, key=lambda r: r.inflight_requests).id\n"
    )
    fast_policy = builtin_policy("least_outstanding")
    sc_charged = scenario(synthetic(60, rate=10.0), cluster(2, decision_time_factor=1.0))
    charged = simulate(sc_charged, slow)
    free = simulate(sc_charged, fast_policy)
    assert charged.decision_stats()["charged_s"] >= 60 * 0.02
    # At this light load each request waits for its own decision, no longer.
    assert charged.summary()["ttft_mean_s"] >= free.summary()["ttft_mean_s"] + 0.019


def test_patching_time_does_not_hide_decision_cost():
    import time as time_module

    # The clocks the cheat replaces, restored by hand: reloading ``time`` does not undo
    # patched attributes, and a frozen clock left behind hangs every later asyncio test.
    saved = {n: getattr(time_module, n) for n in ("perf_counter", "thread_time", "monotonic")}
    try:
        cheat = policy(
            "import time\n"
            "spin = time.thread_time\n"
            "time.perf_counter = time.thread_time = time.monotonic = lambda: 0.0\n"
            "def route(request, replicas, now):\n"
            "    end = spin() + 0.001\n"
            "    while spin() < end:\n        pass\n"
            "    return replicas[0].id\n"
        )
        result = simulate(scenario(synthetic(20), cluster(1, decision_time_factor=1.0)), cheat)
    finally:
        for name, clock in saved.items():
            setattr(time_module, name, clock)
    assert result.decision_stats()["route_mean_s"] >= 0.001


def test_same_seed_same_result():
    sc = scenario(synthetic(300))
    a = simulate(sc, builtin_policy("power_of_two"), seed=3)
    b = simulate(sc, builtin_policy("power_of_two"), seed=3)
    np.testing.assert_array_equal(a.replica, b.replica)


def test_parse_cluster_spec():
    spec = parse_cluster("llama-3-70b@2xH100/tp4,1xA100/tp8")
    assert spec.gpus == {"H100": 8, "A100": 8}
    assert [r.tp for r in spec.plan.replicas] == [4, 4, 8]
    with pytest.raises(ValueError, match="unknown GPU 'V100'"):
        parse_cluster("llama-3-8b@2xV100")
    with pytest.raises(ValueError, match="expected MODEL@"):
        parse_cluster("4xH100")


def test_request_larger_than_the_kv_cache_is_rejected_not_stuck():
    w = Workload(np.array([0.0, 0.1]), np.array([100, 500_000]), np.array([5, 5]), np.array([5, 5]))
    sc = Scenario("big", "", w, cluster(1, engine=EngineConfig()))
    result = simulate(sc, builtin_policy("round_robin"))
    assert list(result.requests_frame()["status"]) == ["ok", "rejected"]
