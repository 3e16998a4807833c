"""A composition written out as a policy module a person (or an LLM) can read and edit.

``render(genes)`` is the only function: the module it returns imports only
``serving.kit`` and ``serving.contract``, carries its constants in ``PARAMS`` with
their search ranges, marks ``route`` and ``reschedule`` as EVOLVE-BLOCKs, and keeps
its choices on one comment line (``composition.parse`` reads them back, with the
constants from the module globals, where tuning may have moved them).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from typing import Any

from flows.evolution.composition import (
    CHOICES,
    FLOATS,
    GENES_TAG,
    INTS,
    SCORERS,
    active,
    normalised,
)

_SIGNALS = {
    "saturation": ["hot, cold = kit.saturation(cluster, UP_QUEUE, UP_KV, DOWN_QUEUE, DOWN_KV)"],
    "utilization": [
        "load = kit.utilization(cluster)",
        "hot, cold = load > UP_UTIL, load < DOWN_UTIL",
    ],
    "slo_risk": [
        "risk = kit.slo_risk(cluster, RISK_TTFT_S)",
        "hot, cold = risk > UP_RISK, risk < DOWN_RISK",
    ],
}


def render(genes: Mapping[str, Any]) -> str:
    """The policy module of a composition."""
    g = normalised(genes)
    threshold = g["reschedule"] == "threshold"
    lines = [
        '"""' + textwrap.fill(_summary(g), 88, subsequent_indent=""),
        "",
        "Composed from the policy kit by structural search (flows/evolution/composition.py).",
        '"""',
        "",
        GENES_TAG + json.dumps({k: v for k, v in g.items() if k in CHOICES}, sort_keys=True),
        "",
        "from serving import kit",
        "from serving.contract import HOLD, ClusterView, Param, Plan, ReplicaView, Request",
        "",
        *_constants(g),
    ]
    if threshold:
        lines.append("STATE = kit.TriggerState()  # hot/cold streaks and the last change")
    lines += ["", "", *_route(g)]
    if g["reschedule"] != "none":
        lines += ["", "", *_reschedule(g)]
    return "\n".join(lines) + "\n"


def _summary(g: Mapping[str, Any]) -> str:
    terms = [s.name for s in SCORERS if g[f"use_{s.name}"]]
    route = f"route by {' + '.join(terms)} ({g['picker']})"
    if g["prefix_gate"]:
        route += ", prefix hits first"
    if g["session"]:
        route += ", sessions home"
    plan = {"none": "static plan", "repair": "pool repair",
            "threshold": f"threshold scaling on {g.get('signal')}"}[g["reschedule"]]  # fmt: skip
    if g.get("fill"):
        plan += " filling free GPUs"
    return f"A kit composition: {route}; {plan}."


def _constants(g: Mapping[str, Any]) -> list[str]:
    names = active(g)
    if not names:
        return ["PARAMS: dict[str, Param] = {}"]
    lines = ["PARAMS: dict[str, Param] = {"]
    for n in names:
        if n in INTS:
            lo, hi = INTS[n]
            lines.append(f'    "{n}": Param({lo}, {hi}, integer=True),')
        else:
            lo, hi, log = FLOATS[n]
            lines.append(f'    "{n}": Param({lo!r}, {hi!r}{", log=True" if log else ""}),')
    lines += ["}", "# EVOLVE-BLOCK-START"]
    lines += [f"{n} = {g[n]!r}" if n in INTS else f"{n} = {float(g[n])!r}" for n in names]
    return [*lines, "# EVOLVE-BLOCK-END"]


def _route(g: Mapping[str, Any]) -> list[str]:
    body = [
        "serving = kit.serving_only(replicas)",
        "if not serving:",
        "    return HOLD",
    ]
    if g["admission"] == "ttft":
        body += ["if not kit.ttft_within(request, serving, ADMIT_TTFT_S):", "    return HOLD"]
    elif g["admission"] == "inflight":
        body += ["if not kit.any_inflight_below(serving, ADMIT_INFLIGHT):", "    return HOLD"]
    if g["filter"] == "sheddable":
        body += [
            "fit = kit.kv_at_most(kit.waiting_at_most(serving, FILTER_MAX_WAITING), FILTER_MAX_KV)",
            "candidates = fit or serving  # fail open",
        ]
    else:
        body.append("candidates = serving")
    if g["session"]:
        body += [
            "home = kit.session_home(request, candidates, SESSION_LOAD_FACTOR)",
            "if home is not None:",
            "    return home",
        ]
    if g["prefix_gate"]:
        body += [
            "if not kit.imbalanced(candidates, BALANCE_ABS_GAP, BALANCE_REL_GAP):",
            "    candidates = kit.best_prefix(request, candidates, PREFIX_MIN_RATIO) or candidates",
        ]
    body += ["costs = kit.weighted("]
    for s in SCORERS:
        if g[f"use_{s.name}"]:
            term = f"kit.{s.name}(request, candidates)"
            body.append(f"    (W_{s.name.upper()}, {f'kit.{s.norm}({term})' if s.norm else term}),")
    body.append(")")
    ties = "kit.inflight(request, candidates), kit.inflight_tokens(request, candidates)"
    body += {
        "argmin": ["return kit.argmin(", f"    candidates, costs, {ties}", ")"],
        "argmin_random": ["return kit.argmin_random(candidates, costs)"],
        "softmax": ["return kit.softmax(candidates, costs, TEMPERATURE)"],
    }[g["picker"]]
    return [
        "def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:",
        "    # EVOLVE-BLOCK-START",
        *(f"    {line}" for line in body),
        "    # EVOLVE-BLOCK-END",
    ]


def _reschedule(g: Mapping[str, Any]) -> list[str]:
    body = [
        "specs = list(cluster.plan.replicas)",
        "new = kit.fit_to_pool(specs, cluster.gpus_available)  # GPUs that left take theirs",
    ]
    if g["reschedule"] == "repair":
        if g.get("fill"):
            body.append("new = kit.fill_pool(cluster, new)")
        body += ["if new == specs:", "    return None"]
    else:
        body += [
            "if len(new) == len(specs):",
            *(f"    {line}" for line in _SIGNALS[g["signal"]]),
            "    move = kit.trigger(STATE, hot or len(specs) < MIN_REPLICAS, cold, now, UP_TICKS,",
            "                       DOWN_TICKS, COOLDOWN_S, hold_up=kit.starting(cluster))",
            "    new = kit.scale(cluster, specs, move, MIN_REPLICAS)",
            "    if new is None:",
            "        return None",
            "kit.acted(STATE, now)",
        ]
    weights = ", kit.capacity_weights(cluster, new)" if g.get("weights") else ""
    body.append(f"return kit.replan(cluster, new{weights})")
    return [
        "def reschedule(cluster: ClusterView, now: float) -> Plan | None:",
        "    # EVOLVE-BLOCK-START",
        *(f"    {line}" for line in body),
        "    # EVOLVE-BLOCK-END",
    ]
