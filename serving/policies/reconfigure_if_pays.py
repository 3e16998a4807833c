"""Reconfigure only when it pays: grow the fleet into free GPUs if the throughput gained
over the rest of the window outweighs what the reload costs.

Candidate: fill free GPUs with the spec of best capacity per GPU until capacity x
TARGET_UTILIZATION covers demand (arrivals + router backlog). Accepted iff (thr_new -
thr_old) * (window - reload) > PAYBACK_MARGIN * thr_old * reload, thr = min(demand,
capacity), reload = the longest cold start added: rescheduling gain against
reconfiguration overhead, charged as if serving stopped during the reload. Replicas
whose GPUs left the pool are dropped at once. Routing is least outstanding requests.
"""

from serving import kit
from serving.contract import ClusterView, Param, Plan, ReplicaView, Request

PARAMS: dict[str, Param] = {
    "TARGET_UTILIZATION": Param(0.3, 1.0),
    "PAYBACK_MARGIN": Param(0.5, 4.0),
    "DEFAULT_COLD_START_S": Param(0.0, 600.0),
}
TARGET_UTILIZATION = 0.8
PAYBACK_MARGIN = 1.0
DEFAULT_COLD_START_S = 60.0  # for specs the cluster gives no cold-start estimate


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    return kit.least_inflight(request, replicas)  # HOLD when none is serving


def reschedule(cluster: ClusterView, now: float) -> Plan | None:
    specs = list(cluster.plan.replicas)
    base = kit.fit_to_pool(specs, cluster.gpus_available)
    demand = kit.demand_rps(cluster)
    added = kit.grow(cluster, base, demand, TARGET_UTILIZATION)
    if added:
        old = min(demand, kit.capacity(cluster, base))
        new = min(demand, kit.capacity(cluster, base + added))
        reload = kit.reload_s(cluster, added, DEFAULT_COLD_START_S)
        if kit.pays_back(old, new, cluster.window.duration_s, reload, PAYBACK_MARGIN):
            return kit.replan(cluster, base + added)
    return kit.replan(cluster, base) if len(base) < len(specs) else None
