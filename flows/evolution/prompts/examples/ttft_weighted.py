"""Route on estimated time to first token; in-flight load per plan weight breaks near-ties."""

from serving import kit
from serving.contract import HOLD, Param

PARAMS = {"LOAD_WEIGHT": Param(0.0, 0.2)}
LOAD_WEIGHT = 0.02  # seconds of estimated TTFT that one more request in flight is worth


def route(request, replicas, now):
    serving = kit.serving_only(replicas)
    if not serving:
        return HOLD
    costs = kit.weighted(
        (1.0, kit.est_ttft(request, serving)),
        (LOAD_WEIGHT, kit.inflight_per_weight(request, serving)),
    )
    # Exact ties would all go to the lowest id: break them on queued tokens.
    return kit.argmin(serving, costs, kit.inflight_tokens(request, serving))
