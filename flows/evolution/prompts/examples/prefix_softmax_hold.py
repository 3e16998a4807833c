"""Prefer cached prefixes, sample among near-equal replicas, hold long prompts when all are full."""

from serving import kit
from serving.contract import HOLD, Param

PARAMS = {
    "PREFIX_WEIGHT": Param(0.0, 5.0),
    "TEMPERATURE": Param(0.0, 1.0),
    "LONG_PROMPT": Param(512, 32768, integer=True),
}
PREFIX_WEIGHT = 2.0
TEMPERATURE = 0.1
LONG_PROMPT = 8192


def route(request, replicas, now):
    serving = kit.serving_only(replicas)
    if not serving:
        return HOLD
    if request.prompt_tokens > LONG_PROMPT and not kit.any_unsaturated(serving, 5, 0.9):
        return HOLD  # offered again at the next event; shorter requests go on meanwhile
    costs = kit.weighted(
        (1.0, kit.minmax(kit.inflight(request, serving))),
        (1.0, kit.kv_use(request, serving)),
        (PREFIX_WEIGHT, kit.prefix_miss(request, serving)),
    )
    return kit.softmax(serving, costs, TEMPERATURE)
