"""The policy kit: every piece on hand-built views with hand-computed answers, and its safety."""

from __future__ import annotations

import inspect
import random
import types
from collections import Counter

import pytest
from contract_support import req, rv

from sandbox.static_checks import first_violation
from serving import kit
from serving.contract import (
    ClusterView,
    Plan,
    ReplicaSpec,
    ReplicaState,
    WorkloadWindow,
)

H1, H2, A1 = ReplicaSpec("H100", 1), ReplicaSpec("H100", 2), ReplicaSpec("A100", 1)
ROUTE = "\ndef route(request, replicas, now):\n    return None\n"


def cluster(plan: Plan, *, pool: dict[str, int], waiting: int = 0, kv: int = 0,
            queued: int = 0, rate: float = 10.0, states: list[ReplicaState] | None = None,
            capacity: dict | None = None, cold: dict | None = None) -> ClusterView:  # fmt: skip
    states = states or ["serving"] * len(plan.replicas)
    pairs = enumerate(zip(plan.replicas, states, strict=True))
    reps = tuple(rv(i, state=s, waiting=waiting, kv=kv, gpu=spec.gpu) for i, (spec, s) in pairs)
    window = WorkloadWindow(60.0, int(rate * 60), rate, 1.0, 1000, 2000, 4000, 100, 200, 400, 0.0)
    return ClusterView(window, pool, plan, reps, queued, cold or {}, capacity or {})


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(99)


R = [rv(0, waiting=3, running=5, kv=50, inflight=4, tokens=400, overlap=2),
     rv(1, waiting=0, running=9, kv=20, inflight=2, tokens=900, overlap=4, gpu="A100"),
     rv(2, waiting=6, running=1, kv=90, inflight=2, tokens=100, state="starting")]  # fmt: skip


# --- the module itself ---


def test_the_kit_hands_out_no_module_and_no_shared_mutable_state():
    for name, value in vars(kit).items():
        assert not isinstance(value, types.ModuleType), name
        if name.startswith("__"):
            continue
        assert name in kit.__all__ or name == "SECTIONS", f"kit.{name} is not a listed piece"
        assert callable(value) or isinstance(value, tuple | str | int | float), name
    assert sorted(n for _, names in kit.SECTIONS for n in names) == sorted(kit.__all__)


def test_every_piece_has_a_one_line_doc_and_its_own_test():
    tests = {n for n in globals() if n.startswith("test_")}
    for name in kit.__all__:
        doc = inspect.getdoc(getattr(kit, name))
        assert doc and len(doc.splitlines()[0]) <= 90, f"{name}: the prompt's line is too long"
        assert f"test_{name.lower()}" in tests, f"no test_{name.lower()}"


def test_candidates_may_import_the_kit_and_nothing_through_it():
    assert first_violation("from serving import kit\nx = kit.argmin" + ROUTE) is None
    assert first_violation("import serving.kit\nx = serving.kit.argmin" + ROUTE) is None
    assert first_violation("from serving.kit import argmin, inflight" + ROUTE) is None
    for source, reason in [
        ("from serving import kit\nx = kit._fnv", "private module attribute"),
        ("from serving import kit\nkit.argmin = min", "assigning to module attribute"),
        ("import serving.kit\nserving.kit.argmin = min", "assigning to module attribute"),
        ("from serving import kit\ndel kit.argmin", "assigning to module attribute"),
        ("from serving import kit\nx = kit.argmin.__globals__", "dunder attribute"),
        ("from serving import kit, router", "import from 'serving' is not allowed"),
        ("from serving import kit_routing", "import from 'serving' is not allowed"),
        ("from serving import kit\nk = kit", "may only be used as 'kit.<attribute>'"),
    ]:
        found = first_violation(source + ROUTE)
        assert found is not None and reason in found, (source, found)


# --- filters ---


def test_serving_only():
    assert [r.id for r in kit.serving_only(R)] == [0, 1]


def test_kv_at_most():
    assert [r.id for r in kit.kv_at_most(R, 0.5)] == [0, 1]


def test_waiting_at_most():
    assert [r.id for r in kit.waiting_at_most(R, 3)] == [0, 1]


def test_inflight_at_most():
    assert [r.id for r in kit.inflight_at_most(R, 2)] == [1, 2]


