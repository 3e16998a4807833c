"""Power of two choices: sample two serving replicas, send to the one with less in flight.

Mirrors Envoy's LEAST_REQUEST (``choice_count`` = 2 random hosts, fewest active
requests wins), NGINX ``random two least_conn`` and SGLang's ``power_of_two``
policy. Random sampling spreads bursts that a global argmin would herd; the
router-local in-flight count keeps it load-aware.
"""

import random

from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {
    # Envoy's choice_count: how many distinct replicas are sampled per request.
    "CHOICE_COUNT": Param(2, 8, integer=True),
}
CHOICE_COUNT = 2


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    serving = [r for r in replicas if r.state == "serving"]
    if not serving:
        return HOLD
    sampled = random.sample(serving, min(CHOICE_COUNT, len(serving)))
    # min() keeps the first of equals, i.e. a random one among ties, since the
    # sample order is random.
    return min(sampled, key=lambda r: (r.inflight_requests, r.inflight_tokens)).id
