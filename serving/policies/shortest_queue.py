"""Shortest queue by engine metrics: fewest waiting requests, then fewest running.

Mirrors the Gateway API Inference Extension's least-queue filter and queue scorer
(vllm:num_requests_waiting) and metric-driven routers such as vllm-router's
"(running, waiting)" load. Its metrics are ``snapshot_age`` seconds old and do
not count what the router sent since, so bursts herd onto one replica: that
failure mode is why it is a baseline.
"""

from serving import kit
from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {
    # Weight of running sequences in the queue score (0: waiting only, as the
    # GIE queue scorer; ties on waiting still go to fewer running).
    "RUNNING_WEIGHT": Param(0.0, 2.0),
}
RUNNING_WEIGHT = 0.0


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    serving = kit.serving_only(replicas)
    if not serving:
        return HOLD
    running = kit.running(request, serving)
    queue = kit.weighted((1.0, kit.waiting(request, serving)), (RUNNING_WEIGHT, running))
    return kit.argmin(serving, queue, running)
