"""The rescheduling half of the policy kit (re-exported by ``serving.kit``; import that).

``reschedule`` is a trigger and a planner (the paper's two halves). The trigger
turns signals (utilisation, queue growth, SLO risk, a GPU pool change) into a
decision with hysteresis (a streak of ticks) and a cooldown after each change;
its memory lives in a ``TriggerState`` the policy creates once as a module global
(module globals are the policy's state, and a tuner's fresh load starts a fresh
one). The planner turns demand and the pool into replica specs (type, TP),
dispatch weights and a ``Plan``.

Everything but ``TriggerState`` is a pure function of the read-only ``ClusterView``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from serving.contract import ClusterView, Plan, ReplicaSpec, Request
from serving.kit_routing import est_ttft

Specs = Sequence[ReplicaSpec]


# --- signals ---------------------------------------------------------------------------


def queue_per_replica(cluster: ClusterView) -> float:
    """(Router queue + engine waiting on serving replicas) / serving replicas (min 1)."""
    serving = [r for r in cluster.replicas if r.state == "serving"]
    return (cluster.queued + sum(r.waiting for r in serving)) / max(1, len(serving))


def mean_kv(cluster: ClusterView) -> float:
    """Mean KV-cache use (0..1) of the serving replicas; 0 when none serves."""
    serving = [r for r in cluster.replicas if r.state == "serving"]
    return sum(r.kv_usage for r in serving) / len(serving) if serving else 0.0


def saturation(
    cluster: ClusterView, up_queue: float, up_kv: float, down_queue: float, down_kv: float
) -> tuple[bool, bool]:
    """(hot, cold) from queue_per_replica and mean_kv against up and down thresholds.

    Hot when queue > ``up_queue`` or KV > ``up_kv``; cold when both are below
    ``down_queue`` and ``down_kv`` (llm-d's saturation analyzer).
    """
    queue, kv = queue_per_replica(cluster), mean_kv(cluster)
    hot = queue > up_queue or kv > up_kv
    return hot, not hot and queue < down_queue and kv < down_kv


def starting(cluster: ClusterView) -> bool:
    """Whether a replica is still starting (capacity on its way: wait before adding more)."""
    return any(r.state == "starting" for r in cluster.replicas)


def demand_rps(cluster: ClusterView) -> float:
    """Requests/s to serve: the window's arrival rate plus the router backlog over one window."""
    w = cluster.window
    return w.arrival_rate + (cluster.queued / w.duration_s if w.duration_s > 0 else 0.0)


def capacity(cluster: ClusterView, specs: Specs) -> float:
    """Saturation requests/s of ``specs`` together (the cluster's per-spec estimates)."""
    return sum(cluster.capacity_rps.get(s, 0.0) for s in specs)


def utilization(cluster: ClusterView) -> float:
    """Demand over the current plan's capacity (above 1: overloaded); 0 without capacity."""
    cap = capacity(cluster, cluster.plan.replicas)
    return demand_rps(cluster) / cap if cap > 0 else 0.0


def slo_risk(cluster: ClusterView, ttft_s: float) -> float:
    """Worst est_ttft of a median-prompt request over ``ttft_s`` (above 1: SLO at risk)."""
    probe = Request(-1, 0.0, max(1, round(cluster.window.input_p50)), 1)  # nothing is routed
    serving = [r for r in cluster.replicas if r.state == "serving"]
    return max(est_ttft(probe, serving)) / ttft_s if serving else 0.0


@dataclass(slots=True)
class TriggerState:
    """A trigger's memory across ticks. Create one per policy: STATE = kit.TriggerState()."""

    hot: int = 0
    cold: int = 0
    last_change: float = float("-inf")
    backlog: float | None = None
    pool: dict[str, int] = field(default_factory=dict)


def queue_growth(state: TriggerState, cluster: ClusterView) -> float:
    """Change of (router queue + engine waiting) since the last call (0 on the first)."""
    now = cluster.queued + sum(r.waiting for r in cluster.replicas)
    before, state.backlog = state.backlog, now
    return 0.0 if before is None else now - before


def pool_changed(state: TriggerState, cluster: ClusterView) -> bool:
    """Whether the GPU pool differs from the last call (False on the first)."""
    pool = dict(cluster.gpus_available)
    changed = bool(state.pool) and pool != state.pool
    state.pool = pool
    return changed


def trigger(
    state: TriggerState,
    hot: bool,
    cold: bool,
    now: float,
    up_ticks: int,
    down_ticks: int,
    cooldown_s: float,
    hold_up: bool = False,
) -> int:
    """+1 after ``up_ticks`` hot ticks in a row, -1 after ``down_ticks`` cold ones, else 0.

    Always 0 within ``cooldown_s`` of the last change; ``hold_up`` resets the hot
    streak (e.g. while replicas start). Call ``acted`` when you change the plan.
    """
    if hot:
        state.hot, state.cold = state.hot + 1, 0
    elif cold:
        state.hot, state.cold = 0, state.cold + 1
    else:
        state.hot = state.cold = 0
    if hold_up:
        state.hot = 0
    if now - state.last_change < cooldown_s:
        return 0
    if state.hot >= up_ticks:
        return 1
    if state.cold >= down_ticks:
        return -1
    return 0


def acted(state: TriggerState, now: float) -> None:
    """The plan changed at ``now``: streaks restart and the cooldown begins."""
    state.hot = state.cold = 0
    state.last_change = now


# --- planner -----------------------------------------------------------------------------


def fit_to_pool(specs: Specs, pool: Mapping[str, int]) -> list[ReplicaSpec]:
    """The replicas (oldest first) whose GPUs the pool still has; later ones are dropped."""
    kept: list[ReplicaSpec] = []
    used: dict[str, int] = {}
    for s in specs:
        if used.get(s.gpu, 0) + s.tp <= pool.get(s.gpu, 0):
            used[s.gpu] = used.get(s.gpu, 0) + s.tp
            kept.append(s)
    return kept


def free_gpus(cluster: ClusterView, specs: Specs) -> dict[str, int]:
    """GPUs of each type in the pool that ``specs`` leave unused."""
    free = dict(cluster.gpus_available)
    for s in specs:
        free[s.gpu] = free.get(s.gpu, 0) - s.tp
    return free


def ranked_specs(cluster: ClusterView) -> list[ReplicaSpec]:
    """Deployable specs (GPU type and TP) by capacity per GPU, best first: the TP choice."""
    cap = cluster.capacity_rps
    return sorted((s for s, c in cap.items() if c > 0), key=lambda s: (-cap[s] / s.tp, s.gpu, s.tp))


def next_spec(cluster: ClusterView, specs: Specs) -> ReplicaSpec | None:
    """The spec of one more replica that fits the free GPUs, or None.

    The fleet's most common spec first (new replicas look like the old), then the best
    capacity per GPU, else the fleet's TP on the type with most free GPUs.
    """
    free = free_gpus(cluster, specs)
    counts: dict[ReplicaSpec, int] = {}
    for s in specs:
        counts[s] = counts.get(s, 0) + 1
    candidates = sorted(counts, key=lambda s: -counts[s])  # new replicas look like the old
    tp = candidates[0].tp if candidates else 1
    candidates += ranked_specs(cluster) or [
        ReplicaSpec(g, tp) for g in sorted(free, key=lambda g: (-free[g], g))
    ]
    return next((s for s in candidates if free.get(s.gpu, 0) >= s.tp), None)


def scale(cluster: ClusterView, specs: Specs, step: int, min_replicas: int = 1
          ) -> list[ReplicaSpec] | None:  # fmt: skip
    """``specs`` with one replica more (step > 0) or fewer (step < 0); None if impossible.

    Up adds ``next_spec``; down drops the newest but keeps ``min_replicas``; step 0: None.
    """
    if step > 0:
        spec = next_spec(cluster, specs)
        return None if spec is None else [*specs, spec]
    if step < 0 and len(specs) > min_replicas:
        return list(specs[:-1])
    return None


def fill_pool(cluster: ClusterView, specs: Specs) -> list[ReplicaSpec]:
    """``specs`` plus ``next_spec`` replicas until no free GPU fits one more.

    Every GPU the pool has serves: what GPUs that come back are for, when GPU time is
    not what is scored.
    """
    filled = list(specs)
    while (spec := next_spec(cluster, filled)) is not None:
        filled.append(spec)
    return filled


def grow(cluster: ClusterView, specs: Specs, demand: float, target: float) -> list[ReplicaSpec]:
    """Specs to add, best per GPU first, until capacity x ``target`` >= ``demand``.

    Within the free GPUs; empty when capacity already suffices or nothing fits.
    """
    free = free_gpus(cluster, specs)
    ranked = ranked_specs(cluster)
    added: list[ReplicaSpec] = []
    cap = capacity(cluster, specs)
    while cap * target < demand:
        spec = next((s for s in ranked if free.get(s.gpu, 0) >= s.tp), None)
        if spec is None:
            break
        added.append(spec)
        free[spec.gpu] -= spec.tp
        cap += cluster.capacity_rps[spec]
    return added


def plan_for_demand(cluster: ClusterView, target: float) -> list[ReplicaSpec]:
    """A fleet from scratch: best-per-GPU specs until capacity x ``target`` >= demand."""
    specs = grow(cluster, [], demand_rps(cluster), target)
    if not specs:
        spec = next_spec(cluster, [])
        specs = [spec] if spec is not None else []
    return specs


def capacity_weights(cluster: ClusterView, specs: Specs) -> tuple[float, ...]:
    """Dispatch weights proportional to each spec's capacity (mean 1), for mixed pools."""
    caps = [cluster.capacity_rps.get(s, 0.0) for s in specs]
    mean = sum(caps) / len(caps) if caps else 0.0
    return tuple(c / mean if mean > 0 else 1.0 for c in caps)


def reload_s(cluster: ClusterView, specs: Specs, default: float) -> float:
    """Longest cold start among ``specs`` (``default`` where the cluster gives none)."""
    return max((cluster.cold_start_s.get(s, default) for s in specs), default=0.0)


def pays_back(thr_old: float, thr_new: float, window_s: float, reload: float,
              margin: float) -> bool:  # fmt: skip
    """True when (new - old) throughput x (window - reload) > margin x old x reload.

    The payback rule: what a change gains over the rest of the window beats what
    serving nothing for ``reload`` seconds would lose.
    """
    return (thr_new - thr_old) * (window_s - reload) > margin * thr_old * reload


def replan(cluster: ClusterView, specs: Specs, weights: Sequence[float] | None = None) -> Plan:
    """A Plan of ``specs`` (and weights), keeping the current admission limit."""
    return Plan(tuple(specs), tuple(weights) if weights is not None else None,
                cluster.plan.admission_limit)  # fmt: skip