def test_on_gpus():
    assert [r.id for r in kit.on_gpus(R, ("A100",))] == [1]


def test_near_best():
    assert [r.id for r in kit.near_best(R, [0.5, 0.2, 0.25], 0.05)] == [1, 2]
    assert [r.id for r in kit.near_best(R, [0.5, 0.2, 0.25], 0.0)] == [1]


def test_best_prefix():
    assert [r.id for r in kit.best_prefix(req(4), R, 0.5)] == [1]  # 4/4 > 0.5
    assert kit.best_prefix(req(8), R, 0.5) == []  # 4/8 is not above 0.5
    assert kit.best_prefix(req(0), R, 0.0) == []


def test_sample():
    got = kit.sample(R, 2)
    assert len(got) == 2 and len({r.id for r in got}) == 2
    assert sorted(r.id for r in kit.sample(R, 9)) == [0, 1, 2]


# --- scorers ---


def test_waiting():
    assert kit.waiting(req(), R) == [3, 0, 6]


def test_running():
    assert kit.running(req(), R) == [5, 9, 1]


def test_inflight():
    assert kit.inflight(req(), R) == [4, 2, 2]


def test_inflight_tokens():
    assert kit.inflight_tokens(req(), R) == [400, 900, 100]


def test_inflight_per_weight():
    reps = [rv(0, inflight=4, weight=2.0), rv(1, inflight=3), rv(2, inflight=0, weight=0.0)]
    assert kit.inflight_per_weight(req(), reps) == [2.0, 3.0, 1e18]


def test_kv_use():
    assert kit.kv_use(req(), R) == [0.5, 0.2, 0.9]


def test_prefix_miss():
    assert kit.prefix_miss(req(4), R) == [0.5, 0.0, 1.0]
    assert kit.prefix_miss(req(0), R) == [1.0, 1.0, 1.0]


def test_session_miss():
    assert kit.session_miss(req(), R) == [0.0, 0.0, 0.0]
    costs = kit.session_miss(req(session="u1"), R)
    assert all(0.0 <= c <= 1.0 for c in costs) and len(set(costs)) == 3
    # The home (lowest cost) is what session_home picks when nobody is loaded.
    idle = [rv(i) for i in range(3)]
    home = kit.session_home(req(session="u1"), idle, 1.0)
    assert home == min(range(3), key=lambda i: kit.session_miss(req(session="u1"), idle)[i])


def test_gpu_slowness():
    reps = [rv(0, tps=40_000.0), rv(1, tps=10_000.0)]
    assert kit.gpu_slowness(req(), reps) == [1.0, 4.0]


def test_inflight_per_speed():
    # 3 in flight on a 40k tokens/s replica weigh as much as 0 on one four times slower.
    reps = [rv(0, inflight=3, tps=40_000.0), rv(1, inflight=0, tps=10_000.0)]
    assert kit.inflight_per_speed(req(), reps) == [4.0, 4.0]
    same = [rv(0, inflight=2), rv(1, inflight=5)]
    assert kit.inflight_per_speed(req(), same) == [3.0, 6.0]  # one GPU type: inflight + 1


def test_est_ttft():
    # 640-token prompt: replica 0 has 32 of 40 blocks cached and 1000 tokens queued at
    # 10k tokens/s: (128 + 1000) / 10000; replica 1 nothing cached, nothing queued, 40k/s.
    reps = [rv(0, overlap=32, queued=1000.0), rv(1, tps=40_000.0)]
    assert kit.est_ttft(req(40), reps) == pytest.approx([0.1128, 0.016])


# --- normalisation ---


def test_minmax():
    assert kit.minmax([3, 0, 6]) == [0.5, 0.0, 1.0]
    assert kit.minmax([2, 2]) == [0.0, 0.0]


def test_by_max():
    assert kit.by_max([3, 0, 6]) == [0.5, 0.0, 1.0]
    assert kit.by_max([0, 0]) == [0.0, 0.0]


def test_weighted():
    assert kit.weighted((2.0, [1, 2]), (0.5, [4, 0]), (0.0, [9, 9])) == [4.0, 4.0]


# --- pickers ---


