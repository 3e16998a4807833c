"""The baseline policies: each a short composition of the kit, all on the same fixtures,
then each on hand-built snapshots with hand-computed answers."""

from __future__ import annotations

import ast
import random
from collections import Counter
from pathlib import Path

import pytest
from contract_support import req, rv

from serving.contract import (
    ClusterView,
    Plan,
    ReplicaSpec,
    ReplicaState,
    ReplicaView,
    Request,
    WorkloadWindow,
)
from serving.planning import plan_problem
from serving.policy_loader import BUILTIN_POLICIES, LoadedPolicy, builtin_policy, builtin_source

POLICY_DIR = Path(__file__).resolve().parents[1] / "serving" / "policies"
H1, A1 = ReplicaSpec("H100", 1), ReplicaSpec("A100", 1)


def window(rate: float, duration: float = 60.0) -> WorkloadWindow:
    return WorkloadWindow(
        duration_s=duration, requests=int(rate * duration), arrival_rate=rate, iat_cv=1.0,
        input_p50=512, input_p90=1024, input_p99=2048, output_p50=128, output_p90=256,
        output_p99=512, prefix_reuse=0.0,
    )  # fmt: skip


def route(p: LoadedPolicy, replicas: list[ReplicaView], request: Request | None = None) -> int:
    return p.route(request or req(), tuple(replicas), 0.0)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(1234)  # the evaluator seeds `random`; so do the tests


# --- every policy --------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_hold_when_nothing_serves(name: str) -> None:
    p = builtin_policy(name)
    assert p.route(req(4), (), 0.0) is None
    idle = (rv(0, state="starting"), rv(1, state="draining", inflight=0))
    assert p.route(req(4, "s"), idle, 0.0) is None


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_routes_only_to_serving_replicas(name: str) -> None:
    p = builtin_policy(name)
    rng = random.Random(7)
    states: list[ReplicaState] = ["serving", "starting", "draining"]
    for _ in range(200):
        reps = [
            rv(i, state=rng.choice(states), waiting=rng.randint(0, 9), kv=rng.randint(0, 100),
               inflight=rng.randint(0, 9), overlap=rng.randint(0, 4))
            for i in range(5)
        ]  # fmt: skip
        serving = {r.id for r in reps if r.state == "serving"}
        got = route(p, reps, req(4, rng.choice(["", "a", "b"])))
        assert (got in serving) if serving else got is None


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_policy_file_is_a_short_composition_of_the_kit(name: str) -> None:
    source = (POLICY_DIR / f"{name}.py").read_text()
    tree = ast.parse(source)
    assert ast.get_docstring(tree), "each policy explains itself"
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{a.name}" for a in node.names}
    assert "serving.kit" in imported
    assert {i.rsplit(".", 1)[0] for i in imported} <= {"serving", "serving.contract"}
    # The docstring explains the policy; the composition after it is what stays short.
    code = source.splitlines()[tree.body[0].end_lineno :]
    assert len(code) <= 45, "a baseline is a short composition"
    assert "PARAMS" in builtin_policy(name).module.__dict__


FIXTURES: list[tuple[ReplicaView, ...]] = [
    (),
    (rv(0, state="starting"), rv(1, state="draining")),
    (rv(0),),
    (rv(0, inflight=3, tokens=90), rv(1, inflight=3, tokens=10), rv(2, state="starting")),
    (rv(3, waiting=9, kv=95), rv(1, waiting=7, kv=99, gpu="A100")),  # saturated, out of order
    (rv(0, overlap=4, inflight=40), rv(1, inflight=1), rv(2, overlap=2, kv=60, tp=2)),
]
"""The same snapshots for every policy: empty, none serving, one, ties, saturation, mixed."""

