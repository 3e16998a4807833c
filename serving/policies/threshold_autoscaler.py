"""Threshold autoscaler with hysteresis: add a replica under sustained pressure, remove
one under sustained slack, never outside the GPU pool.

Mirrors the llm-d workload-variant-autoscaler's saturation analyzer (saturated at KV
>= 0.80 or >= 5 waiting) and the Kubernetes HPA's stabilisation: UP_TICKS hot ticks in
a row to scale up, DOWN_TICKS cold ones to scale down (newest first), COOLDOWN_S after
a change, no scale-up while replicas start; GPUs that leave take their replicas at
once. Routing is least outstanding requests.
"""

from serving import kit
from serving.contract import ClusterView, Param, Plan, ReplicaView, Request

PARAMS: dict[str, Param] = {
    "UP_QUEUE_PER_REPLICA": Param(0.5, 64.0),
    "UP_KV": Param(0.3, 1.0),
    "DOWN_QUEUE_PER_REPLICA": Param(0.0, 16.0),
    "DOWN_KV": Param(0.0, 0.9),
    "UP_TICKS": Param(1, 20, integer=True),
    "DOWN_TICKS": Param(1, 120, integer=True),
    "COOLDOWN_S": Param(0.0, 600.0),
    "MIN_REPLICAS": Param(1, 16, integer=True),
}
# One global per line: the tuner and the repairer read PARAMS' values from plain
# `NAME = value` assignments.
UP_QUEUE_PER_REPLICA = 5.0
UP_KV = 0.8
DOWN_QUEUE_PER_REPLICA = 0.5
DOWN_KV = 0.4
UP_TICKS = 2
DOWN_TICKS = 12
COOLDOWN_S = 30.0
MIN_REPLICAS = 1
STATE = kit.TriggerState()  # hot/cold streaks and the last change, across ticks


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    return kit.least_inflight(request, replicas)  # HOLD when none is serving


def reschedule(cluster: ClusterView, now: float) -> Plan | None:
    specs = list(cluster.plan.replicas)
    new = kit.fit_to_pool(specs, cluster.gpus_available)  # repairs ignore the cooldown
    if len(new) == len(specs):
        hot, cold = kit.saturation(cluster, UP_QUEUE_PER_REPLICA, UP_KV,
                                   DOWN_QUEUE_PER_REPLICA, DOWN_KV)  # fmt: skip
        move = kit.trigger(STATE, hot or len(specs) < MIN_REPLICAS, cold, now, UP_TICKS,
                           DOWN_TICKS, COOLDOWN_S, hold_up=kit.starting(cluster))  # fmt: skip
        new = kit.scale(cluster, specs, move, MIN_REPLICAS)
        if new is None:
            return None
    kit.acted(STATE, now)
    return kit.replan(cluster, new)
