"""llm-d's default weighted scoring: queue (2) + KV-cache utilisation (2) + prefix (3).

Mirrors the llm-d inference scheduler / Gateway API Inference Extension EPP
(pkg/epp/scheduling/framework/plugins): filter, score each candidate in [0, 1],
pick the best weighted sum. Here as costs (lower is better, the same argmin):
queue-scorer (wait - min) / (max - min) over the candidates, kv-cache-utilization
the KV use, prefix-cache the fraction of request blocks not cached. The filter is
GIE's sheddable-capacity filter (waiting <= 5, KV <= 0.8) and fails open to every
serving replica when it leaves none, as the GIE decision tree does;
max-score-picker breaks ties at random.
"""

from serving import kit
from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {
    "QUEUE_WEIGHT": Param(0.0, 10.0),
    "KV_WEIGHT": Param(0.0, 10.0),
    "PREFIX_WEIGHT": Param(0.0, 10.0),
    # GIE defaults: QueueThresholdCritical = 5, KVCacheThreshold = 0.8.
    "FILTER_MAX_WAITING": Param(0, 256, integer=True),
    "FILTER_MAX_KV": Param(0.0, 1.0),
}
QUEUE_WEIGHT = 2.0
KV_WEIGHT = 2.0
PREFIX_WEIGHT = 3.0
FILTER_MAX_WAITING = 5
FILTER_MAX_KV = 0.8


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    serving = kit.serving_only(replicas)
    if not serving:
        return HOLD
    fit = kit.kv_at_most(kit.waiting_at_most(serving, FILTER_MAX_WAITING), FILTER_MAX_KV)
    candidates = fit or serving  # fail open: saturated replicas beat holding every request
    costs = kit.weighted(
        (QUEUE_WEIGHT, kit.minmax(kit.waiting(request, candidates))),
        (KV_WEIGHT, kit.kv_use(request, candidates)),
        (PREFIX_WEIGHT, kit.prefix_miss(request, candidates)),
    )
    return kit.argmin_random(candidates, costs)