CLUSTERS: list[tuple[Plan, dict[str, int], dict]] = [
    (Plan((H1,)), {"H100": 4}, {"waiting": 50}),
    (Plan((H1, H1, H1)), {"H100": 2}, {}),  # GPUs left the pool
    (Plan((H1, H1)), {"H100": 2, "A100": 2}, {"kv": 99, "queued": 100}),
    (Plan((H1, H1), admission_limit=8), {"H100": 2}, {"rate": 0.1}),
]


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_every_policy_on_the_shared_fixtures(name: str) -> None:
    for seed in range(3):  # a fresh load per seed: same seed, same answers
        answers = []
        for _ in range(2):
            p = builtin_policy(name)
            random.seed(seed)
            answers.append([p.route(req(4, "s" if k % 2 else ""), views, 0.0)
                            for k, views in enumerate(FIXTURES)])  # fmt: skip
        assert answers[0] == answers[1]
        for views, got in zip(FIXTURES, answers[0], strict=True):
            serving = {v.id for v in views if v.state == "serving"}
            assert (got in serving) if serving else got is None, (views, got)
    p = builtin_policy(name)
    if p.reschedule is None:
        return
    for t, (plan, pool, kw) in enumerate(CLUSTERS):
        got = p.reschedule(cluster(plan, pool=pool, capacity={H1: 10.0}, **kw), 100.0 * t)
        assert got is None or plan_problem(got, "llama-3-8b", pool, {H1, A1}) is None, got
        if got is not None:
            assert got.admission_limit == plan.admission_limit  # a plan keeps the limit


