"""The policy kit: the pieces a policy is composed from, and the vocabulary of evolution.

A candidate policy imports it as ``from serving import kit`` (with
``serving.contract``, the only project module the static checks let candidates
import) and composes: filters -> scorers -> normalisation -> a picker, admission
rules that say when to HOLD, and for ``reschedule`` a trigger and a planner. Every
piece is a plain function over read-only views, or a frozen value, documented in
one line that the LLM prompt quotes (``flows.evolution.prompts.kit_reference``);
the one mutable object, ``TriggerState``, belongs to the policy that creates it.
The baselines in ``serving/policies/`` are compositions of these pieces.

This module holds names only: no module objects, nothing of the router's or the
simulator's own state (the hostile cases ``kit_globals_escape`` and ``kit_tamper`` try
to escape through it).
"""

from serving.kit_planning import (
    TriggerState,
    acted,
    capacity,
    capacity_weights,
    demand_rps,
    fill_pool,
    fit_to_pool,
    free_gpus,
    grow,
    mean_kv,
    next_spec,
    pays_back,
    plan_for_demand,
    pool_changed,
    queue_growth,
    queue_per_replica,
    ranked_specs,
    reload_s,
    replan,
    saturation,
    scale,
    slo_risk,
    starting,
    trigger,
    utilization,
)
from serving.kit_routing import (
    any_inflight_below,
    any_unsaturated,
    argmin,
    argmin_random,
    best_prefix,
    by_max,
    est_ttft,
    gpu_slowness,
    imbalanced,
    inflight,
    inflight_at_most,
    inflight_per_speed,
    inflight_per_weight,
    inflight_tokens,
    kv_at_most,
    kv_use,
    least_inflight,
    minmax,
    near_best,
    on_gpus,
    power_of_k,
    prefix_miss,
    rotate,
    running,
    sample,
    serving_only,
    session_home,
    session_miss,
    softmax,
    ttft_within,
    uniform,
    waiting,
    waiting_at_most,
    weighted,
)

SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("filters (replicas -> list)", (
        "serving_only", "kv_at_most", "waiting_at_most", "inflight_at_most", "on_gpus",
        "near_best", "best_prefix", "sample")),
    ("scorers ((request, replicas) -> one cost per replica, lower is better)", (
        "waiting", "running", "inflight", "inflight_tokens", "inflight_per_weight",
        "inflight_per_speed", "kv_use", "prefix_miss", "session_miss", "gpu_slowness", "est_ttft")),
    ("normalise and combine cost lists", ("minmax", "by_max", "weighted")),
    ("pickers (-> id of a serving replica; HOLD when none serves)", (
        "least_inflight", "argmin", "argmin_random", "softmax", "power_of_k", "uniform",
        "rotate", "session_home")),
    ("checks and admission (-> bool; False: return HOLD)", (
        "imbalanced", "any_unsaturated", "any_inflight_below", "ttft_within")),
    ("reschedule signals", (
        "queue_per_replica", "mean_kv", "saturation", "starting", "demand_rps", "capacity",
        "utilization", "slo_risk", "queue_growth", "pool_changed")),
    ("reschedule trigger (state kept in a TriggerState the policy creates once)", (
        "TriggerState", "trigger", "acted")),
    ("reschedule planner", (
        "fit_to_pool", "fill_pool", "free_gpus", "ranked_specs", "next_spec", "scale", "grow",
        "plan_for_demand", "capacity_weights", "reload_s", "pays_back", "replan")),
)  # fmt: skip
"""The pieces by kind, in the order the prompt lists them (``__all__``: the same names)."""

__all__ = [
    "TriggerState",
    "acted",
    "any_inflight_below",
    "any_unsaturated",
    "argmin",
    "argmin_random",
    "best_prefix",
    "by_max",
    "capacity",
    "capacity_weights",
    "demand_rps",
    "est_ttft",
    "fill_pool",
    "fit_to_pool",
    "free_gpus",
    "gpu_slowness",
    "grow",
    "imbalanced",
    "inflight",
    "inflight_at_most",
    "inflight_per_speed",
    "inflight_per_weight",
    "inflight_tokens",
    "kv_at_most",
    "kv_use",
    "least_inflight",
    "mean_kv",
    "minmax",
    "near_best",
    "next_spec",
    "on_gpus",
    "pays_back",
    "plan_for_demand",
    "pool_changed",
    "power_of_k",
    "prefix_miss",
    "queue_growth",
    "queue_per_replica",
    "ranked_specs",
    "reload_s",
    "replan",
    "rotate",
    "running",
    "sample",
    "saturation",
    "scale",
    "serving_only",
    "session_home",
    "session_miss",
    "slo_risk",
    "softmax",
    "starting",
    "trigger",
    "ttft_within",
    "uniform",
    "utilization",
    "waiting",
    "waiting_at_most",
    "weighted",
]
