"""The routing core on its own: views, the drain rule, admission, choice checks, plan weights."""

from __future__ import annotations

import numpy as np
import pytest

from serving.contract import DEFAULT_PREFILL_TPS, HOLD, Plan, ReplicaSpec, ReplicaView, Request
from serving.engine import EngineConfig
from serving.routing import (
    SKIP_AHEAD,
    InvalidChoice,
    RoutingCore,
    choice_problem,
    prefill_rate,
)

H1, A1 = ReplicaSpec("H100", 1), ReplicaSpec("A100", 1)
MODEL = "llama-3-8b"


def req(i: int, prompt: int = 320, hashes: tuple[int, ...] = ()) -> Request:
    return Request(id=i, arrival=float(i), prompt_tokens=prompt, max_output_tokens=10,
                   prefix_hashes=hashes)  # fmt: skip


def core(n: int = 2, spec: ReplicaSpec = H1, **kw) -> RoutingCore:
    c = RoutingCore(MODEL, **kw)
    for i in range(n):
        c.add_replica(i, spec, kv_blocks=1000, prefix_capacity=1000, state="serving")
    return c


class Decider:
    """Routes to the fewest in flight unless the request id is in ``hold``; logs the calls."""

    def __init__(self, hold: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.hold = set(hold)
        self.calls: list[int] = []

    def __call__(self, request: Request, views: tuple[ReplicaView, ...], now: float):
        self.calls.append(request.id)
        if request.id in self.hold:
            return HOLD
        serving = [v for v in views if v.state == "serving"]
        return min(serving, key=lambda v: (v.inflight_requests, v.id)).id


def routed(dispatched) -> list[tuple[int, int]]:
    return [(entry.request.id, replica) for entry, replica in dispatched]


# --- views ---------------------------------------------------------------------------


def test_views_carry_every_field_in_id_order():
    c = RoutingCore(MODEL)
    c.add_replica(5, A1, kv_blocks=800, prefix_capacity=800, state="serving", weight=2.0)
    c.add_replica(2, H1, kv_blocks=900, prefix_capacity=900)
    c.observe(5, running=3, waiting=1, kv_used=400, at=1.0)
    views = c.views(None, now=1.5)
    assert [v.id for v in views] == [2, 5]
    v = views[1]
    assert len(v) == len(ReplicaView._fields)  # built with tuple.__new__: no field dropped
    assert (v.gpu, v.tp, v.state, v.running, v.waiting, v.kv_blocks_used, v.kv_blocks_total) == (
        "A100", 1, "serving", 3, 1, 400, 800)  # fmt: skip
    assert v.snapshot_age == 0.5 and v.weight == 2.0 and v.kv_usage == 0.5
    assert views[0].state == "starting" and views[0].prefill_tps > v.prefill_tps  # H100 > A100


def test_prefill_rate_comes_from_the_step_time_model():
    h100 = prefill_rate(MODEL, "H100", 1, EngineConfig())
    assert 30_000 < h100 < 60_000  # tokens/s of an 8B model prefilling 2k-token prompts
    assert prefill_rate("llama-3-70b", "H100", 8, EngineConfig()) < h100
    assert prefill_rate("no-such-model", "H100", 1, EngineConfig()) == DEFAULT_PREFILL_TPS


def test_invisible_and_excluded_replicas_are_in_no_view():
    c = core(3)
    c.set_visible(1, False)
    assert [v.id for v in c.views(None, 0.0)] == [0, 2]
    assert [v.id for v in c.views(None, 0.0, frozenset({2}))] == [0]
    c.set_visible(1, True)
    assert [v.id for v in c.views(None, 0.0)] == [0, 1, 2]
    c.set_visible(2, False)
    c.remove_replica(2)  # a hidden replica leaves: the rest need no filtering
    assert c._hidden == 0 and [v.id for v in c.views(None, 0.0)] == [0, 1]


def test_prefix_overlap_and_prefill_backlog_follow_dispatches():
    c = core(2)
    c.dispatch(0, req(0, prompt=1600, hashes=tuple(range(100))), now=0.0)
    rate = c.slot(0).prefill_tps
    views = c.views(req(1, prompt=800, hashes=tuple(range(50))), now=0.01)
    assert [v.prefix_overlap_blocks for v in views] == [50, 0]
    assert views[0].queued_prefill_tokens == pytest.approx(1600 - 0.01 * rate)
    assert views[1].queued_prefill_tokens == 0.0
    assert c.views(None, now=1.0)[0].queued_prefill_tokens == 0.0  # drained at its rate
    # A cached prefix is not prefill work: 32 of 40 blocks hit, 8 * 16 tokens left.
    c.dispatch(1, req(2, prompt=640, hashes=tuple(range(40))), now=2.0, overlap=32)
    assert c.views(None, now=2.0)[1].queued_prefill_tokens == pytest.approx(128)


# --- the drain rule ------------------------------------------------------------------


def test_a_held_request_does_not_block_the_ones_behind_it():
    c = core(2)
    decide = Decider(hold={0})
    _, out = c.arrive(req(0), 0.0, decide)
    assert out == [] and [e.request.id for e in c.held] == [0]
    _, out = c.arrive(req(1), 1.0, decide)
    assert routed(out) == [(1, 0)] and [e.request.id for e in c.held] == [0]
    assert decide.calls == [0, 0, 1]  # the older one is offered first, every time


def test_a_newcomer_never_overtakes_an_older_request_that_can_now_go():
    c = core(1)
    decide = Decider(hold={0})
    c.arrive(req(0), 0.0, decide)
    decide.hold.clear()
    _, out = c.arrive(req(1), 1.0, decide)
    assert routed(out) == [(0, 0), (1, 0)]


def test_a_drain_passes_over_at_most_skip_ahead_held_requests():
    c = core(2)
    decide = Decider(hold=set(range(SKIP_AHEAD + 1)))
    for i in range(SKIP_AHEAD + 2):
        c.enqueue(req(i))
    out = c.drain(0.0, decide)
    assert out == [] and decide.calls == list(range(SKIP_AHEAD + 1))  # the last is not asked
    decide.hold.discard(3)
    out = c.drain(1.0, decide)
    assert routed(out) == [(3, 0), (SKIP_AHEAD + 1, 1)]
    assert RoutingCore(MODEL, skip_ahead=0).skip_ahead == 0  # head-of-line is one setting away


def test_each_dispatch_is_counted_before_the_next_decision():
    c = core(2)
    for i in range(4):
        c.enqueue(req(i))
    assert routed(c.drain(0.0, Decider())) == [(0, 0), (1, 1), (2, 0), (3, 1)]
    assert c.inflight == 4 and c.accounting.ledger(0).inflight_requests == 2


def test_admission_limit_gates_every_request_and_finishes_reopen_it():
    c = core(2)
    c.follow_plan(Plan((H1, H1), admission_limit=2))
    decide = Decider()
    for i in range(4):
        c.arrive(req(i), 0.0, decide)
    assert c.inflight == 2 and [e.request.id for e in c.held] == [2, 3]
    assert decide.calls == [0, 1]  # held by the gate, the policy was not asked
    c.finish(0, req(0))
    assert routed(c.drain(1.0, decide)) == [(2, 0)]


def test_nothing_serving_holds_without_asking_the_policy():
    c = core(2)
    for s in c.slots():
        s.state = "starting"
    decide = Decider()
    c.arrive(req(0), 0.0, decide)
    assert decide.calls == [] and len(c.held) == 1
    c.slot(1).state = "serving"
    assert routed(c.drain(1.0, decide)) == [(0, 1)]


def test_retry_goes_first_and_avoids_the_replica_that_failed_it():
    c = core(2)
    decide = Decider(hold={0})
    c.arrive(req(0), 0.0, decide)
    _, out = c.arrive(req(1), 0.0, decide, exclude=frozenset({0}), front=True)
    assert routed(out) == [(1, 1)]
    # Excluded from every serving replica: held, asked no more.
    c.arrive(req(2), 0.0, decide, exclude=frozenset({0, 1}), front=True)
    assert [e.request.id for e in c.held] == [2, 0] and decide.calls.count(2) == 0


def test_withdraw_takes_a_held_request_out():
    c = core(1)
    entry, _ = c.arrive(req(0), 0.0, Decider(hold={0}))
    c.withdraw(entry)
    c.withdraw(entry)  # twice is harmless
    assert not c.held


def test_a_removed_replica_takes_its_requests_out_of_the_admission_count():
    c = core(2)
    c.dispatch(0, req(0), 0.0)
    c.dispatch(1, req(1), 0.0)
    c.remove_replica(0)
    assert c.inflight == 1
    c.finish(0, req(0))  # its late finish changes nothing
    assert c.inflight == 1 and [v.id for v in c.views(None, 0.0)] == [1]


# --- validation ----------------------------------------------------------------------


def test_choice_problem_names_what_is_wrong():
    c = core(2)
    c.slot(1).state = "draining"
    views = c.views(None, 0.0)
    assert choice_problem(HOLD, views) is None and choice_problem(0, views) is None
    assert "returned bool" in choice_problem(True, views)
    assert "returned float" in choice_problem(0.0, views)
    assert "replica is draining; serving ids: [0]" in choice_problem(1, views)
    assert "9 (no such replica" in choice_problem(9, views)
    c.enqueue(req(0))
    with pytest.raises(InvalidChoice, match="no such replica"):
        c.drain(0.0, lambda r, v, n: 9)
    with pytest.raises(InvalidChoice, match="returned bool"):
        c.drain(0.0, lambda r, v, n: True)  # True == 1, and 1 is a replica: still no
    with pytest.raises(InvalidChoice, match="replica is draining"):
        c.drain(0.0, lambda r, v, n: 1)
    assert routed(c.drain(0.0, lambda r, v, n: np.int64(0))) == [(0, 0)]  # numpy ids are ids


def test_follow_plan_sets_weights_by_spec_and_the_admission_limit():
    c = RoutingCore(MODEL)
    c.add_replica(0, H1, kv_blocks=10, prefix_capacity=10, state="serving")
    c.add_replica(1, A1, kv_blocks=10, prefix_capacity=10, state="serving")
    c.follow_plan(Plan((A1, H1), weights=(3.0, 0.5), admission_limit=7))
    assert [v.weight for v in c.views(None, 0.0)] == [0.5, 3.0] and c.admission_limit == 7
