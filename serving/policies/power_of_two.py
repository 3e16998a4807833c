"""Power of two choices: sample two serving replicas, send to the one with less in flight.

Mirrors Envoy's LEAST_REQUEST (``choice_count`` = 2 random hosts, fewest active
requests wins), NGINX ``random two least_conn`` and SGLang's ``power_of_two``
policy. Random sampling spreads bursts that a global argmin would herd; the
router-local in-flight count keeps it load-aware. Ties go to in-flight tokens,
then to the first sampled (a random one).
"""

from serving import kit
from serving.contract import Param, ReplicaView, Request

PARAMS: dict[str, Param] = {
    # Envoy's choice_count: how many distinct replicas are sampled per request.
    "CHOICE_COUNT": Param(2, 8, integer=True),
}
CHOICE_COUNT = 2


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    # HOLD when none is serving
    return kit.power_of_k(request, replicas, CHOICE_COUNT, kit.inflight, kit.inflight_tokens)
