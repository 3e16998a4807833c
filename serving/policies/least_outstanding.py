"""Least outstanding requests: the serving replica with the fewest requests in flight.

Mirrors Envoy's LEAST_REQUEST / NGINX ``least_conn`` and SGLang's shortest-queue
fallback (worker.load() = requests the router has pending there). It reads the
router's own exact in-flight counts, not stale engine metrics, so it does not herd.
Ties go to fewer in-flight tokens (less work queued), then to the lower id.
"""

from serving import kit
from serving.contract import Param, ReplicaView, Request

PARAMS: dict[str, Param] = {}  # no constants to tune


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    return kit.least_inflight(request, replicas)  # HOLD when none is serving
