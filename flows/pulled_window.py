"""A pulled workload window: telemetry rows -> the statistics the control plane decides on.

Also maps a window to sandbox scenarios. The pull flow saves the window's own
requests as a content-addressed window file (``sandbox.window_scenarios``: telemetry
Parquet plus the live fleet, named by its sha256), and the scenarios are that
window replayed (``window:<sha>:replay``) and its augmented variants (rate
scaled, a burst injected, GPUs lost: ``window_scenarios``), plus fixed guard
scenarios for known failure modes. When no window file can be had, the
fallback is the catalogue scenarios whose traffic is nearest to the window
(log mean prompt and output length, burstiness), plus the guards
(``scenarios_for``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from flows.drift import WindowSample
from flows.live import LiveSLO, live_metrics, slo_met

GUARD_SCENARIOS: tuple[str, ...] = ("prefix-heavy", "mixed-pool")
"""Hot-spotting on shared prefixes; load-blind routing over unequal GPUs."""


@dataclass
class Window:
    start_unix_s: float
    end_unix_s: float
    requests: int
    rate: float
    iat_cv: float
    prompt_mean: float
    prompt_p50: float
    prompt_p99: float
    output_mean: float
    output_p50: float
    output_p99: float
    prefix_reuse: float
    replicas: int
    slo_by_version: dict[str, float] = field(default_factory=dict)
    live: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """For MLflow, whose metric names refuse some characters a policy version holds
        (the router's fallback is ``baseline:NAME@SHA``): those become ``_``."""
        d = {k: float(v) for k, v in asdict(self).items() if isinstance(v, int | float)}
        d |= {f"slo.{_metric_name(k)}": v for k, v in self.slo_by_version.items()}
        d |= {f"live.{_metric_name(k)}": v for k, v in self.live.items()}
        return d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metric_name(version: str) -> str:
    # MLflow metric names allow only [A-Za-z0-9_ ./:-]; a router fallback's version is
    # "baseline:<name>@<sha>", and one bad name fails the whole pull flow's log call.
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", version)


def _prefix_reuse(frame: pd.DataFrame) -> float:
    seen: set[int] = set()
    reused = total = 0
    for hashes in frame["prefix_hashes"]:
        for h in hashes if hashes is not None else ():
            total += 1
            if h in seen:
                reused += 1
            else:
                seen.add(int(h))
    return reused / total if total else 0.0


def build_window(frame: pd.DataFrame, slo: LiveSLO | None = None) -> Window:
    slo = slo or LiveSLO()
    t = frame["arrival_unix_s"].to_numpy(dtype=float)
    n = len(frame)
    span = float(t[-1] - t[0]) if n > 1 else 0.0
    iats = np.diff(t)
    cv = float(iats.std() / iats.mean()) if len(iats) > 1 and iats.mean() > 0 else 0.0
    p = frame["prompt_tokens"].to_numpy(dtype=float)
    o = frame["output_tokens"].to_numpy(dtype=float)
    met = slo_met(frame, slo)
    by_version = {
        str(v): float(met[(frame["policy_version"] == v).to_numpy()].mean())
        for v in frame["policy_version"].unique()
    }

    def q(x: np.ndarray, a: float) -> float:
        return float(np.quantile(x, a)) if len(x) else 0.0

    return Window(
        start_unix_s=float(t[0]) if n else 0.0,
        end_unix_s=float(t[-1]) if n else 0.0,
        requests=n,
        rate=(n - 1) / span if span > 0 else 0.0,
        iat_cv=cv,
        prompt_mean=float(p.mean()) if n else 0.0,
        prompt_p50=q(p, 0.5),
        prompt_p99=q(p, 0.99),
        output_mean=float(o.mean()) if n else 0.0,
        output_p50=q(o, 0.5),
        output_p99=q(o, 0.99),
        prefix_reuse=_prefix_reuse(frame),
        replicas=int(frame["replica"].nunique()),
        slo_by_version=by_version,
        live=live_metrics(frame, slo),
    )


def sample_from(frame: pd.DataFrame, slo: LiveSLO | None = None) -> WindowSample:
    """The drift test's view of a window (finished requests' lengths and SLO outcomes)."""
    t = frame["arrival_unix_s"].to_numpy(dtype=float)
    span = float(t[-1] - t[0]) if len(t) > 1 else 0.0
    return WindowSample(
        span,
        frame["prompt_tokens"].to_numpy(dtype=np.int64),
        frame["output_tokens"].to_numpy(dtype=np.int64),
        slo_met(frame, slo or LiveSLO()),
    )


@lru_cache(maxsize=1)
def catalogue_features() -> dict[str, tuple[float, float, float]]:
    """(log mean prompt, log mean output, IAT CV) of each catalogue scenario (seed 0, small)."""
    from sandbox.scenarios import SCENARIO_NAMES, build_scenario

    out = {}
    for name in SCENARIO_NAMES:
        try:
            w = build_scenario(name, seed=0, scale=0.05).workload
        except Exception:  # a missing shared trace: that scenario cannot be matched
            continue
        iats = np.diff(w.arrival_s)
        cv = float(iats.std() / iats.mean()) if len(iats) > 1 and iats.mean() > 0 else 0.0
        out[name] = (
            math.log(float(w.prompt_tokens.mean()) + 1),
            math.log(float(w.output_tokens.mean()) + 1),
            cv,
        )
    return out


def default_fleet(window: Window, model: str = "llama-3-8b", gpu: str = "H100") -> str:
    """The fleet when the caller names none: one ``gpu`` replica per replica seen live."""
    return f"{model}@{max(1, window.replicas)}x{gpu}"


def window_scenarios(sha256: str, fleet: str) -> tuple[str, ...]:
    """The window replayed, its augmented variants, then the guards."""
    from sandbox.window_scenarios import window_names

    return tuple(dict.fromkeys([*window_names(sha256, fleet), *GUARD_SCENARIOS]))


def resolve_scenarios(
    scenarios: list[str] | tuple[str, ...], windows_dir: str | None,
    fallback: list[str] | tuple[str, ...],
) -> tuple[str, ...]:
    """``scenarios`` without the ``window:`` ones whose file is not in ``windows_dir``;
    when that drops every window scenario, ``fallback`` (the nearest catalogue ones)
    takes their place."""
    from sandbox.window_scenarios import exists, is_window_name

    wins = [s for s in scenarios if is_window_name(s)]
    kept_wins = [s for s in wins if exists(s, windows_dir)]
    rest = [s for s in scenarios if not is_window_name(s)]
    if wins and not kept_wins:
        return tuple(dict.fromkeys([*fallback, *rest]))
    return tuple(dict.fromkeys([*kept_wins, *rest]))


def scenarios_for(window: Window, nearest: int = 2) -> tuple[str, ...]:
    """The ``nearest`` catalogue scenarios to the window, then the guards (no duplicates)."""
    feats = catalogue_features()
    me = (math.log(window.prompt_mean + 1), math.log(window.output_mean + 1), window.iat_cv)

    def dist(name: str) -> float:
        f = feats[name]
        # Lengths dominate (they set the step times); burstiness counts half.
        return (f[0] - me[0]) ** 2 + (f[1] - me[1]) ** 2 + 0.25 * (f[2] - me[2]) ** 2

    picked = sorted(feats, key=dist)[:nearest]
    return tuple(dict.fromkeys([*picked, *GUARD_SCENARIOS]))
