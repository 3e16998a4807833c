"""Random: each request goes to a uniformly random serving replica.

Mirrors the ``random`` policy of the SGLang router (sgl-router/src/policies/
random.rs) and Envoy's RANDOM load balancer: stateless, load-blind, and free of
the herding that stale load metrics cause.
"""

from serving import kit
from serving.contract import Param, ReplicaView, Request

PARAMS: dict[str, Param] = {}  # no constants to tune


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    return kit.uniform(replicas)  # HOLD when none is serving
