"""A policy in simulation knows what a live router knows of a request's length: only its cap.

Public traces record only what was generated; their requests share one cap per trace
(``sandbox.traces``), so ``Request.max_output_tokens`` cannot tell a long answer from a
short one, as live, where a client's ``max_tokens`` is only an upper bound.
"""

from __future__ import annotations

import numpy as np
import pytest
from shared_support import require_shared

from sandbox.headroom import oracle
from sandbox.scenarios import SCENARIO_NAMES, build_scenario
from sandbox.simulator import simulate
from sandbox.traces import TRACE_FILES
from serving.policy_loader import load_policy

TRACES = tuple(TRACE_FILES[name] for name in ("azure-conv", "azure-code", "mooncake", "bwb"))
needs_traces = pytest.mark.shared(*TRACES)

# Sends what it believes is a long answer to the first serving replica, the rest to the last.
BY_LENGTH = """
from serving.contract import HOLD

LONG = {long}

def route(request, replicas, now):
    serving = [r for r in replicas if r.state == "serving"]
    if not serving:
        return HOLD
    return serving[0].id if request.max_output_tokens > LONG else serving[-1].id
"""


@needs_traces
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_catalogue_scenario_hides_lengths_behind_caps(name: str) -> None:
    require_shared(*TRACES)
    w = build_scenario(name, seed=0).workload
    assert np.all(w.max_tokens >= w.output_tokens)
    # One cap per source trace (length-shift joins two traces): within a trace, every
    # request carries the same cap, whatever its length.
    caps = set(w.max_tokens.tolist())
    assert len(caps) <= (2 if name == "length-shift" else 1), caps
    for cap in caps:
        outputs = w.output_tokens[w.max_tokens == cap]
        assert outputs.min() < outputs.max()  # long and short answers share it


@needs_traces
def test_a_policy_routing_on_max_output_tokens_cannot_split_long_from_short() -> None:
    require_shared(*TRACES)
    scenario = build_scenario("steady-conv", seed=0)
    out = scenario.workload.output_tokens
    policy = BY_LENGTH.format(long=int(np.median(out)))
    # Control: told the true lengths (the headroom oracle), the policy splits them.
    told = simulate(oracle(scenario), load_policy(policy, name="by-length"))
    first = told.replica == told.replica.min()
    assert out[first].min() > np.median(out) >= out[~first].max()
    # As simulated (and live): every request looks alike, so all go the same way.
    seen = simulate(scenario, load_policy(policy, name="by-length"))
    assert len(set(seen.replica.tolist())) == 1
