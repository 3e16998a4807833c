"""SGLang-style cache-aware routing with session affinity and balance thresholds.

Mirrors the SGLang router's ``cache_aware`` policy (sgl-router/src/policies/
cache_aware.rs): if router-tracked loads are imbalanced (max - min >
BALANCE_ABS_THRESHOLD and max > BALANCE_REL_THRESHOLD * min; defaults 32 and
1.1 as SGLang's) go to the least loaded; otherwise go to the longest prefix match
if its match ratio exceeds CACHE_THRESHOLD (0.5), else the least loaded (SGLang
picks its smallest tree; we have no tree, so load stands in). A request with a
session_id first tries its session's replica (rendezvous hash, like
production-stack's session router) unless that replica's load exceeds
SESSION_LOAD_FACTOR x the mean (consistent hashing with bounded loads, as Envoy's
hash_balance_factor).
"""

from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {
    "CACHE_THRESHOLD": Param(0.0, 1.0),
    "BALANCE_ABS_THRESHOLD": Param(0, 256, integer=True),
    "BALANCE_REL_THRESHOLD": Param(1.0, 4.0),
    "SESSION_LOAD_FACTOR": Param(1.0, 4.0),
}
CACHE_THRESHOLD = 0.5
BALANCE_ABS_THRESHOLD = 32
BALANCE_REL_THRESHOLD = 1.1
SESSION_LOAD_FACTOR = 1.25


def _hash(text: str) -> int:
    # FNV-1a, because Python's hash() of a str changes between processes and the
    # router, simulator and sandbox must agree on where a session lives.
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _least_loaded(serving: list[ReplicaView]) -> int:
    return min(serving, key=lambda r: (r.inflight_requests, r.kv_usage, r.id)).id


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    serving = [r for r in replicas if r.state == "serving"]
    if not serving:
        return HOLD

    if request.session_id:
        # Rendezvous hashing: a replica joining or leaving moves only its own sessions.
        ranked = sorted(serving, key=lambda r: _hash(f"{request.session_id}/{r.id}"))
        mean = sum(r.inflight_requests for r in serving) / len(serving)
        # +1 so an idle cluster (mean 0) still admits the session's first request.
        cap = SESSION_LOAD_FACTOR * mean + 1
        for r in reversed(ranked):
            if r.inflight_requests <= cap:
                return r.id
        return _least_loaded(serving)

    loads = [r.inflight_requests for r in serving]
    hi, lo = max(loads), min(loads)
    if hi - lo > BALANCE_ABS_THRESHOLD and hi > BALANCE_REL_THRESHOLD * lo:
        return _least_loaded(serving)

    blocks = len(request.prefix_hashes)
    best_overlap = max(r.prefix_overlap_blocks for r in serving)
    if blocks and min(best_overlap, blocks) / blocks > CACHE_THRESHOLD:
        # Among equally long matches, the least loaded keeps the cache hit and the balance.
        return _least_loaded([r for r in serving if r.prefix_overlap_blocks == best_overlap])
    return _least_loaded(serving)
