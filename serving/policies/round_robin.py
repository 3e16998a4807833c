"""Round robin: each request goes to the next serving replica in id order.

Mirrors vLLM production-stack's ``RoundRobinRouter`` (vllm_router/routers/
routing_logic.py): endpoints sorted by a stable key, a request counter modulo
their number. Load-blind; the floor every load-aware policy must beat.
"""

from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {}  # no constants to tune

_counter = 0  # requests routed so far: the policy's only state


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    global _counter
    # Sorted by id (production-stack sorts by URL) so the cycle is stable when the
    # snapshot's order changes or replicas come and go.
    serving = sorted(r.id for r in replicas if r.state == "serving")
    if not serving:
        return HOLD
    chosen = serving[_counter % len(serving)]
    _counter += 1
    return chosen