def test_least_inflight():
    assert kit.least_inflight(req(), R[:2]) == 1  # 2 in flight vs 4
    assert kit.least_inflight(req(), [rv(4, inflight=1), rv(3, inflight=1)]) == 3
    assert kit.least_inflight(req(), [rv(0, tokens=5), rv(1, tokens=1)]) == 1
    # Pickers pass over replicas that are not serving; none serving: HOLD.
    assert kit.least_inflight(req(), R) == 1  # replica 2 (2 in flight) is only starting
    assert kit.least_inflight(req(), [R[2]]) is None and kit.least_inflight(req(), []) is None


def test_argmin():
    assert kit.argmin(R, [1.0, 1.0, 2.0]) == 0  # tie: lower id
    assert kit.argmin(R, [1.0, 1.0, 2.0], [5, 4, 0]) == 1  # tie: the next costs decide
    assert kit.argmin([rv(7), rv(3)], [0.0, 0.0]) == 3
    assert kit.argmin(R, [1.0, 2.0, 0.0]) == 0  # replica 2 is starting: never chosen
    assert kit.argmin([], []) is None and kit.argmin([R[2]], [0.0]) is None


def test_argmin_random():
    picks = Counter(kit.argmin_random(R, [1.0, 1.0 + 1e-12, 1.0]) for _ in range(200))
    assert set(picks) == {0, 1}  # replica 2 ties too, but is starting
    assert {kit.argmin_random(R, [1.0, 0.5, 2.0]) for _ in range(20)} == {1}
    assert kit.argmin_random([R[2]], [0.0]) is None


def test_softmax():
    reps = [rv(0), rv(1), rv(2), rv(3, state="draining")]
    assert kit.softmax(reps, [1.0, 0.0, 5.0, -9.0], 0.0) == 1  # temperature 0: argmin
    picks = Counter(kit.softmax(reps, [1.0, 0.0, 5.0, -9.0], 1.0) for _ in range(4000))
    # P ~ exp(-cost): e^-1, 1, e^-5 over their sum = 0.268 / 0.727 / 0.005; never draining
    assert picks[1] / 4000 == pytest.approx(0.727, abs=0.04)
    assert picks[0] / 4000 == pytest.approx(0.268, abs=0.04) and picks[2] < 60
    assert 3 not in picks and kit.softmax([R[2]], [0.0], 1.0) is None


def test_power_of_k():
    reps = [rv(0, inflight=5), rv(1, inflight=1), rv(2, inflight=3)]
    picks = Counter(kit.power_of_k(req(), reps, 2, kit.inflight) for _ in range(300))
    assert 0 not in picks and picks[1] > picks[2] > 0
    assert {kit.power_of_k(req(), reps, 3, kit.inflight) for _ in range(20)} == {1}
    assert kit.power_of_k(req(), [R[2]], 2, kit.inflight) is None


def test_uniform():
    assert set(Counter(kit.uniform(R) for _ in range(300))) == {0, 1}  # 2 is starting
    assert kit.uniform([R[2]]) is None


def test_rotate():
    assert [kit.rotate([rv(5), rv(2), rv(9)], n) for n in range(4)] == [2, 5, 9, 2]
    assert kit.rotate([rv(5), rv(2, state="draining")], 1) == 5
    assert kit.rotate([R[2]], 0) is None


def test_session_home():
    idle = [rv(i, inflight=2) for i in range(4)]
    home = kit.session_home(req(session="user-42"), idle, 1.25)
    assert home is not None and kit.session_home(req(), idle, 1.25) is None
    assert len({kit.session_home(req(session=f"u{k}"), idle, 1.25) for k in range(40)}) == 4
    # The home far above the mean (cap = 1.25 * mean + 1): the session moves on.
    hot = [rv(i, inflight=30 if i == home else 2) for i in range(4)]
    assert kit.session_home(req(session="user-42"), hot, 1.25) not in (None, home)
    gone = [rv(i, state="draining" if i == home else "serving") for i in range(4)]
    assert kit.session_home(req(session="user-42"), gone, 1.25) not in (None, home)


# --- checks and admission ---


def test_imbalanced():
    assert kit.imbalanced([rv(0, inflight=2), rv(1, inflight=40)], 32, 1.1)
    assert not kit.imbalanced([rv(0, inflight=2), rv(1, inflight=30)], 32, 1.1)


def test_any_unsaturated():
    assert kit.any_unsaturated(R, 0, 0.2)  # replica 1
    assert not kit.any_unsaturated(R, 0, 0.1)


