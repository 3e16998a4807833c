"""The objective: what "better" means for a policy, computed in this one place.

Three objectives, all higher-is-better; a user picks one (``--objective``):

``slo``       SLO attainment: the fraction of all requests, finished or not, whose TTFT and
              TPOT meet the scenario's targets; ties broken by mean end-to-end latency
              (``attainment - 1e-6 * min(e2e_mean_s, 100)``: below one request's worth of
              attainment for up to 10,000 requests). Saturates near 1 on easy traffic.
``capacity``  SLO capacity (goodput at SLO, as DistServe and Splitwise measure serving
              systems): the highest multiple of the scenario's calibrated arrival rate at
              which attainment stays >= ``target`` (``sandbox.slo_capacity``), read where
              attainment crosses the target between the bisection's last passing and
              first failing probes (``Capacity.crossing``), so that it is continuous. 1.0
              is the scenario's own load; it keeps the headroom attainment loses at the top.
``cost``      attainment within a GPU budget: ``attainment x min(1, gpu_budget /
              gpu_share)``, where ``gpu_share`` is the GPU time a policy held over the GPU
              time of the scenario's starting plan for the same run (1.0 for a static
              plan). Chosen over "attainment per GPU-hour", which a policy wins by starving
              the fleet (half the GPUs at 0.6 attainment beats all of them at 0.9); here
              a policy gains nothing by going below the budget and loses in proportion
              above it, so a rescheduling policy that frees GPUs at the same SLO wins, and
              one that buys attainment with extra GPUs must buy more than it pays. The
              default budget (0.75) is the starting plan's GPU time less a quarter.

Every (scenario, seed) run's summary carries ``objective`` under the evaluation's choice
(``run_objective``); an evaluation's objective is the mean over its runs
(``mean_objective``), and per scenario the mean over seeds (``objective_by_scenario``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

OBJECTIVES: tuple[str, ...] = ("slo", "capacity", "cost")


@dataclass(frozen=True)
class Objective:
    """Which objective an evaluation scores, with its settings."""

    name: str = "slo"
    target: float = 0.90
    """``capacity``: the SLO attainment the policy must keep."""
    gpu_budget: float = 0.75
    """``cost``: GPU time allowed, as a share of the starting plan's over the run."""

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; known: {', '.join(OBJECTIVES)}")
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"capacity target must be in (0, 1), got {self.target!r}")
        if not (self.gpu_budget > 0.0 and math.isfinite(self.gpu_budget)):
            raise ValueError(f"GPU budget must be a positive share, got {self.gpu_budget!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Objective:
        if not d:
            return cls()
        return cls(
            name=str(d.get("name", "slo")),
            target=float(d.get("target", 0.90)),
            gpu_budget=float(d.get("gpu_budget", 0.75)),
        )

    def describe(self) -> str:
        if self.name == "capacity":
            return f"capacity (rate multiple at SLO attainment >= {self.target:g})"
        if self.name == "cost":
            return f"cost (SLO attainment within {self.gpu_budget:g} of the plan's GPU time)"
        return "slo (SLO attainment)"


def slo_objective(slo_attainment: float, e2e_mean_s: float) -> float:
    tie = min(e2e_mean_s, 100.0) if math.isfinite(e2e_mean_s) else 100.0
    return slo_attainment - 1e-6 * tie


def gpu_share(gpu_seconds: float, plan_gpus: int, end_s: float) -> float:
    """GPU time held over what the starting plan holds for the same run (``end_s``)."""
    reference = plan_gpus * end_s
    return gpu_seconds / reference if reference > 0 else 1.0


def cost_objective(slo_attainment: float, share: float, budget: float) -> float:
    return slo_attainment * min(1.0, budget / share) if share > 0 else slo_attainment


def run_objective(summary: Mapping[str, float], objective: Objective) -> float:
    """The objective of one (scenario, seed) run from its summary.

    ``capacity`` needs ``capacity_scale`` in the summary (``sandbox.slo_capacity`` adds
    it); ``cost`` needs ``gpu_share`` (every simulator summary has it).
    """
    if objective.name == "capacity":
        # The interpolated crossing where the run has one (its bracket's probes), else
        # the highest passing multiple (summaries from before the crossing was kept).
        return float(summary.get("capacity_crossing", summary["capacity_scale"]))
    if objective.name == "cost":
        return cost_objective(summary["slo_attainment"], summary["gpu_share"], objective.gpu_budget)
    return slo_objective(summary["slo_attainment"], summary["e2e_mean_s"])


class _Scored(Protocol):
    scenario: str
    summary: Mapping[str, float]


def mean_objective(results: Iterable[_Scored]) -> float | None:
    """Mean ``objective`` over runs; None when there are none."""
    values = [r.summary.get("objective", math.nan) for r in results]
    return sum(values) / len(values) if values else None


def objective_by_scenario(results: Iterable[_Scored]) -> dict[str, float]:
    """Mean ``objective`` per scenario (over its seeds), in the order scenarios appear."""
    by: dict[str, list[float]] = {}
    for r in results:
        by.setdefault(r.scenario, []).append(r.summary.get("objective", math.nan))
    return {k: sum(v) / len(v) for k, v in by.items()}
