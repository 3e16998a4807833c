"""A policy against every baseline, scenario by scenario, on one split.

The reference for a policy is never its seed: it is, per scenario, the best of all the
baseline policies (``serving.policies``) on the same scenarios, seeds, scale, split and
objective. ``compare_to_baselines`` reports, per scenario, the policy's objective, the
best baseline's and its name, and their ratio; ``Comparison.mean_ratio`` and
``min_ratio`` summarise them. Reports of a champion use ``split="test"``: stretches of
the traces that evolution never scored on (``sandbox.splits``).

Every source goes through an ``Evaluate`` seam: by default the sandbox (the candidate is
untrusted code, and the baselines are measured the same way so that decision time is
charged alike); ``in_process`` runs trusted sources without isolation (tests, benches
of baselines only). A policy rejected on a scenario scores 0 there (ratio 0): a fault is
a loss, never a dropped row.

    >>> c = compare_to_baselines(source, ["prefix-heavy"], seeds=(0, 1, 2), split="test")
    >>> c.scenarios[0].best_baseline_name, c.mean_ratio, c.min_ratio
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.objectives import Objective
from sandbox.protocol import EvalRequest, EvalResponse, Limits
from serving.policy_loader import BUILTIN_POLICIES, builtin_source

Evaluate = Callable[[Sequence[EvalRequest]], list[EvalResponse]]
"""Runs evaluation requests (in a sandbox, or in this process for trusted code)."""

REPORTED_METRICS: tuple[str, ...] = (
    "objective",
    "slo_attainment",
    "ttft_p50_s",
    "ttft_p99_s",
    "e2e_p50_s",
    "e2e_p99_s",
    "gpu_share",
    "capacity_scale",
    "capacity_crossing",
    "capacity_rps",
)
"""Summary keys an entry reports (mean over seeds), where the summaries have them."""


def in_process(requests: Sequence[EvalRequest]) -> list[EvalResponse]:
    """Evaluate without isolation: for trusted sources (the baselines) only."""
    from sandbox.harness import run_in_process

    return [run_in_process(r) for r in requests]


def sandboxed(backend: str = "process", parallel: int = 2, limits: Limits | None = None):
    """An ``Evaluate`` over a sandbox ``Evaluator``, and the evaluator (close it after)."""
    from sandbox.evaluator import Evaluator

    evaluator = Evaluator(backend, max_parallel=parallel, limits=limits or Limits(wall_s=600.0))
    return evaluator.evaluate_many, evaluator


@dataclass(frozen=True)
class Entry:
    """One policy on one scenario: its objective and metrics, the mean over seeds."""

    objective: float
    metrics: Mapping[str, float] = field(default_factory=dict)
    rejection: str | None = None
    """Why the sandbox rejected it (its objective is then 0)."""

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, **self.metrics, "rejection": self.rejection}


def entries(response: EvalResponse, scenarios: Iterable[str]) -> dict[str, Entry]:
    """Per scenario, the mean of each reported metric over the response's seeds."""
    if not response.ok:
        return {s: Entry(0.0, rejection=str(response.rejection)) for s in scenarios}
    by: dict[str, list[Mapping[str, float]]] = {}
    for r in response.results:
        by.setdefault(r.scenario, []).append(r.summary)
    out = {}
    for name, summaries in by.items():
        metrics = {
            k: sum(s[k] for s in summaries) / len(summaries)
            for k in REPORTED_METRICS
            if all(k in s for s in summaries)
        }
        out[name] = Entry(metrics.pop("objective"), metrics)
    return out


@dataclass(frozen=True)
class ScenarioComparison:
    scenario: str
    policy: Entry
    baselines: Mapping[str, Entry]
    best_baseline_name: str

    @property
    def best_baseline(self) -> float:
        return self.baselines[self.best_baseline_name].objective

    @property
    def ratio(self) -> float:
        """Policy over best baseline (nan when the best baseline scores 0 or less)."""
        best = self.best_baseline
        return self.policy.objective / best if best > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.scenario,
            "champion": self.policy.to_dict(),
            "best_baseline": self.baselines[self.best_baseline_name].to_dict(),
            "best_baseline_name": self.best_baseline_name,
            "ratio": self.ratio,
            "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
        }


