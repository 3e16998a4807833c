"""Least KV-cache use: the serving replica whose paged KV cache is emptiest.

Mirrors the Gateway API Inference Extension's least-kv-cache filter and
kv-cache-utilization scorer (score = 1 - vllm:kv_cache_usage_perc). Replicas
within KV_TOLERANCE of the lowest use count as tied (the GIE filter also keeps a
band above the minimum); ties go to fewer router in-flight requests.
"""

from serving import kit
from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {
    "KV_TOLERANCE": Param(0.0, 0.5),
}
KV_TOLERANCE = 0.0


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    serving = kit.serving_only(replicas)
    if not serving:
        return HOLD
    band = kit.near_best(serving, kit.kv_use(request, serving), KV_TOLERANCE)
    return kit.argmin(band, kit.inflight(request, band))
