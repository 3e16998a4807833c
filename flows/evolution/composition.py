"""Policies as compositions of kit pieces: the genome structural search works on.

A ``Composition`` says which pieces of ``serving.kit`` a policy uses and with what
constants: a filter, a prefix gate, session affinity, a weighted set of scorers, a
picker and an admission rule for ``route``; a reschedule mode (none, pool repair, or
a threshold trigger on one of three signals), whether free GPUs are filled, and
capacity weights for ``reschedule``. ``render`` writes it as an ordinary policy
module: readable, its constants in ``PARAMS`` (so Optuna can tune it again like any
candidate), ``route`` and ``reschedule`` inside EVOLVE-BLOCKs (so an LLM can edit it),
and the composition itself on one comment line, which ``parse`` reads back for
mutation and crossover. Nothing here evaluates anything.

The genes are a flat ``{name: value}`` map, the shape Optuna's trials have:
``suggest(trial)`` samples one (a conditional space: a scorer's weight exists only
when the scorer is on), ``mutate`` and ``crossover`` make children of archived ones.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

GENES_TAG = "# kit-composition: "
_GENES_LINE = re.compile(r"^# kit-composition: (\{.*\})\s*$", re.M)


@dataclass(frozen=True)
class Scorer:
    """A kit scorer as a weighted term: how its costs are normalised before weighting."""

    name: str
    norm: str  # "" (raw), "by_max" or "minmax"
    why: str


SCORERS: tuple[Scorer, ...] = (
    Scorer("inflight_per_speed", "", "in-flight requests per unit of GPU speed"),
    Scorer("inflight", "", "in-flight requests"),
    Scorer("inflight_per_weight", "", "in-flight requests per plan weight"),
    Scorer("inflight_tokens", "by_max", "in-flight tokens"),
    Scorer("waiting", "minmax", "engine queue"),
    Scorer("kv_use", "", "KV-cache use"),
    Scorer("prefix_miss", "", "uncached prompt share"),
    Scorer("est_ttft", "", "estimated time to first token"),
    Scorer("session_miss", "", "distance from the session's home"),
)

FloatRange = tuple[float, float, bool]  # low, high, log scale
IntRange = tuple[int, int]

FLOATS: dict[str, FloatRange] = {
    "FILTER_MAX_KV": (0.3, 1.0, False),
    "PREFIX_MIN_RATIO": (0.0, 0.9, False),
    "BALANCE_REL_GAP": (1.0, 4.0, False),
    "SESSION_LOAD_FACTOR": (1.0, 4.0, False),
    "TEMPERATURE": (0.01, 10.0, True),
    "ADMIT_TTFT_S": (0.1, 10.0, True),
    "UP_QUEUE": (0.5, 32.0, True),
    "UP_KV": (0.3, 1.0, False),
    "DOWN_QUEUE": (0.0, 8.0, False),
    "DOWN_KV": (0.0, 0.9, False),
    "UP_UTIL": (0.4, 1.5, False),
    "DOWN_UTIL": (0.05, 0.9, False),
    "UP_RISK": (0.3, 3.0, True),
    "DOWN_RISK": (0.05, 0.9, False),
    "RISK_TTFT_S": (0.2, 5.0, True),
    "COOLDOWN_S": (0.0, 300.0, False),
    **{f"W_{s.name.upper()}": (0.01, 10.0, True) for s in SCORERS},
}
INTS: dict[str, IntRange] = {
    "FILTER_MAX_WAITING": (0, 64),
    "BALANCE_ABS_GAP": (0, 64),
    "ADMIT_INFLIGHT": (1, 256),
    "UP_TICKS": (1, 10),
    "DOWN_TICKS": (1, 60),
    "MIN_REPLICAS": (1, 8),
}
CHOICES: dict[str, tuple[Any, ...]] = {
    "filter": ("none", "sheddable"),
    "prefix_gate": (False, True),
    "session": (False, True),
    "picker": ("argmin", "argmin_random", "softmax"),
    "admission": ("none", "ttft", "inflight"),
    "reschedule": ("none", "repair", "threshold"),
    "signal": ("saturation", "utilization", "slo_risk"),
    "fill": (False, True),
    "weights": (False, True),
    **{f"use_{s.name}": (False, True) for s in SCORERS},
}
SIGNAL_PARAMS = {
    "saturation": ("UP_QUEUE", "UP_KV", "DOWN_QUEUE", "DOWN_KV"),
    "utilization": ("UP_UTIL", "DOWN_UTIL"),
    "slo_risk": ("UP_RISK", "DOWN_RISK", "RISK_TTFT_S"),
}


class Trial(Protocol):
    """The part of ``optuna.Trial`` that ``suggest`` uses."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False
                      ) -> float: ...  # fmt: skip

    def suggest_int(self, name: str, low: int, high: int) -> int: ...


Genes = dict[str, Any]


