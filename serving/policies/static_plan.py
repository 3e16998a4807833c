"""Static plan: least-outstanding routing and a cluster plan that never changes.

The explicit baseline for rescheduling: the fixed replica set a hand-deployed
vLLM fleet (or production-stack's Helm chart with a fixed replicaCount) runs, so
every rescheduling policy is measured against "do nothing". Routing is Envoy
LEAST_REQUEST-style least outstanding requests.
"""

from serving import kit
from serving.contract import ClusterView, Param, Plan, ReplicaView, Request

PARAMS: dict[str, Param] = {}  # no constants to tune


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    return kit.least_inflight(request, replicas)  # HOLD when none is serving


def reschedule(cluster: ClusterView, now: float) -> Plan | None:
    return None
