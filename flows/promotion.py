"""Should the challenger replace the champion? A paired, held-back, bootstrapped decision.

Both policies are replayed in the sandbox on the *same* held-back scenarios and
seeds (seeds pick trace stretches; the held-back seeds are disjoint from the
ones evolution scored on, so the challenger is judged on traffic it was not
selected on). Each (scenario, seed) gives a pair of objectives; their
difference ``d = challenger - champion`` removes the scenario's own difficulty,
which is most of the variance.

The rule (every number is logged with the decision):

* promote only if the one-sided lower ``confidence`` bound of mean(d), from a
  seeded percentile bootstrap over the pairs, lies above ``margin``; a
  challenger that is the same policy or a worse one has mean(d) <= ~0 and
  cannot clear a positive margin except by a bootstrap accident of probability
  about ``1 - confidence`` at the boundary (and far less below it);
* and no scenario's mean difference is below ``-tolerance``: a better average
  bought with a regression on one kind of traffic is not a promotion.

Evaluations are re-measured (no cache): with a cache a policy compared with
itself would tie exactly, which would prove nothing about the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sandbox.evaluator import Evaluator
from sandbox.protocol import EvalRequest, EvalResponse, Limits

HELD_BACK_SEEDS: tuple[int, ...] = (101, 102, 103, 104)
"""Trace stretches evolution never scores on (its suites use seeds 0 and 1)."""


@dataclass(frozen=True)
class PromotionConfig:
    scenarios: tuple[str, ...] = ("bursty-code", "steady-conv", "mixed-pool")
    seeds: tuple[int, ...] = HELD_BACK_SEEDS
    scale: float = 0.05
    margin: float = 0.002
    """Objective points (SLO attainment) the challenger must be better by, at the bound."""
    tolerance: float = 0.01
    """Largest per-scenario mean loss accepted."""
    confidence: float = 0.95
    bootstrap: int = 4000
    bootstrap_seed: int = 0
    backend: str = "process"
    parallel: int = 2
    eval_wall_s: float = 120.0
    windows_dir: str | None = None
    """Folder of the window files ``window:`` scenarios name."""


@dataclass(frozen=True)
class Pair:
    scenario: str
    seed: int
    champion: float
    challenger: float

    @property
    def diff(self) -> float:
        return self.challenger - self.champion


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    mean_diff: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    by_scenario: dict[str, float] = field(default_factory=dict)
    champion_objective: float = math.nan
    challenger_objective: float = math.nan

    def metrics(self) -> dict[str, float]:
        m = {
            "promote": float(self.promote),
            "mean_diff": self.mean_diff,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "pairs": float(len(self.pairs)),
            "champion_objective": self.champion_objective,
            "challenger_objective": self.challenger_objective,
        }
        m |= {f"diff.{k}": v for k, v in self.by_scenario.items()}
        return m

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pairs"] = [asdict(p) | {"diff": p.diff} for p in self.pairs]
        return d


def bootstrap_interval(
    diffs: Sequence[float], confidence: float, n: int, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap of the mean: (one-sided lower bound, one-sided upper bound)."""
    d = np.asarray(diffs, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    return float(np.quantile(means, 1 - confidence)), float(np.quantile(means, confidence))


def decide(pairs: Sequence[Pair], cfg: PromotionConfig) -> Decision:
    if not pairs:
        return Decision(False, ["no paired results"])
    diffs = [p.diff for p in pairs]
    lo, hi = bootstrap_interval(diffs, cfg.confidence, cfg.bootstrap, cfg.bootstrap_seed)
    by: dict[str, list[float]] = {}
    for p in pairs:
        by.setdefault(p.scenario, []).append(p.diff)
    by_scenario = {k: float(np.mean(v)) for k, v in by.items()}
    dec = Decision(
        promote=True,
        pairs=list(pairs),
        mean_diff=float(np.mean(diffs)),
        ci_low=lo,
        ci_high=hi,
        by_scenario=by_scenario,
        champion_objective=float(np.mean([p.champion for p in pairs])),
        challenger_objective=float(np.mean([p.challenger for p in pairs])),
    )
    if lo <= cfg.margin:
        dec.promote = False
        dec.reasons.append(
            f"improvement not significant: {cfg.confidence:.0%} lower bound {lo:+.4f} "
            f"<= margin {cfg.margin:+.4f} (mean {dec.mean_diff:+.4f}, {len(pairs)} pairs)"
        )
    for name, v in sorted(by_scenario.items()):
        if v < -cfg.tolerance:
            dec.promote = False
            dec.reasons.append(f"regresses on {name}: {v:+.4f} < -{cfg.tolerance}")
    if dec.promote:
        dec.reasons.append(
            f"challenger better by {dec.mean_diff:+.4f} "
            f"({cfg.confidence:.0%} lower bound {lo:+.4f} > margin {cfg.margin})"
        )
    return dec


def pairs_of(champ: EvalResponse, chal: EvalResponse) -> list[Pair]:
    c = {(r.scenario, r.seed): r.summary["objective"] for r in champ.results}
    out = []
    for r in chal.results:
        key = (r.scenario, r.seed)
        if key in c:
            out.append(Pair(r.scenario, r.seed, float(c[key]), float(r.summary["objective"])))
    return out


def evaluate_pair(
    champion_source: str,
    challenger_source: str,
    cfg: PromotionConfig,
    evaluator: Evaluator | None = None,
) -> tuple[EvalResponse, EvalResponse]:
    """Both policies through the sandbox, same scenarios and seeds, no cache."""
    own = evaluator is None
    ev = evaluator or Evaluator(cfg.backend, max_parallel=cfg.parallel, cache=False)
    limits = Limits(wall_s=cfg.eval_wall_s)
    try:
        reqs = [
            EvalRequest.build(
                src, cfg.scenarios, seeds=cfg.seeds, scale=cfg.scale, limits=limits, name=name,
                windows_dir=cfg.windows_dir,
            )
            for name, src in (("champion", champion_source), ("challenger", challenger_source))
        ]
        champ, chal = ev.evaluate_many(reqs)
        return champ, chal
    finally:
        if own:
            ev.close()


def compare(
    champion_source: str,
    challenger_source: str,
    cfg: PromotionConfig | None = None,
    evaluator: Evaluator | None = None,
) -> Decision:
    cfg = cfg or PromotionConfig()
    champ, chal = evaluate_pair(champion_source, challenger_source, cfg, evaluator)
    if not chal.ok:
        return Decision(False, [f"challenger rejected by the sandbox: {chal.rejection}"])
    if not champ.ok:
        # The champion failing its own replay is an infrastructure problem, not a reason
        # to promote whatever is offered.
        return Decision(False, [f"champion could not be replayed: {champ.rejection}"])
    return decide(pairs_of(champ, chal), cfg)
