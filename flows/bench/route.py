"""What one ``route()`` call costs, per policy, side by side in one run.

A route() call is charged to simulated time (and paid for in the live router), so
a composition of kit pieces must stay within a few times the cost of the hand
loop least-outstanding routing was before the kit. Decision inputs are recorded
once from a real simulation (requests, the views the policy saw, ``now``); every
policy then routes the same recorded decisions, in rounds that alternate between
policies so that a burst of load elsewhere on the machine hits them alike. The
figure is the median over rounds of the mean time per call; the ratio is against
``REFERENCE``, the pre-kit least-outstanding loop. Beside it, a deterministic
figure that no other work on the machine can move: Python bytecodes executed per
call (C builtins such as ``min`` count as one call, so it understates their work).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

from sandbox.scenarios import build_scenario
from sandbox.simulator import simulate
from serving.policy_loader import LoadedPolicy, load_policy

REFERENCE_SOURCE = """
from serving.contract import HOLD


def route(request, replicas, now):
    best = None
    for r in replicas:
        if r.state != "serving":
            continue
        key = (r.inflight_requests, r.inflight_tokens, r.id)
        if best is None or key < best:
            best = key
    return HOLD if best is None else best[2]
"""
"""least_outstanding as a hand-written loop (the baseline's source before the kit)."""
REFERENCE = "hand-written least_outstanding"

_RECORDER = REFERENCE_SOURCE.replace(
    "def route(request, replicas, now):",
    "SEEN = []\n\n\ndef route(request, replicas, now):\n    SEEN.append((request, replicas, now))",
)


def record_decisions(scenario: str, scale: float, limit: int) -> list[tuple]:
    """(request, views, now) of the first ``limit`` route() calls of a real simulation."""
    recorder = load_policy(_RECORDER, name="recorder")
    simulate(build_scenario(scenario, seed=0, scale=scale), recorder)
    seen = recorder.module.SEEN
    return seen[:: max(1, len(seen) // limit)][:limit]


def opcodes_per_call(policy: LoadedPolicy, decisions: Sequence[tuple]) -> float:
    """Python bytecodes one route() call executes, on average over ``decisions``."""
    count = 0

    def trace(frame: FrameType, event: str, arg: object) -> Callable:  # sys.settrace's protocol
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return trace

    random.seed(0)
    sys.settrace(trace)
    try:
        for request, views, now in decisions:
            policy.route(request, views, now)
    finally:
        sys.settrace(None)
    return count / len(decisions)


def bench_route(
    policies: Sequence[LoadedPolicy],
    *,
    scenario: str = "mixed-pool",
    scale: float = 1.0,
    calls: int = 3000,
    rounds: int = 7,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, object]:
    """Microseconds per route() call of each policy on the same recorded decisions."""
    decisions = record_decisions(scenario, scale, calls)
    everyone = [load_policy(REFERENCE_SOURCE, name=REFERENCE), *policies]
    times: dict[str, list[float]] = {p.name: [] for p in everyone}
    for k in range(rounds):
        order = everyone if k % 2 == 0 else everyone[::-1]
        for policy in order:
            route = policy.route
            random.seed(k)
            started = time.perf_counter()
            for request, views, now in decisions:
                route(request, views, now)
            times[policy.name].append((time.perf_counter() - started) / len(decisions))
        if on_round is not None:
            on_round(k)
    us = {name: statistics.median(ts) * 1e6 for name, ts in times.items()}
    ops = {p.name: opcodes_per_call(p, decisions[:500]) for p in everyone}
    replicas = statistics.mean(len(views) for _, views, _ in decisions)
    return {
        "scenario": scenario,
        "scale": scale,
        "calls": len(decisions),
        "replicas_per_call": replicas,
        "rounds": rounds,
        "route_us": us,
        "ratio_to_reference": {name: t / us[REFERENCE] for name, t in us.items()},
        "opcodes_per_call": ops,
        "opcode_ratio_to_reference": {name: n / ops[REFERENCE] for name, n in ops.items()},
    }
