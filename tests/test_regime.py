"""The quick scale keeps every scenario's regime, so evolution selects on the full problem.

At ``QUICK_SCALE`` each of least_outstanding and prefix_affinity must stay within 0.1 SLO
attainment of its full-scale value, and the full-scale top two baselines must stay in the
top two (within ``TIE`` of the second best: several baselines route identically, e.g.
least_outstanding and static_plan, and tie exactly). A scenario the scale leaves unchanged
passes by construction; the test checks that it is unchanged, and simulates the others.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_scenarios import needs_traces

from flows.bench.baselines import bench_baselines
from flows.evolution.config import FULL_SUITE, QUICK_SCALE, QUICK_SUITE
from sandbox.scenarios import SCENARIO_NAMES, build_scenario, scenario_size

TOLERANCE = 0.1
TIE = 0.01


def test_suites_use_the_scales_the_regime_test_holds() -> None:
    assert QUICK_SUITE.scale == QUICK_SCALE and FULL_SUITE.scale == 1.0
    assert set(QUICK_SUITE.scenarios) <= set(FULL_SUITE.scenarios) == set(SCENARIO_NAMES)


def _same(a, b) -> bool:
    wa, wb = a.workload, b.workload
    return (
        a.cluster == b.cluster
        and a.events == b.events
        and np.array_equal(wa.arrival_s, wb.arrival_s)
        and np.array_equal(wa.prompt_tokens, wb.prompt_tokens)
        and np.array_equal(wa.output_tokens, wb.output_tokens)
        and wa.prefix_hashes == wb.prefix_hashes
    )


@needs_traces
@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_quick_scale_keeps_the_regime(name: str, split: str) -> None:
    if scenario_size(name, QUICK_SCALE) == scenario_size(name):
        assert _same(
            build_scenario(name, 0, scale=QUICK_SCALE, split=split),
            build_scenario(name, 0, split=split),
        )
        return
    full, quick = (
        bench_baselines([name], seeds=(0,), scale=scale, split=split).set_index("policy")
        for scale in (1.0, QUICK_SCALE)
    )
    for policy in ("least_outstanding", "prefix_affinity"):
        drift = quick.at[policy, "slo_attainment"] - full.at[policy, "slo_attainment"]
        assert abs(drift) <= TOLERANCE, (policy, drift)
    top_two = full["objective"].sort_values(ascending=False).index[:2]
    second = quick["objective"].sort_values(ascending=False).iloc[1]
    for policy in top_two:
        assert quick.at[policy, "objective"] >= second - TIE, (policy, quick["objective"])


@needs_traces
def test_halving_prefix_heavy_leaves_the_regime() -> None:
    # Why QUICK_SCALE is 1: two replicas pool 15k-66k-token prompts worse than four, so
    # on this test stretch least_outstanding falls from ~0.72 to ~0.30 on half the fleet.
    # If this starts passing within the tolerance, a smaller quick scale may be possible.
    full, half = (
        bench_baselines(["prefix-heavy"], ["least_outstanding"], scale=s, split="test")
        for s in (1.0, 0.5)
    )
    drift = half["slo_attainment"].iloc[0] - full["slo_attainment"].iloc[0]
    assert abs(drift) > TOLERANCE
