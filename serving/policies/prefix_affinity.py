"""SGLang-style cache-aware routing with session affinity and balance thresholds.

Mirrors the SGLang router's ``cache_aware`` policy (sgl-router/src/policies/
cache_aware.rs): if router-tracked loads are imbalanced (max - min >
BALANCE_ABS_THRESHOLD and max > BALANCE_REL_THRESHOLD * min; SGLang's 32 and 1.1)
go to the least loaded; otherwise to the longest prefix match if it covers more
than CACHE_THRESHOLD (0.5) of the request, else the least loaded (SGLang picks its
smallest tree; load stands in). A session first tries its rendezvous-hash home
(production-stack's session router) unless loaded beyond SESSION_LOAD_FACTOR x the
mean (Envoy's hash_balance_factor). Least loaded: in flight, then KV use, then id.
"""

from serving import kit
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


def _least_loaded(request: Request, replicas: list[ReplicaView]) -> int:
    return kit.argmin(replicas, kit.inflight(request, replicas), kit.kv_use(request, replicas))


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    serving = kit.serving_only(replicas)
    if not serving:
        return HOLD
    if request.session_id:
        home = kit.session_home(request, serving, SESSION_LOAD_FACTOR)
        return home if home is not None else _least_loaded(request, serving)
    if kit.imbalanced(serving, BALANCE_ABS_THRESHOLD, BALANCE_REL_THRESHOLD):
        return _least_loaded(request, serving)
    cached = kit.best_prefix(request, serving, CACHE_THRESHOLD)
    return _least_loaded(request, cached or serving)
