"""Objectives (slo, capacity, cost) are computed in one place and carried by the protocol."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from test_scenarios import needs_traces

from sandbox.harness import run_in_process
from sandbox.objectives import (
    Objective,
    cost_objective,
    mean_objective,
    objective_by_scenario,
    run_objective,
    slo_objective,
)
from sandbox.protocol import PROTOCOL_VERSION, EvalRequest, EvalResponse, ScenarioResult
from sandbox.scenario_spec import ClusterEvent
from sandbox.simulator import simulate
from serving.policy_loader import builtin_policy, builtin_source


def test_unknown_objective_and_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown objective 'speed'; known: slo, capacity, cost"):
        Objective("speed")
    with pytest.raises(ValueError, match="capacity target"):
        Objective("capacity", target=1.0)
    with pytest.raises(ValueError, match="GPU budget"):
        Objective("cost", gpu_budget=0.0)


def test_cost_rewards_saving_gpus_only_down_to_the_budget() -> None:
    static = cost_objective(0.9, share=1.0, budget=0.75)
    saver = cost_objective(0.9, share=0.75, budget=0.75)
    starver = cost_objective(0.5, share=0.4, budget=0.75)
    spender = cost_objective(0.95, share=1.5, budget=0.75)
    assert static == pytest.approx(0.675) and saver == 0.9
    assert starver == 0.5 < saver  # going below the budget buys nothing
    assert spender == pytest.approx(0.475) and spender < static  # GPUs bought must pay


def test_run_objective_reads_the_summary_it_needs() -> None:
    summary = {"slo_attainment": 0.8, "e2e_mean_s": 3.0, "gpu_share": 1.2, "capacity_scale": 1.4}
    assert run_objective(summary, Objective()) == slo_objective(0.8, 3.0)
    assert run_objective(summary, Objective("cost")) == pytest.approx(0.8 * 0.75 / 1.2)
    assert run_objective(summary, Objective("capacity")) == 1.4
    assert slo_objective(0.8, math.inf) == pytest.approx(0.8 - 1e-4)


def test_means_over_runs_and_per_scenario() -> None:
    rs = [
        ScenarioResult("a", 0, {"objective": 0.5}, {}),
        ScenarioResult("a", 1, {"objective": 0.7}, {}),
        ScenarioResult("b", 0, {"objective": 0.9}, {}),
    ]
    assert objective_by_scenario(rs) == pytest.approx({"a": 0.6, "b": 0.9})
    assert mean_objective(rs) == pytest.approx(0.7)
    assert EvalResponse(key="k", results=tuple(rs)).objective() == pytest.approx(0.7)


def test_request_carries_split_objective_and_hints_in_its_key() -> None:
    src = builtin_source("least_outstanding")
    base = EvalRequest.build(src, ["sandbox-tiny"])
    test = EvalRequest.build(src, ["sandbox-tiny"], split="test")
    cap = EvalRequest.build(src, ["sandbox-tiny"], objective=Objective("capacity"))
    hinted = EvalRequest.build(
        src, ["sandbox-tiny"], objective=Objective("capacity"), capacity_hints={"sandbox-tiny": 2}
    )
    assert len({base.key, test.key, cap.key, hinted.key}) == 4
    back = EvalRequest.from_json(hinted.to_json())
    assert back.key == hinted.key and back.version == PROTOCOL_VERSION == 3
    assert back.objective == Objective("capacity") and back.capacity_hints == {"sandbox-tiny": 2.0}
    assert EvalRequest.build(src, ["sandbox-tiny"]).renewed().nonce != base.nonce


def test_static_plan_holds_its_whole_gpu_share_and_a_loss_lowers_it() -> None:
    from sandbox.harness import build

    scenario = build("sandbox-tiny", 0)
    assert simulate(scenario, builtin_policy("least_outstanding")).summary()["gpu_share"] == 1.0
    mid = float(scenario.workload.arrival_s[len(scenario.workload) // 2])
    lossy = replace(scenario, events=(ClusterEvent(mid, "remove_gpus", gpu="H100", count=1),))
    share = simulate(lossy, builtin_policy("least_outstanding")).summary()["gpu_share"]
    assert 0.5 < share < 1.0


def test_harness_scores_each_objective() -> None:
    src = builtin_source("least_outstanding")
    for objective in (Objective(), Objective("cost"), Objective("capacity")):
        resp = run_in_process(EvalRequest.build(src, ["sandbox-micro"], objective=objective))
        assert resp.ok, resp.rejection
        summary = resp.results[0].summary
        assert summary["objective"] == pytest.approx(run_objective(summary, objective))
    # Capacity of 60 requests at 20/s on two H100s: far above the scenario's own load.
    assert summary["capacity_scale"] > 2.0 and summary["capacity_probes"] >= 3


@needs_traces
def test_split_reaches_the_catalogue_through_the_harness() -> None:
    src = builtin_source("least_outstanding")
    responses = [
        run_in_process(EvalRequest.build(src, ["mixed-pool"], scale=0.1, split=split))
        for split in ("train", "test")
    ]
    assert all(r.ok for r in responses)
    train, test = (r.results[0].summary for r in responses)
    assert train["requests"] != test["requests"] or train["objective"] != test["objective"]
