"""Least outstanding requests: the serving replica with the fewest requests in flight.

Mirrors Envoy's LEAST_REQUEST / NGINX ``least_conn`` and SGLang's shortest-queue
fallback (worker.load() = requests the router has pending there). It reads the
router's own exact in-flight counts, not stale engine metrics, so it does not herd.
"""

from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {}  # no constants to tune


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    best = None
    for r in replicas:
        if r.state != "serving":
            continue
        # Ties on request count go to fewer in-flight tokens (less work queued),
        # then to the lower id so the choice is deterministic.
        key = (r.inflight_requests, r.inflight_tokens, r.id)
        if best is None or key < best:
            best = key
    return HOLD if best is None else best[2]
