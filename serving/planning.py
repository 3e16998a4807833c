"""What a re-plan may use and may not do, shared by the live router and the simulator.

A policy's ``reschedule`` sees the same menu either way -- every replica spec
the pool's GPU types can run, with its cold start and estimated capacity --
and its plan is held to the same rules before anything is started.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serving.capacity import saturation_rps
from serving.contract import Plan, ReplicaSpec, WorkloadWindow
from serving.engine import EngineConfig
from serving.hardware import UnknownHardware, check_deployment, cold_start_s, kv_block_capacity
from serving.steptime import step_time_model

TP_DEGREES = (1, 2, 4, 8)


@dataclass(frozen=True)
class SpecCost:
    cold_start_s: float
    kv_blocks: int


def deployable_specs(
    model: str,
    gpu_types: Iterable[str],
    engine: EngineConfig = EngineConfig(),  # noqa: B008 -- frozen, safe to share
    cold_start_override_s: float | None = None,
) -> dict[ReplicaSpec, SpecCost]:
    """Every (GPU type, TP) that can serve ``model`` and has a step-time profile."""
    specs: dict[ReplicaSpec, SpecCost] = {}
    for gpu in sorted(set(gpu_types)):
        for tp in TP_DEGREES:
            try:
                check_deployment(model, gpu, tp, profiled=True)
            except UnknownHardware:
                continue
            cold = (
                cold_start_override_s
                if cold_start_override_s is not None
                else cold_start_s(model, gpu, tp)
            )
            kv = kv_block_capacity(model, gpu, tp, engine.gpu_memory_utilization, engine.block_size)
            specs[ReplicaSpec(gpu, tp)] = SpecCost(cold, kv)
    return specs


def capacities(
    model: str,
    specs: Mapping[ReplicaSpec, SpecCost],
    window: WorkloadWindow,
    engine: EngineConfig = EngineConfig(),  # noqa: B008
) -> dict[ReplicaSpec, float]:
    """Saturation requests/s of one replica of each spec on the window's median request."""
    return {
        spec: saturation_rps(
            step_time_model(model, spec.gpu, spec.tp),
            cost.kv_blocks,
            engine,
            window.input_p50 or 1.0,
            window.output_p50 or 1.0,
        )
        for spec, cost in specs.items()
    }


def plan_problem(
    plan: object, model: str, pool: Mapping[str, int], deployable: Iterable[ReplicaSpec]
) -> str | None:
    """Why this plan cannot be applied, or None when it can."""
    if not isinstance(plan, Plan):
        return f"reschedule returned {type(plan).__name__}, expected Plan or None"
    if not isinstance(plan.replicas, tuple) or not all(
        isinstance(s, ReplicaSpec) for s in plan.replicas
    ):
        return "plan.replicas must be a tuple of ReplicaSpec"
    allowed = set(deployable)
    for spec in plan.replicas:
        if spec not in allowed:
            menu = sorted(f"{s.gpu}/tp{s.tp}" for s in allowed)
            return (
                f"plan asks for {spec.gpu} TP{spec.tp}, which cannot serve {model} here"
                f" (deployable: {menu})"
            )
    for gpu, used in plan.gpus_by_type().items():
        if used > pool.get(gpu, 0):
            return f"plan needs {used} {gpu} GPUs but the pool has {pool.get(gpu, 0)}"
    if plan.weights is not None:
        if len(plan.weights) != len(plan.replicas):
            return "plan.weights must have one weight per replica"
        if not all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0
            for x in plan.weights
        ):
            return "plan.weights must be finite and non-negative"
    limit = plan.admission_limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        return f"plan.admission_limit must be a positive int or None, not {limit!r}"
    return None
