"""llm-d's default weighted scoring: queue (2) + KV-cache utilisation (2) + prefix (3).

Mirrors the llm-d inference scheduler / Gateway API Inference Extension EPP
(pkg/epp/scheduling/framework/plugins): filter, then score each candidate in
[0, 1] and pick the max weighted sum. queue-scorer: (max_wait - wait) /
(max_wait - min_wait) over the candidates, 1.0 when all equal; kv-cache-
utilization-scorer: 1 - kv_usage; prefix-cache-scorer: matched prefix blocks /
request blocks. The filter is GIE's sheddable-capacity filter (waiting <= 5,
KV <= 0.8) and fails open to every serving replica when it leaves none, as the
GIE decision tree does; max-score-picker breaks ties at random.
"""

import random

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
    serving = [r for r in replicas if r.state == "serving"]
    if not serving:
        return HOLD
    candidates = [
        r for r in serving if r.waiting <= FILTER_MAX_WAITING and r.kv_usage <= FILTER_MAX_KV
    ]
    if not candidates:
        candidates = serving  # fail open: saturated replicas beat holding every request

    # Queue scores are normalised over the candidates, as llm-d's queue scorer does.
    lo = min(r.waiting for r in candidates)
    hi = max(r.waiting for r in candidates)
    blocks = len(request.prefix_hashes)

    best_score = None
    best: list[int] = []
    for r in candidates:
        queue = 1.0 if hi == lo else (hi - r.waiting) / (hi - lo)
        kv = 1.0 - r.kv_usage
        prefix = min(r.prefix_overlap_blocks, blocks) / blocks if blocks else 0.0
        score = QUEUE_WEIGHT * queue + KV_WEIGHT * kv + PREFIX_WEIGHT * prefix
        # Tolerance so float noise does not decide what is really a tie.
        if best_score is None or score > best_score + 1e-9:
            best_score, best = score, [r.id]
        elif score >= best_score - 1e-9:
            best.append(r.id)
    return random.choice(best)