def test_loader_stays_in_the_data_plane() -> None:
    tree = ast.parse((POLICY_DIR.parent / "policy_loader.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names = (
                [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            )
            assert not any(str(n).startswith(("sandbox", "flows")) for n in names)


# --- routing -------------------------------------------------------------------------


def test_round_robin_cycles_in_id_order() -> None:
    p = builtin_policy("round_robin")
    reps = [rv(2), rv(0), rv(1, state="starting"), rv(5)]
    assert [route(p, reps) for _ in range(6)] == [0, 2, 5, 0, 2, 5]


def test_random_choice_spreads_over_serving() -> None:
    p = builtin_policy("random_choice")
    reps = [rv(0), rv(1), rv(2, state="draining"), rv(3)]
    counts = Counter(route(p, reps) for _ in range(600))
    assert set(counts) == {0, 1, 3} and min(counts.values()) > 150


def test_least_outstanding_picks_min_with_tie_breaks() -> None:
    p = builtin_policy("least_outstanding")
    assert route(p, [rv(0, inflight=3), rv(1, inflight=1), rv(2, inflight=2)]) == 1
    # Tie on requests -> fewer tokens; tie on both -> lower id.
    assert route(p, [rv(0, inflight=1, tokens=900), rv(1, inflight=1, tokens=100)]) == 1
    assert route(p, [rv(4, inflight=1, tokens=5), rv(3, inflight=1, tokens=5)]) == 3
    # Engine metrics are ignored: only the router's own count matters.
    assert route(p, [rv(0, waiting=50, inflight=0), rv(1, waiting=0, inflight=1)]) == 0


def test_shortest_queue_uses_engine_metrics() -> None:
    p = builtin_policy("shortest_queue")
    reps = [rv(0, waiting=2, running=1), rv(1, waiting=1, running=9), rv(2, waiting=1, running=4)]
    assert route(p, reps) == 2  # fewest waiting, then fewest running
    # Router in-flight counts are not seen: this is the herding-prone baseline.
    assert route(p, [rv(0, waiting=0, inflight=40), rv(1, waiting=1)]) == 0
    # RUNNING_WEIGHT = 1: score = waiting + running -> 3, 10, 5.
    assert route(p.with_params({"RUNNING_WEIGHT": 1.0}), reps) == 0


def test_least_kv_and_tolerance_band() -> None:
    p = builtin_policy("least_kv")
    reps = [rv(0, kv=40, inflight=0), rv(1, kv=35, inflight=9), rv(2, kv=90)]
    assert route(p, reps) == 1
    # Within 0.1 of the lowest use, fewer in-flight requests wins.
    assert route(p.with_params({"KV_TOLERANCE": 0.1}), reps) == 0


def test_power_of_two_never_picks_the_max_of_two() -> None:
    p = builtin_policy("power_of_two")
    reps = [rv(0, inflight=5), rv(1, inflight=1), rv(2, inflight=3)]
    picks = Counter(route(p, reps) for _ in range(500))
    assert 0 not in picks  # the most loaded replica loses every pair it is in
    assert picks[1] > picks[2] > 0  # 1 wins both its pairs, 2 only the pair with 0
    two = [rv(0, inflight=2), rv(1, inflight=7)]
    assert {route(p, two) for _ in range(50)} == {0}
    # Sampling all of them is a plain argmin.
    assert {route(p.with_params({"CHOICE_COUNT": 3}), reps) for _ in range(50)} == {1}


def test_llmd_weighted_hand_computed() -> None:
    p = builtin_policy("llmd_weighted")
    reps = [
        rv(0, waiting=0, kv=50, overlap=0),
        rv(1, waiting=4, kv=10, overlap=4),
        rv(2, waiting=2, kv=20, overlap=2),
    ]
    # queue scores (max 4, min 0): 1, 0, 0.5; kv: 0.5, 0.9, 0.8; prefix (4 blocks): 0, 1, 0.5
    # r0 = 2*1 + 2*0.5 + 3*0 = 3.0; r1 = 0 + 1.8 + 3 = 4.8; r2 = 1 + 1.6 + 1.5 = 4.1
    assert route(p, reps, req(4)) == 1
    # Without the prefix scorer: r0 = 3.0, r1 = 1.8, r2 = 2.6.
    assert route(p.with_params({"PREFIX_WEIGHT": 0}), reps, req(4)) == 0


def test_llmd_filter_and_fail_open() -> None:
    p = builtin_policy("llmd_weighted")
    # r0 has the whole prefix but 6 waiting (> 5): filtered out, r1 wins.
    reps = [rv(0, waiting=6, overlap=4), rv(1, waiting=0)]
    assert route(p, reps, req(4)) == 1
    # Everyone saturated: fail open and score them all rather than hold.
    hot = [rv(0, waiting=9, kv=95), rv(1, waiting=7, kv=90)]
    assert route(p, hot, req(4)) == 1  # queue 0 vs 1 (x2), kv 0.05 vs 0.1 (x2)


def test_llmd_breaks_ties_at_random() -> None:
    p = builtin_policy("llmd_weighted")
    reps = [rv(0), rv(1), rv(2)]
    assert {route(p, reps, req(4)) for _ in range(100)} == {0, 1, 2}


def test_prefix_affinity_follows_overlap_when_balanced() -> None:
    p = builtin_policy("prefix_affinity")
    reps = [rv(0, inflight=2), rv(1, inflight=5, overlap=4), rv(2, inflight=3, overlap=1)]
    assert route(p, reps, req(4)) == 1  # 4/4 > 0.5 and loads within 32 of each other


def test_prefix_affinity_balances_when_imbalanced() -> None:
    p = builtin_policy("prefix_affinity")
    # 40 - 2 > 32 and 40 > 1.1 * 2: imbalanced, so least loaded despite the match.
    reps = [rv(0, inflight=2), rv(1, inflight=40, overlap=4), rv(2, inflight=3)]
    assert route(p, reps, req(4)) == 0
    # Tighter thresholds make a small gap count as imbalance.
    small = [rv(0, inflight=1), rv(1, inflight=5, overlap=4)]
    assert route(p, small, req(4)) == 1
    assert route(p.with_params({"BALANCE_ABS_THRESHOLD": 2}), small, req(4)) == 0


def test_prefix_affinity_below_cache_threshold_goes_least_loaded() -> None:
    p = builtin_policy("prefix_affinity")
    reps = [rv(0, inflight=1), rv(1, inflight=4, overlap=2)]
    assert route(p, reps, req(4)) == 0  # 2/4 = 0.5 is not > 0.5
    assert route(p.with_params({"CACHE_THRESHOLD": 0.4}), reps, req(4)) == 1


def test_prefix_affinity_session_is_sticky_with_load_cap() -> None:
    p = builtin_policy("prefix_affinity")
    reps = [rv(i, inflight=2) for i in range(4)]
    home = route(p, reps, req(0, "user-42"))
    assert all(route(p, reps, req(0, "user-42")) == home for _ in range(10))
    homes = {route(p, reps, req(0, f"user-{k}")) for k in range(40)}
    assert len(homes) == 4  # sessions spread over replicas
    # Home replica far above the mean (cap = 1.25 * mean + 1): the session moves.
    loaded = [rv(i, inflight=30 if i == home else 2) for i in range(4)]
    assert route(p, loaded, req(0, "user-42")) != home


# --- rescheduling --------------------------------------------------------------------


def cluster(
    plan: Plan,
    *,
    pool: dict[str, int],
    waiting: int = 0,
    kv: int = 0,
    queued: int = 0,
    rate: float = 10.0,
    states: list[ReplicaState] | None = None,
    capacity: dict[ReplicaSpec, float] | None = None,
    cold: dict[ReplicaSpec, float] | None = None,
    duration: float = 60.0,
) -> ClusterView:
    states = states or ["serving"] * len(plan.replicas)
    reps = tuple(
        rv(i, state=st, waiting=waiting, kv=kv, gpu=s.gpu, tp=s.tp)
        for i, (s, st) in enumerate(zip(plan.replicas, states, strict=True))
    )
    return ClusterView(
        window=window(rate, duration), gpus_available=pool, plan=plan, replicas=reps,
        queued=queued, cold_start_s=cold or {}, capacity_rps=capacity or {},
    )  # fmt: skip


def test_static_plan_never_changes() -> None:
    p = builtin_policy("static_plan")
    view = cluster(Plan((H1,)), pool={"H100": 8}, waiting=100, kv=99)
    assert p.reschedule is not None and p.reschedule(view, 0.0) is None
    assert route(p, [rv(0, inflight=4), rv(1, inflight=2)]) == 1


def test_autoscaler_hysteresis() -> None:
    p = builtin_policy("threshold_autoscaler")
    assert p.reschedule is not None
    one = Plan((H1,))
    pool = {"H100": 4}
    # One hot tick (10 waiting per replica > 5) is not enough: UP_TICKS = 2.
    assert p.reschedule(cluster(one, pool=pool, waiting=10), 0.0) is None
    # A normal tick in between resets the streak.
    assert p.reschedule(cluster(one, pool=pool, waiting=3), 5.0) is None
    assert p.reschedule(cluster(one, pool=pool, waiting=10), 10.0) is None
    two = p.reschedule(cluster(one, pool=pool, waiting=10), 15.0)
    assert two == Plan((H1, H1))
    # KV pressure alone also counts; but cooldown (30 s) and the starting replica hold.
    warming = cluster(two, pool=pool, kv=95, states=["serving", "starting"])
    assert p.reschedule(warming, 20.0) is None
    assert p.reschedule(warming, 50.0) is None
    assert p.reschedule(cluster(two, pool=pool, kv=95), 55.0) is None  # streak restarts at 1
    three = p.reschedule(cluster(two, pool=pool, kv=95), 60.0)
    assert three == Plan((H1, H1, H1))
    # Cold ticks: DOWN_TICKS = 12 in a row before removing one, newest first.
    for k in range(11):
        assert p.reschedule(cluster(three, pool=pool), 100.0 + 5 * k) is None
    assert p.reschedule(cluster(three, pool=pool), 155.0) == Plan((H1, H1))


def test_autoscaler_never_exceeds_the_pool() -> None:
    p = builtin_policy("threshold_autoscaler", params={"UP_TICKS": 1, "COOLDOWN_S": 0})
    assert p.reschedule is not None
    plan = Plan((ReplicaSpec("H100", 2),), admission_limit=64)
    pool = {"H100": 5, "A100": 1}
    sizes = []
    for t in range(20):
        new = p.reschedule(cluster(plan, pool=pool, waiting=50), float(t))
        if new is not None:
            plan = new
        used = plan.gpus_by_type()
        assert all(used[g] <= pool.get(g, 0) for g in used)
        sizes.append(len(plan.replicas))
    # Two more TP=2 replicas fit in 5 H100s; the lone A100 fits a TP=2 spec nowhere.
    assert plan.replicas == (ReplicaSpec("H100", 2),) * 2 and sizes[-1] == 2
    assert plan.admission_limit == 64
    # GPUs leave: the plan is repaired at once, even inside the cooldown.
    p2 = builtin_policy("threshold_autoscaler")
    assert p2.reschedule is not None
    four = Plan((H1,) * 4)
    assert p2.reschedule(cluster(four, pool={"H100": 2}), 0.0) == Plan((H1, H1))


def test_autoscaler_uses_known_specs_when_own_type_is_full() -> None:
    p = builtin_policy("threshold_autoscaler", params={"UP_TICKS": 1})
    assert p.reschedule is not None
    a1 = ReplicaSpec("A100", 1)
    view = cluster(Plan((H1,)), pool={"H100": 1, "A100": 2}, waiting=20,
                   capacity={H1: 10.0, a1: 6.0})  # fmt: skip
    assert p.reschedule(view, 0.0) == Plan((H1, a1))


def test_reconfigure_if_pays_hand_computed() -> None:
    p = builtin_policy("reconfigure_if_pays")
    assert p.reschedule is not None
    cap = {H1: 10.0}
    one = Plan((H1,))
    # demand 15 rps, capacity 10 -> fill to 15 / 0.8 = 18.75 -> one more replica (20 rps).
    # thr_old = min(15, 10) = 10, thr_new = min(15, 20) = 15, window 60 s.
    # reload 19 s: 5 * (60 - 19) = 205 > 10 * 19 = 190 -> accept.
    view = cluster(one, pool={"H100": 4}, rate=15.0, capacity=cap, cold={H1: 19.0})
    assert p.reschedule(view, 0.0) == Plan((H1, H1))
    # reload 20 s: 5 * 40 = 200 is not > 10 * 20 = 200 -> reject.
    view = cluster(one, pool={"H100": 4}, rate=15.0, capacity=cap, cold={H1: 20.0})
    assert p.reschedule(view, 0.0) is None
    # Demand already served (5 rps <= 0.8 * 10): nothing to gain, no change.
    view = cluster(one, pool={"H100": 4}, rate=5.0, capacity=cap, cold={H1: 1.0})
    assert p.reschedule(view, 0.0) is None
    # Router backlog counts as demand: 5 rps + 600 queued / 60 s = 15 rps -> accept.
    view = cluster(one, pool={"H100": 4}, rate=5.0, queued=600, capacity=cap, cold={H1: 19.0})
    assert p.reschedule(view, 0.0) == Plan((H1, H1))


def test_reconfigure_if_pays_prefers_capacity_per_gpu_and_repairs() -> None:
    p = builtin_policy("reconfigure_if_pays")
    assert p.reschedule is not None
    h2, a1 = ReplicaSpec("H100", 2), ReplicaSpec("A100", 1)
    cap = {H1: 10.0, h2: 16.0, a1: 6.0}  # per GPU: 10, 8, 6
    # demand 40 -> target capacity 50: H100 x1 fills the free H100 first, then A100s.
    view = cluster(Plan((H1,)), pool={"H100": 2, "A100": 8}, rate=40.0, capacity=cap,
                   cold={H1: 5.0, a1: 5.0})  # fmt: skip
    new = p.reschedule(view, 0.0)
    assert new is not None
    assert new.replicas[:2] == (H1, H1) and set(new.replicas[2:]) == {a1}
    assert sum(cap[s] for s in new.replicas) >= 40 / 0.8
    # GPUs vanished and nothing pays: the repair is returned on its own.
    view = cluster(Plan((H1,) * 3), pool={"H100": 2}, rate=1.0, capacity=cap)
    assert p.reschedule(view, 0.0) == Plan((H1, H1))
    # Repaired plan that can grow: 30 rps on 2 H100 left + 2 A100 free.
    view = cluster(Plan((H1,) * 3), pool={"H100": 2, "A100": 2}, rate=30.0, capacity=cap,
                   cold={a1: 10.0})  # fmt: skip
    # thr_old = 20, thr_new = min(30, 32) = 30: 10 * 50 = 500 > 20 * 10 = 200.
    assert p.reschedule(view, 0.0) == Plan((H1, H1, a1, a1))


@pytest.mark.parametrize("name", BUILTIN_POLICIES)
def test_every_tunable_constant_is_visible_to_the_tuner(name: str) -> None:
    # The tuner reads PARAMS and their values from the source (never importing it): a
    # value it cannot read (a tuple assignment, a computed one) is a constant no search
    # can move.
    from flows.evolution.tuning import read_params

    params = builtin_policy(name).params
    assert set(read_params(builtin_source(name))) == set(params)