def test_any_inflight_below():
    assert kit.any_inflight_below(R, 3) and not kit.any_inflight_below(R, 2)


def test_ttft_within():
    reps = [rv(0, queued=10_000.0), rv(1, queued=5_000.0)]
    assert kit.ttft_within(req(prompt=1000), reps, 0.6)  # (1000 + 5000) / 10000
    assert not kit.ttft_within(req(prompt=1000), reps, 0.5)


# --- reschedule: signals ---


def test_queue_per_replica():
    view = cluster(Plan((H1, H1)), pool={"H100": 2}, waiting=4, queued=6,
                   states=["serving", "starting"])  # fmt: skip
    assert kit.queue_per_replica(view) == 10.0  # (6 queued + 4 waiting) / 1 serving


def test_mean_kv():
    assert kit.mean_kv(cluster(Plan((H1, H1)), pool={"H100": 2}, kv=30)) == 0.3
    assert kit.mean_kv(cluster(Plan((H1,)), pool={"H100": 1}, states=["starting"])) == 0.0


def test_saturation():
    plan = Plan((H1,))
    assert kit.saturation(cluster(plan, pool={}, waiting=6), 5, 0.8, 0.5, 0.4) == (True, False)
    assert kit.saturation(cluster(plan, pool={}, kv=30), 5, 0.8, 0.5, 0.4) == (False, True)
    assert kit.saturation(cluster(plan, pool={}, kv=50), 5, 0.8, 0.5, 0.4) == (False, False)


def test_starting():
    plan = Plan((H1, H1))
    assert kit.starting(cluster(plan, pool={}, states=["serving", "starting"]))
    assert not kit.starting(cluster(plan, pool={}))


def test_demand_rps():
    assert kit.demand_rps(cluster(Plan((H1,)), pool={}, rate=5.0, queued=600)) == 15.0


def test_capacity():
    view = cluster(Plan((H1,)), pool={}, capacity={H1: 10.0, A1: 4.0})
    assert kit.capacity(view, [H1, A1, A1, H2]) == 18.0  # no estimate for H2: 0


def test_utilization():
    view = cluster(Plan((H1, H1)), pool={}, rate=15.0, capacity={H1: 10.0})
    assert kit.utilization(view) == 0.75
    assert kit.utilization(cluster(Plan((H1,)), pool={})) == 0.0


def test_slo_risk():
    # Median prompt 1000 tokens at 10k tokens/s, nothing queued: 0.1 s against a 0.5 s SLO.
    assert kit.slo_risk(cluster(Plan((H1,)), pool={}), 0.5) == pytest.approx(0.2)


def test_queue_growth():
    state = kit.TriggerState()
    assert kit.queue_growth(state, cluster(Plan((H1,)), pool={}, waiting=3)) == 0.0
    assert kit.queue_growth(state, cluster(Plan((H1,)), pool={}, waiting=3, queued=5)) == 5.0


def test_pool_changed():
    state = kit.TriggerState()
    assert not kit.pool_changed(state, cluster(Plan((H1,)), pool={"H100": 2}))
    assert not kit.pool_changed(state, cluster(Plan((H1,)), pool={"H100": 2}))
    assert kit.pool_changed(state, cluster(Plan((H1,)), pool={"H100": 1}))


# --- reschedule: trigger ---


def test_triggerstate():
    a, b = kit.TriggerState(), kit.TriggerState()
    a.hot = 3
    assert b.hot == 0 and a.last_change == float("-inf")  # one per policy, nothing shared


def test_trigger():
    s = kit.TriggerState()
    assert kit.trigger(s, True, False, 0.0, 2, 3, 10.0) == 0  # one hot tick
    assert kit.trigger(s, True, False, 1.0, 2, 3, 10.0) == 1  # two in a row
    assert kit.trigger(s, True, False, 2.0, 2, 3, 10.0, hold_up=True) == 0  # replicas start
    kit.acted(s, 3.0)
    assert [kit.trigger(s, False, True, t, 2, 3, 10.0) for t in (4.0, 5.0, 6.0)] == [0, 0, 0]
    assert kit.trigger(s, False, True, 13.0, 2, 3, 10.0) == -1  # cooldown over, 4 cold ticks
    assert kit.trigger(s, False, False, 14.0, 2, 3, 10.0) == 0 and s.cold == 0