def active(choice: Mapping[str, Any]) -> list[str]:
    """The constants a composition's choices switch on, in the order they are rendered."""
    names: list[str] = []
    if choice.get("filter") == "sheddable":
        names += ["FILTER_MAX_WAITING", "FILTER_MAX_KV"]
    if choice.get("prefix_gate"):
        names += ["PREFIX_MIN_RATIO", "BALANCE_ABS_GAP", "BALANCE_REL_GAP"]
    if choice.get("session"):
        names.append("SESSION_LOAD_FACTOR")
    names += [f"W_{s.name.upper()}" for s in SCORERS if choice.get(f"use_{s.name}")]
    if choice.get("picker") == "softmax":
        names.append("TEMPERATURE")
    names += {"ttft": ["ADMIT_TTFT_S"], "inflight": ["ADMIT_INFLIGHT"]}.get(
        choice.get("admission", "none"), []
    )
    if choice.get("reschedule") == "threshold":
        names += [*SIGNAL_PARAMS[choice["signal"]], "UP_TICKS", "DOWN_TICKS", "COOLDOWN_S",
                  "MIN_REPLICAS"]  # fmt: skip
    return names


def _choices_in_use(genes: Mapping[str, Any]) -> list[str]:
    names = ["filter", "prefix_gate", "session", *(f"use_{s.name}" for s in SCORERS),
             "picker", "admission", "reschedule"]  # fmt: skip
    if genes.get("reschedule") == "threshold":
        names.append("signal")
    if genes.get("reschedule") == "repair":
        names.append("fill")
    if genes.get("reschedule") in ("repair", "threshold"):
        names.append("weights")
    return names


def suggest(trial: Trial) -> Genes:
    """One composition from an Optuna trial (define-by-run: conditional genes)."""
    genes: Genes = {}
    for name in _choices_in_use(genes):  # the top-level choices first
        genes[name] = trial.suggest_categorical(name, CHOICES[name])
    for name in _choices_in_use(genes):  # then those the reschedule mode opens
        if name not in genes:
            genes[name] = trial.suggest_categorical(name, CHOICES[name])
    for name in active(genes):
        if name in INTS:
            genes[name] = trial.suggest_int(name, *INTS[name])
        else:
            lo, hi, log = FLOATS[name]
            genes[name] = trial.suggest_float(name, lo, hi, log=log)
    return normalised(genes)


def normalised(genes: Mapping[str, Any]) -> Genes:
    """Only the genes in use, each inside its range; missing constants at their midpoint."""
    out: Genes = {}
    # An invalid reschedule mode opens no more choices than "none", its replacement.
    for name in _choices_in_use(genes):
        out[name] = _choice(genes, name)
    if not any(out[f"use_{s.name}"] for s in SCORERS):
        out["use_inflight"] = True  # a picker needs a cost: least outstanding by default
    for name in active(out):
        out[name] = _clip(name, genes.get(name))
    return out


def _choice(genes: Mapping[str, Any], name: str) -> Any:
    value = genes.get(name, CHOICES[name][0])
    return value if value in CHOICES[name] else CHOICES[name][0]


def _clip(name: str, value: Any) -> float | int:
    if name in INTS:
        lo, hi = INTS[name]
        return int(min(max(round(value if value is not None else (lo + hi) / 2), lo), hi))
    lo, hi, _ = FLOATS[name]
    v = float(value) if value is not None else (lo * hi) ** 0.5 if lo > 0 else (lo + hi) / 2
    return min(max(v, lo), hi)


def mutate(genes: Mapping[str, Any], rng: random.Random, n: int = 1) -> Genes:
    """``n`` genes changed: a choice flipped to another option, or a constant moved
    (log-normal steps on log ranges, a tenth of the range otherwise)."""
    out = normalised(genes)
    for _ in range(n):
        name = rng.choice(list(out))
        if name in CHOICES:
            out[name] = rng.choice([c for c in CHOICES[name] if c != out[name]])
        elif name in INTS:
            lo, hi = INTS[name]
            out[name] = out[name] + rng.choice((-1, 1)) * max(1, round((hi - lo) * 0.1))
        else:
            lo, hi, log = FLOATS[name]
            out[name] = out[name] * 2 ** rng.gauss(0, 1) if log else out[name] + rng.gauss(
                0, (hi - lo) * 0.1)  # fmt: skip
        out = normalised(out)
    return out


def crossover(route_from: Mapping[str, Any], reschedule_from: Mapping[str, Any]) -> Genes:
    """``route`` of one composition with ``reschedule`` of another (graft a trigger)."""
    signals = (p for ps in SIGNAL_PARAMS.values() for p in ps)
    planning = {"reschedule", "signal", "fill", "weights", "UP_TICKS", "DOWN_TICKS",
                "COOLDOWN_S", "MIN_REPLICAS", *signals}  # fmt: skip
    genes = {k: v for k, v in route_from.items() if k not in planning}
    genes.update({k: v for k, v in reschedule_from.items() if k in planning})
    return normalised(genes)


def parse(source: str) -> Genes | None:
    """The composition a rendered module carries, or None (not a composition)."""
    m = _GENES_LINE.search(source)
    if m is None:
        return None
    try:
        genes = json.loads(m.group(1))
    except ValueError:
        return None
    if not isinstance(genes, dict):
        return None
    # Tuning bakes new constants into the module globals, not into the comment line.
    from flows.evolution.tuning import read_params

    genes.update({name: value for name, (_, value) in read_params(source).items()})
    return normalised(genes)


def key(genes: Mapping[str, Any]) -> str:
    """A stable text of a composition (equal compositions, equal keys)."""
    return json.dumps(normalised(genes), sort_keys=True)
