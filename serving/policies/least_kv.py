"""Least KV-cache use: the serving replica whose paged KV cache is emptiest.

Mirrors the Gateway API Inference Extension's least-kv-cache filter and
kv-cache-utilization scorer (score = 1 - vllm:kv_cache_usage_perc). Replicas
within KV_TOLERANCE of the lowest use count as tied (the GIE filter also keeps a
band above the minimum); ties go to fewer router in-flight requests.
"""

from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {
    "KV_TOLERANCE": Param(0.0, 0.5),
}
KV_TOLERANCE = 0.0


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    serving = [r for r in replicas if r.state == "serving"]
    if not serving:
        return HOLD
    lowest = min(r.kv_usage for r in serving)
    # Small epsilon so equal usages computed from different block totals still tie.
    band = [r for r in serving if r.kv_usage <= lowest + KV_TOLERANCE + 1e-12]
    return min(band, key=lambda r: (r.inflight_requests, r.id)).id
