"""Scale on queue, KV or TTFT risk with hysteresis; weight mixed replicas by capacity."""

from serving import kit
from serving.contract import HOLD, Param

PARAMS = {"TTFT_TARGET_S": Param(0.1, 5.0), "UP_TICKS": Param(1, 10, integer=True)}
TTFT_TARGET_S = 1.0
UP_TICKS = 2
STATE = kit.TriggerState()  # streaks and cooldown across ticks


def route(request, replicas, now):
    serving = kit.serving_only(replicas)
    if not serving:
        return HOLD
    load = kit.inflight_per_weight(request, serving)
    return kit.argmin(serving, load, kit.inflight_tokens(request, serving))


def reschedule(cluster, now):
    specs = kit.fit_to_pool(cluster.plan.replicas, cluster.gpus_available)
    hot, cold = kit.saturation(cluster, 5.0, 0.8, 0.5, 0.3)
    hot = hot or kit.slo_risk(cluster, TTFT_TARGET_S) > 1.0
    move = kit.trigger(STATE, hot, cold, now, UP_TICKS, 24, 30.0, hold_up=kit.starting(cluster))
    new = kit.scale(cluster, specs, move, min_replicas=1) or specs
    if new == list(cluster.plan.replicas):
        return None
    kit.acted(STATE, now)
    return kit.replan(cluster, new, kit.capacity_weights(cluster, new))