def test_acted():
    s = kit.TriggerState(hot=4, cold=0)
    kit.acted(s, 7.0)
    assert (s.hot, s.cold, s.last_change) == (0, 0, 7.0)


# --- reschedule: planner ---


def test_fit_to_pool():
    assert kit.fit_to_pool([H1, H2, H1, A1], {"H100": 3}) == [H1, H2]


def test_fill_pool():
    view = cluster(Plan((H1,)), pool={"H100": 3, "A100": 1}, capacity={H1: 10.0, A1: 6.0})
    assert kit.fill_pool(view, [H1]) == [H1, H1, H1, A1]  # the fleet's spec first, then the rest
    assert kit.fill_pool(view, [H1, H1, H1, A1]) == [H1, H1, H1, A1]  # full: unchanged


def test_free_gpus():
    view = cluster(Plan((H1,)), pool={"H100": 4, "A100": 1})
    assert kit.free_gpus(view, [H1, H2]) == {"H100": 1, "A100": 1}


def test_ranked_specs():
    capacity = {H1: 10.0, H2: 16.0, A1: 6.0, ReplicaSpec("H200", 1): 0.0}
    view = cluster(Plan((H1,)), pool={}, capacity=capacity)
    assert kit.ranked_specs(view) == [H1, H2, A1]  # per GPU: 10, 8, 6; no capacity: left out


def test_next_spec():
    view = cluster(Plan((H1,)), pool={"H100": 1, "A100": 2}, capacity={H1: 10.0, A1: 6.0})
    assert kit.next_spec(view, [H1]) == A1  # the fleet's own type is full
    assert kit.next_spec(view, [H1, A1, A1]) is None
    plain = cluster(Plan((H2,)), pool={"H100": 2, "A100": 4})
    assert kit.next_spec(plain, []) == ReplicaSpec("A100", 1)  # most free GPUs, TP 1


def test_scale():
    view = cluster(Plan((H1,)), pool={"H100": 2}, capacity={H1: 10.0})
    assert kit.scale(view, [H1], 1) == [H1, H1]
    assert kit.scale(view, [H1, H1], 1) is None  # pool full
    assert kit.scale(view, [H1, H1], -1) == [H1]
    assert kit.scale(view, [H1], -1, min_replicas=1) is None and kit.scale(view, [H1], 0) is None


def test_grow():
    view = cluster(Plan((H1,)), pool={"H100": 2, "A100": 8}, capacity={H1: 10.0, A1: 6.0})
    added = kit.grow(view, [H1], 40.0, 0.8)  # target capacity 50: one H100, then A100s
    assert added[0] == H1 and set(added[1:]) == {A1} and 10 + 10 + 6 * (len(added) - 1) >= 50
    assert kit.grow(view, [H1], 5.0, 0.8) == []


def test_plan_for_demand():
    view = cluster(Plan((H1,)), pool={"H100": 4}, rate=25.0, capacity={H1: 10.0})
    assert kit.plan_for_demand(view, 0.8) == [H1] * 4  # 25 / 0.8 = 31.25 -> 4 x 10
    idle = cluster(Plan((H1,)), pool={"H100": 4}, rate=0.0, capacity={H1: 10.0})
    assert kit.plan_for_demand(idle, 0.8) == [H1]


def test_capacity_weights():
    view = cluster(Plan((H1,)), pool={}, capacity={H1: 12.0, A1: 4.0})
    assert kit.capacity_weights(view, [H1, A1]) == (1.5, 0.5)
    assert kit.capacity_weights(view, [H2]) == (1.0,)


def test_reload_s():
    view = cluster(Plan((H1,)), pool={}, cold={H1: 30.0})
    assert kit.reload_s(view, [H1, A1], 60.0) == 60.0 and kit.reload_s(view, [], 60.0) == 0.0


def test_pays_back():
    assert kit.pays_back(10.0, 15.0, 60.0, 19.0, 1.0)  # 5 * 41 = 205 > 190
    assert not kit.pays_back(10.0, 15.0, 60.0, 20.0, 1.0)  # 200 is not > 200


def test_replan():
    view = cluster(Plan((H1,), admission_limit=9), pool={})
    assert kit.replan(view, [H1, A1]) == Plan((H1, A1), None, 9)
    assert kit.replan(view, [H1], [2.0]) == Plan((H1,), (2.0,), 9)
