"""The check of a reschedule plan and its match onto the live replicas."""

from __future__ import annotations

from serving.contract import Plan, ReplicaSpec
from serving.plan_review import match_plan, review_plan

H1, A1 = ReplicaSpec("H100", 1), ReplicaSpec("A100", 1)
MODEL = "llama-3-8b"


def test_match_plan_keeps_the_oldest_of_each_spec():
    live = [(3, H1), (4, A1), (7, H1)]
    m = match_plan(Plan((A1, H1, H1, H1), weights=(0.5, 1.0, 2.0, 3.0)), live)
    assert m.keep == ((4, 0.5), (3, 1.0), (7, 2.0))
    assert m.start == ((H1, 3.0),) and m.stop == ()
    m = match_plan(Plan((H1,)), live)
    assert m.keep == ((3, 1.0),) and m.stop == (4, 7)


def test_review_plan():
    pool, menu = {"H100": 2}, {H1}
    current = Plan((H1,))
    assert review_plan(None, current, MODEL, pool, menu) == (None, None)
    assert review_plan(Plan((H1,)), current, MODEL, pool, menu) == (None, None)  # no change
    grow = Plan((H1, H1))
    assert review_plan(grow, current, MODEL, pool, menu) == (grow, None)
    plan, problem = review_plan(Plan((H1,) * 3), current, MODEL, pool, menu)
    assert plan is None and "needs 3 H100 GPUs but the pool has 2" in problem
    assert "expected Plan" in review_plan("grow", current, MODEL, pool, menu).problem
