"""Static plan: least-outstanding routing and a cluster plan that never changes.

The explicit baseline for rescheduling: the fixed replica set a hand-deployed
vLLM fleet (or production-stack's Helm chart with a fixed replicaCount) runs, so
every rescheduling policy is measured against "do nothing". Routing is Envoy
LEAST_REQUEST-style least outstanding requests, duplicated here so the file
stays self-contained.
"""

from serving.contract import HOLD, ClusterView, Param, Plan, ReplicaView, Request

PARAMS: dict[str, Param] = {}  # no constants to tune


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    best = None
    for r in replicas:
        if r.state != "serving":
            continue
        key = (r.inflight_requests, r.inflight_tokens, r.id)
        if best is None or key < best:
            best = key
    return HOLD if best is None else best[2]


def reschedule(cluster: ClusterView, now: float) -> Plan | None:
    return None
