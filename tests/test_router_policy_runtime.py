"""Policy slot: budget, invalid answers, demotion, rollback."""

from __future__ import annotations

from serving.contract import ReplicaView, Request
from serving.policy_loader import builtin_policy, load_policy
from serving.policy_runtime import PolicyRuntime

REQ = Request(id=0, arrival=0.0, prompt_tokens=10, max_output_tokens=5)
VIEWS = tuple(ReplicaView(i, "H100", 1, "serving", 0, 0, 0, 100, i, 0, 0, 0.0)
              for i in range(2))

SLOW = '''
import time
def route(request, replicas, now):
    time.sleep(0.01)
    return replicas[-1].id
'''
INVALID = '''
def route(request, replicas, now):
    return 99
'''


def test_over_budget_answer_is_discarded():
    rt = PolicyRuntime(load_policy(SLOW, name="slow"), budget_s=0.001)
    choice, active = rt.route(REQ, VIEWS, 0.0)
    assert active is rt.baseline and choice == 0
    assert rt.fallbacks["budget"] == 1


def test_invalid_choice_falls_back_to_last_good_then_demotes():
    rt = PolicyRuntime(builtin_policy("round_robin"), max_consecutive_failures=3)
    rt.route(REQ, VIEWS, 0.0)
    good = rt.current
    rt.swap(load_policy(INVALID, name="invalid"), "bad")
    for _ in range(3):
        choice, active = rt.route(REQ, VIEWS, 0.0)
        assert active is good and choice in (0, 1)
    assert rt.fallbacks["invalid"] == 3 and rt.demotions == 1
    assert rt.current is good


def test_rollback_restores_previous():
    rt = PolicyRuntime(builtin_policy("round_robin"), "v1")
    rt.swap(builtin_policy("least_outstanding"), "v2")
    assert rt.rollback().version == "v1"
    assert rt.previous.version == "v2"
