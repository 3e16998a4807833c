"""The re-planning menu and rules shared by the router and the simulator."""

from __future__ import annotations

from serving.contract import Plan, ReplicaSpec, WorkloadWindow
from serving.planning import capacities, deployable_specs, plan_problem

WINDOW = WorkloadWindow(60.0, 600, 10.0, 1.0, 1000, 2000, 4000, 200, 400, 600, 0.0)


def test_menu_lists_only_what_can_serve_the_model():
    menu = deployable_specs("llama-3-70b", ["H100", "A100"])
    assert set(menu) == {ReplicaSpec(g, tp) for g in ("H100", "A100") for tp in (4, 8)}
    assert all(cost.cold_start_s > 0 and cost.kv_blocks > 0 for cost in menu.values())
    assert deployable_specs("llama-3-8b", ["H100"], cold_start_override_s=3.0)[
        ReplicaSpec("H100", 1)
    ].cold_start_s == 3.0


def test_capacity_orders_gpus_sensibly():
    menu = deployable_specs("llama-3-8b", ["H100", "A100", "H200"])
    cap = capacities("llama-3-8b", menu, WINDOW)
    assert cap[ReplicaSpec("A100")] < cap[ReplicaSpec("H100")] < cap[ReplicaSpec("H200")]


def test_plan_rules():
    menu = deployable_specs("llama-3-8b", ["H100"])
    pool = {"H100": 2}

    def problem(plan):
        return plan_problem(plan, "llama-3-8b", pool, menu)

    assert problem(Plan((ReplicaSpec("H100"),) * 2)) is None
    assert "pool has 2" in problem(Plan((ReplicaSpec("H100"),) * 3))
    assert "cannot serve llama-3-8b" in problem(Plan((ReplicaSpec("H100", 8),)))
    assert "expected Plan" in problem({"replicas": []})
    assert "tuple of ReplicaSpec" in problem(Plan([ReplicaSpec("H100")]))
    assert "one weight per replica" in problem(Plan((ReplicaSpec("H100"),), weights=(1.0, 2.0)))
    assert "finite" in problem(Plan((ReplicaSpec("H100"),), weights=(float("inf"),)))
    assert "admission_limit" in problem(Plan((ReplicaSpec("H100"),), admission_limit=0))
