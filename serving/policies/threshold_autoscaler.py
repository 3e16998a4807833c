"""Threshold autoscaler with hysteresis: add a replica under sustained pressure, remove
one under sustained slack, never outside the GPU pool.

Mirrors the llm-d workload-variant-autoscaler's saturation analyzer (a replica
is saturated at KV >= 0.80 or >= 5 waiting requests; its defaults are ours) and
the Kubernetes HPA's stabilisation: UP_TICKS consecutive hot ticks to scale up,
DOWN_TICKS cold ticks to scale down, COOLDOWN_S after any change, and no
scale-up while replicas are still starting (as HPA discounts unready pods).
Routing is least outstanding requests, duplicated so the file is self-contained.
"""

from serving.contract import HOLD, ClusterView, Param, Plan, ReplicaSpec, ReplicaView, Request

PARAMS: dict[str, Param] = {
    "UP_QUEUE_PER_REPLICA": Param(0.5, 64.0),
    "UP_KV": Param(0.3, 1.0),
    "DOWN_QUEUE_PER_REPLICA": Param(0.0, 16.0),
    "DOWN_KV": Param(0.0, 0.9),
    "UP_TICKS": Param(1, 20, integer=True),
    "DOWN_TICKS": Param(1, 120, integer=True),
    "COOLDOWN_S": Param(0.0, 600.0),
    "MIN_REPLICAS": Param(1, 16, integer=True),
}
UP_QUEUE_PER_REPLICA = 5.0
UP_KV = 0.8
DOWN_QUEUE_PER_REPLICA = 0.5
DOWN_KV = 0.4
UP_TICKS = 2
DOWN_TICKS = 12
COOLDOWN_S = 30.0
MIN_REPLICAS = 1

# State across ticks: consecutive hot / cold ticks and when the plan last changed.
_hot = 0
_cold = 0
_last_change = float("-inf")


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    best = None
    for r in replicas:
        if r.state != "serving":
            continue
        key = (r.inflight_requests, r.inflight_tokens, r.id)
        if best is None or key < best:
            best = key
    return HOLD if best is None else best[2]


def _fit_to_pool(specs: list[ReplicaSpec], pool: dict[str, int]) -> list[ReplicaSpec]:
    """Drop replicas (newest first) whose GPUs are no longer in the pool."""
    kept: list[ReplicaSpec] = []
    used: dict[str, int] = {}
    # Walk oldest first so the replicas that were there longest are the ones kept.
    for s in specs:
        if used.get(s.gpu, 0) + s.tp <= pool.get(s.gpu, 0):
            used[s.gpu] = used.get(s.gpu, 0) + s.tp
            kept.append(s)
    return kept


def _new_replica(cluster: ClusterView, specs: list[ReplicaSpec]) -> ReplicaSpec | None:
    """The spec to add: the fleet's own if its GPUs allow, else a known-good other type."""
    free = dict(cluster.gpus_available)
    for s in specs:
        free[s.gpu] = free.get(s.gpu, 0) - s.tp
    counts: dict[ReplicaSpec, int] = {}
    for s in specs:
        counts[s] = counts.get(s, 0) + 1
    # Most common existing spec first: new replicas look like the old ones.
    candidates = sorted(counts, key=lambda s: -counts[s])
    ref_tp = candidates[0].tp if candidates else 1
    # Then other GPU types: specs the cluster knows a capacity for (best per GPU
    # first), else the fleet's TP on whichever type has the most free GPUs.
    known = sorted(
        (s for s, c in cluster.capacity_rps.items() if c > 0),
        key=lambda s: (-cluster.capacity_rps[s] / s.tp, s.gpu, s.tp),
    )
    candidates += known or [
        ReplicaSpec(g, ref_tp) for g in sorted(free, key=lambda g: (-free[g], g))
    ]
    for s in candidates:
        if free.get(s.gpu, 0) >= s.tp:
            return s
    return None


def reschedule(cluster: ClusterView, now: float) -> Plan | None:
    global _hot, _cold, _last_change
    plan = cluster.plan
    specs = list(plan.replicas)

    # GPUs that left the pool take their replicas with them: repair at once,
    # whatever the cooldown, so the plan never asks for GPUs that are not there.
    fitted = _fit_to_pool(specs, dict(cluster.gpus_available))
    if len(fitted) < len(specs):
        _hot = _cold = 0
        _last_change = now
        return Plan(tuple(fitted), None, plan.admission_limit)

    serving = [r for r in cluster.replicas if r.state == "serving"]
    starting = any(r.state == "starting" for r in cluster.replicas)
    n = max(1, len(serving))
    queue = (cluster.queued + sum(r.waiting for r in serving)) / n
    kv = sum(r.kv_usage for r in serving) / n if serving else 0.0

    if len(specs) < MIN_REPLICAS or queue > UP_QUEUE_PER_REPLICA or kv > UP_KV:
        _hot, _cold = _hot + 1, 0
    elif queue < DOWN_QUEUE_PER_REPLICA and kv < DOWN_KV:
        _hot, _cold = 0, _cold + 1
    else:
        _hot = _cold = 0

    if starting:
        # Capacity is on its way: evidence for another scale-up must come after it lands.
        _hot = 0
    if now - _last_change < COOLDOWN_S:
        return None
    if _hot >= UP_TICKS:
        spec = _new_replica(cluster, specs)
        if spec is None:
            return None  # pool exhausted: nothing to add
        _hot = 0
        _last_change = now
        return Plan((*specs, spec), None, plan.admission_limit)
    if _cold >= DOWN_TICKS and len(specs) > MIN_REPLICAS:
        _cold = 0
        _last_change = now
        return Plan(tuple(specs[:-1]), None, plan.admission_limit)  # newest goes first
    return None
