"""The named scenario suite: real traces on small clusters, each sized to sit near saturation.

``build_scenario(name, seed, scale=, split=)`` returns a ``Scenario`` replayed by the simulator;
``SCENARIO_NAMES`` lists them. Every scenario is built from the public traces in
``shared/traces`` (see its README), never from synthetic Poisson traffic alone:

- load is changed by compressing inter-arrival gaps (``transforms.scale_rate``), so each
  trace keeps its burst structure;
- the load is set in requests/s *per fleet unit* (one replica, or one H100 + A100 pair)
  and calibrated, per split, so the better routing baselines (least_outstanding,
  llmd_weighted) meet the SLO for roughly 60-95 % of requests on average over seeds and
  the load-blind ones (round_robin, random_choice) visibly less, wherever routing can
  matter (the tables are in the README); that is the regime where policies differ;
- the seed picks *which* stretch of the trace is replayed (and seeds every random
  step); the rate is normalised per stretch on the capacity estimate, so every seed
  sits at the same *estimated* load. The estimate misses part of what sets the SLO knee
  (the output-length mix, drift inside a stretch), so near saturation seeds still spread
  widely: compare policies over several seeds, paired.
  Same ``(name, seed, scale, split)`` → identical scenario.

``scale`` (0 < scale <= 1) makes smaller runs for tests and demos: it shrinks the fleet to
``round(units * scale)`` units, never below the scenario's minimum (at least two replicas
so routing still matters, three where two crash in turn), and drops the request groups
the removed units would have served (``stretches.thin``: whole sessions or prefix groups,
so the per-replica load, the time structure and every prefix hit among the kept requests
stay). It never shortens a run: near saturation a queue takes the whole run to build,
and a half-length run measured a different problem (steady-conv least_outstanding 0.955
-> 1.000, llama70b-tp 0.849 -> 0.942, length-shift +0.10). Only prefix-heavy has units
to spare (4 -> 2 at 0.5), and even that is not the same regime on every stretch: two
replicas pool 15k-66k-token prompts worse than four (least_outstanding on test stretches
0.716 -> 0.301, 0.837 -> 0.385). So the suites evolution scores on run at full size
(``flows.evolution.config.QUICK_SCALE`` = 1); every other scenario is the same at any
scale.

``split`` (``train`` or ``test``) picks the part of each trace the seed draws its stretch
from (``sandbox.splits``); each split's load is calibrated on its own (``Load``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from sandbox.scenario_builders import (
    Built,
    Size,
    bursty_code,
    decode_heavy,
    gpu_loss,
    length_shift,
    llama70b_tp,
    mixed_pool,
    prefix_heavy,
    replica_failure,
    rng_stream,
    slow_ramp,
    steady_conv,
)
from sandbox.scenario_spec import Scenario
from sandbox.splits import check_split
from sandbox.stretches import at_utilization, fleet_capacity, ramp, thin, trace, trace_segment
from sandbox.window_scenarios import build_window_scenario, is_window_name

# Re-exported: the catalogue's building blocks used to live here.
__all__ = [
    "SCENARIO_DESCRIPTIONS",
    "SCENARIO_NAMES",
    "SCENARIO_REQUESTS",
    "Size",
    "at_utilization",
    "build_scenario",
    "fleet_capacity",
    "ramp",
    "scenario_size",
    "thin",
    "trace",
    "trace_segment",
]


@dataclass(frozen=True)
class _Entry:
    description: str
    base_units: int
    min_units: int
    duration_s: float
    build: Callable[[int, Size], Built]
    requests: int
    """The documented minimum request count at scale 1 (checked by the tests)."""


_SCENARIOS: dict[str, _Entry] = {
    "steady-conv": _Entry(
        "Azure conversation trace on 2 x H100 (llama-3-8b), rate-scaled to the cluster's knee.",
        2, 2, 100.0, steady_conv, 3000,
    ),
    "bursty-code": _Entry(
        "Azure code trace on 2 x H100, gaps compressed so its 0-600 req/min bursts overload it.",
        2, 2, 150.0, bursty_code, 800,
    ),
    "length-shift": _Entry(
        "Azure conversation traffic switching to code traffic mid-run on 2 x H100.",
        2, 2, 180.0, length_shift, 3500,
    ),
    "gpu-loss": _Entry(
        "llama-3-70b 2 x TP4 on H100; half the GPUs leave at 30 % and return at 55 % of the run.",
        2, 2, 300.0, gpu_loss, 2500,
    ),
    "replica-failure": _Entry(
        "3 x H100 under conversation load; two replicas crash in turn and cold-start again.",
        3, 3, 80.0, replica_failure, 3000,
    ),
    "mixed-pool": _Entry(
        "1 x H100 + 1 x A100 replica in one plan on conversation traffic (heterogeneous speed).",
        1, 1, 150.0, mixed_pool, 3000,
    ),
    "prefix-heavy": _Entry(
        "Mooncake trace (15k-token prompts, prefix hashes) on 4 x H100; prefix reuse matters.",
        4, 2, 130.0, prefix_heavy, 600,
    ),
    "slow-ramp": _Entry(
        "Conversation load ramping from 0.4x to 1.6x of 2 x H100's capacity; 2 spare H100s.",
        2, 2, 130.0, slow_ramp, 3500,
    ),
    "llama70b-tp": _Entry(
        "llama-3-70b on one TP8 + one TP4 H100 replica under conversation load.",
        1, 1, 160.0, llama70b_tp, 3000,
    ),
    "decode-heavy": _Entry(
        "BWB translation lengths (1.6k-token outputs) on conversation arrivals, 2 x H100.",
        2, 2, 300.0, decode_heavy, 2200,
    ),
}

SCENARIO_NAMES: tuple[str, ...] = tuple(_SCENARIOS)
"""The suite, in a stable order."""

SCENARIO_REQUESTS: dict[str, int] = {n: e.requests for n, e in _SCENARIOS.items()}
"""At least this many requests at scale 1, for every seed and split."""

SCENARIO_DESCRIPTIONS: dict[str, str] = {n: e.description for n, e in _SCENARIOS.items()}
"""One line per scenario: what it replays on which cluster (the LLM's prompt shows it)."""


def scenario_size(name: str, scale: float = 1.0, split: str = "train") -> Size:
    """Fleet units and run length of ``name`` at ``scale`` (see the module docstring)."""
    entry = _entry(name)
    if not (isinstance(scale, int | float) and 0 < scale <= 1):
        raise ValueError(f"scale must be in (0, 1], got {scale!r}")
    units = max(entry.min_units, min(entry.base_units, round(entry.base_units * scale)))
    return Size(units, entry.base_units, entry.duration_s, check_split(split))


def _entry(name: str) -> _Entry:
    try:
        return _SCENARIOS[name]
    except KeyError:
        raise ValueError(
            f"unknown scenario {name!r}; known: {', '.join(SCENARIO_NAMES)}"
        ) from None


def build_scenario(
    name: str,
    seed: int = 0,
    *,
    scale: float = 1.0,
    split: str = "train",
    windows_dir: str | None = None,
) -> Scenario:
    """The scenario ``name`` for ``seed`` at ``scale`` (0 < scale <= 1; 1 = full size).

    ``split`` (``train`` or ``test``) picks the region of each trace the seed draws its
    stretch from (``sandbox.splits``): train and test stretches never overlap.

    A ``window:<sha256 prefix>:<variant>`` name is a pulled live window replayed from
    its content-addressed file in ``windows_dir`` (default ``$AUTOPOIESIS_WINDOWS``):
    see ``sandbox.window_scenarios``. A window file is already one side of the pull flow's split,
    so ``split`` does not apply to it.

    Raises ValueError for an unknown name (listing the known ones), a bad scale or split,
    and WorkloadError when the shared traces (or the window file) are missing;
    ``sandbox.window_scenarios.WindowIntegrityError`` when a window file does not match its hash.
    """
    check_split(split)
    if is_window_name(name):
        return build_window_scenario(name, seed, scale=scale, directory=windows_dir)
    entry = _entry(name)
    size = scenario_size(name, scale, split)
    workload, cluster, events, slo = entry.build(seed, size)
    workload = thin(workload, size.keep, rng_stream(seed, name, "thin"))
    workload = replace(
        workload,
        name=name,
        meta={**workload.meta, "scenario": name, "seed": seed, "scale": scale, "split": split},
    )
    return Scenario(
        name=name,
        description=entry.description,
        workload=workload,
        cluster=cluster,
        events=events,
        slo=slo,
    )
