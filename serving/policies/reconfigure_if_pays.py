"""Reconfigure only when it pays: grow the fleet into free GPUs if the throughput gained
over the rest of the window outweighs what the reload costs.

A candidate plan (fill free GPUs with the spec of best capacity_rps per GPU,
up to demand / TARGET_UTILIZATION) is accepted iff
(thr_new - thr_old) * (window - reload) > PAYBACK_MARGIN * thr_old * reload, with
thr = min(demand, sum of capacity_rps) and demand = arrival_rate + queued /
window (served throughput, not raw capacity: capacity nobody asks for gains
nothing), window = window.duration_s, reload = max cold_start_s of the added
replicas: the design's trade-off of rescheduling gain against reconfiguration
overhead, charged conservatively as if serving stopped during the reload.
Replicas whose GPUs left the pool are dropped unconditionally (they are gone
either way). Routing is least outstanding, duplicated to stay self-contained.
"""

from serving.contract import HOLD, ClusterView, Param, Plan, ReplicaSpec, ReplicaView, Request

PARAMS: dict[str, Param] = {
    "TARGET_UTILIZATION": Param(0.3, 1.0),
    "PAYBACK_MARGIN": Param(0.5, 4.0),
    "DEFAULT_COLD_START_S": Param(0.0, 600.0),
}
TARGET_UTILIZATION = 0.8
PAYBACK_MARGIN = 1.0
DEFAULT_COLD_START_S = 60.0  # for specs the cluster gives no cold-start estimate


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
    """Keep replicas, oldest first, while their GPU type still has GPUs for them."""
    kept: list[ReplicaSpec] = []
    used: dict[str, int] = {}
    for s in specs:
        if used.get(s.gpu, 0) + s.tp <= pool.get(s.gpu, 0):
            used[s.gpu] = used.get(s.gpu, 0) + s.tp
            kept.append(s)
    return kept


def _capacity(cluster: ClusterView, specs: list[ReplicaSpec]) -> float:
    return sum(cluster.capacity_rps.get(s, 0.0) for s in specs)


def _throughput(demand: float, capacity: float) -> float:
    return min(demand, capacity)


def pays(thr_old: float, thr_new: float, window_s: float, reload_s: float) -> bool:
    """The payback rule: gain over the rest of the window beats what the reload loses."""
    return (thr_new - thr_old) * (window_s - reload_s) > PAYBACK_MARGIN * thr_old * reload_s


def reschedule(cluster: ClusterView, now: float) -> Plan | None:
    plan = cluster.plan
    window = cluster.window
    specs = list(plan.replicas)
    base = _fit_to_pool(specs, dict(cluster.gpus_available))

    # Demand is what arrives plus the router backlog, drained over one window.
    backlog = cluster.queued / window.duration_s if window.duration_s > 0 else 0.0
    demand = window.arrival_rate + backlog
    free = dict(cluster.gpus_available)
    for s in base:
        free[s.gpu] = free.get(s.gpu, 0) - s.tp
    # Best throughput per GPU first, so the free GPUs buy the most capacity.
    ranked = sorted(
        (s for s, c in cluster.capacity_rps.items() if c > 0),
        key=lambda s: (-cluster.capacity_rps[s] / s.tp, s.gpu, s.tp),
    )
    added: list[ReplicaSpec] = []
    capacity = _capacity(cluster, base)
    while capacity * TARGET_UTILIZATION < demand:
        spec = next((s for s in ranked if free.get(s.gpu, 0) >= s.tp), None)
        if spec is None:
            break
        added.append(spec)
        free[spec.gpu] -= spec.tp
        capacity += cluster.capacity_rps[spec]

    if added:
        thr_old = _throughput(demand, _capacity(cluster, base))
        thr_new = _throughput(demand, capacity)
        reload = max(cluster.cold_start_s.get(s, DEFAULT_COLD_START_S) for s in added)
        if pays(thr_old, thr_new, window.duration_s, reload):
            return Plan((*base, *added), None, plan.admission_limit)
    if len(base) < len(specs):
        return Plan(tuple(base), None, plan.admission_limit)
    return None