@dataclass(frozen=True)
class Comparison:
    """A policy against the best baseline of each scenario, on one split."""

    scenarios: tuple[ScenarioComparison, ...]
    split: str
    objective: Objective
    seeds: tuple[int, ...]
    scale: float

    @property
    def ratios(self) -> list[float]:
        return [s.ratio for s in self.scenarios]

    @property
    def mean_ratio(self) -> float:
        finite = [r for r in self.ratios if math.isfinite(r)]
        return sum(finite) / len(finite) if finite else math.nan

    @property
    def min_ratio(self) -> float:
        finite = [r for r in self.ratios if math.isfinite(r)]
        return min(finite) if finite else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "objective": self.objective.to_dict(),
            "seeds": list(self.seeds),
            "scale": self.scale,
            "scenarios": [s.to_dict() for s in self.scenarios],
            "mean_ratio": self.mean_ratio,
            "min_ratio": self.min_ratio,
        }


@dataclass(frozen=True)
class Setting:
    """Where a comparison is measured: the same for the policy and every baseline."""

    scenarios: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    scale: float = 1.0
    split: str = "test"
    objective: Objective = field(default_factory=Objective)
    windows_dir: str | None = None

    def request(self, source: str, name: str, limits: Limits | None = None) -> EvalRequest:
        return EvalRequest.build(
            source,
            self.scenarios,
            seeds=self.seeds,
            scale=self.scale,
            split=self.split,
            objective=self.objective,
            name=name,
            limits=limits or Limits(wall_s=600.0),
            windows_dir=self.windows_dir,
        )


def evaluate_baselines(
    setting: Setting,
    baselines: Sequence[str] = BUILTIN_POLICIES,
    evaluate: Evaluate = in_process,
) -> dict[str, dict[str, Entry]]:
    """``{scenario: {baseline: Entry}}`` for every baseline in ``setting``."""
    responses = evaluate([setting.request(builtin_source(b), b) for b in baselines])
    table: dict[str, dict[str, Entry]] = {s: {} for s in setting.scenarios}
    for name, response in zip(baselines, responses, strict=True):
        for scenario, entry in entries(response, setting.scenarios).items():
            table[scenario][name] = entry
    return table


def best_of(baselines: Mapping[str, Entry]) -> str:
    """The name of the best entry (the first listed among equals; rejected ones last)."""
    return max(baselines, key=lambda k: (baselines[k].rejection is None, baselines[k].objective))


def compare_to_baselines(
    source: str,
    setting: Setting,
    *,
    name: str = "policy",
    baselines: Sequence[str] = BUILTIN_POLICIES,
    evaluate: Evaluate | None = None,
    baseline_table: Mapping[str, Mapping[str, Entry]] | None = None,
) -> Comparison:
    """``source`` against the best of ``baselines`` on each of ``setting``'s scenarios.

    ``evaluate`` defaults to the process sandbox (2 in parallel) for the policy and the
    baselines alike; pass ``baseline_table`` (``evaluate_baselines``) to reuse the
    baselines' results across comparisons on the same setting.
    """
    owned = None
    if evaluate is None:
        evaluate, owned = sandboxed()
    try:
        table = baseline_table or evaluate_baselines(setting, baselines, evaluate)
        (response,) = evaluate([setting.request(source, name)])
    finally:
        if owned is not None:
            owned.close()
    mine = entries(response, setting.scenarios)
    rows = tuple(
        ScenarioComparison(s, mine[s], dict(table[s]), best_of(table[s])) for s in setting.scenarios
    )
    return Comparison(rows, setting.split, setting.objective, setting.seeds, setting.scale)
