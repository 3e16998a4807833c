"""Round robin: each request goes to the next serving replica in id order.

Mirrors vLLM production-stack's ``RoundRobinRouter`` (vllm_router/routers/
routing_logic.py): endpoints sorted by a stable key (the id here, the URL there), a
request counter modulo their number, so the cycle is stable when replicas come and
go. Load-blind; the floor every load-aware policy must beat.
"""

from serving import kit
from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {}  # no constants to tune

_counter = 0  # requests routed so far: the policy's only state


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    global _counter
    chosen = kit.rotate(replicas, _counter)  # HOLD when none is serving
    if chosen is not HOLD:
        _counter += 1
    return chosen
