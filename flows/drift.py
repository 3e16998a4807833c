"""Has the workload drifted from the window the champion was evolved on?

The documented test (what ``pull-telemetry`` runs on every new window):

* **Arrival rate** — a Poisson rate-ratio test. With ``n_ref`` arrivals in
  ``T_ref`` seconds and ``n_cur`` in ``T_cur``, under H0 (same rate)
  ``n_cur | n_ref + n_cur ~ Binomial(n_ref + n_cur, T_cur / (T_ref + T_cur))``;
  the two-sided exact binomial p-value is reported.
* **Prompt and output lengths** — two-sample Kolmogorov–Smirnov tests on
  ``log1p(tokens)`` (log: lengths are heavy-tailed, and a shift by a factor is
  what matters to a KV cache and a step-time model).

The three p-values are compared with ``alpha / 3`` (Bonferroni: one window is
tested three ways, and a false alarm costs a whole evolution). Each test must
also clear an effect-size floor — a rate ratio off by more than
``min_rate_change``, or a KS statistic above ``min_ks`` — because with
thousands of requests a few percent of difference is "significant" yet not
worth re-evolving for, and real arrivals are burstier than Poisson (the
rate test alone would be anticonservative).

An SLO regression is tested separately: a one-sided two-proportion z-test that
the current attainment is lower than the reference by more than ``slo_drop``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class DriftConfig:
    alpha: float = 0.01
    """Family-wise false-alarm rate of one window's three tests."""
    min_rate_change: float = 0.25
    """Rate ratios within [1/(1+x), 1+x] are never drift, whatever the p-value."""
    min_ks: float = 0.15
    """KS statistics below this are never drift."""
    min_requests: int = 50
    """Fewer requests in either window: no decision (too little evidence)."""
    slo_drop: float = 0.05
    """An SLO regression is a drop in attainment by more than this (absolute)."""
    slo_alpha: float = 0.01


@dataclass(frozen=True)
class WindowSample:
    """What the tests need of one window: its span, arrivals, lengths and SLO outcomes."""

    duration_s: float
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    slo_met: np.ndarray | None = None
    """One bool per finished request (None: not known, e.g. a synthetic reference)."""

    @property
    def requests(self) -> int:
        return len(self.prompt_tokens)

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "prompt_tokens": [int(x) for x in self.prompt_tokens],
            "output_tokens": [int(x) for x in self.output_tokens],
            "slo_met": None if self.slo_met is None else [bool(x) for x in self.slo_met],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowSample:
        slo = d.get("slo_met")
        return cls(
            float(d["duration_s"]),
            np.asarray(d["prompt_tokens"], dtype=np.int64),
            np.asarray(d["output_tokens"], dtype=np.int64),
            None if slo is None else np.asarray(slo, dtype=bool),
        )


@dataclass
class DriftReport:
    drifted: bool = False
    slo_regressed: bool = False
    decided: bool = True
    reasons: list[str] = field(default_factory=list)
    rate_ratio: float = math.nan
    rate_p: float = math.nan
    prompt_ks: float = math.nan
    prompt_p: float = math.nan
    output_ks: float = math.nan
    output_p: float = math.nan
    slo_ref: float = math.nan
    slo_cur: float = math.nan
    slo_p: float = math.nan

    @property
    def trigger(self) -> bool:
        return self.drifted or self.slo_regressed

    def metrics(self) -> dict[str, float]:
        """The numbers, as MLflow metrics (NaN ones left out by the logger)."""
        return {
            k: float(v) for k, v in asdict(self).items() if isinstance(v, int | float)
        }


def rate_ratio_test(n_ref: int, t_ref: float, n_cur: int, t_cur: float) -> tuple[float, float]:
    """(current / reference rate, two-sided exact p-value) of the conditional binomial test."""
    if t_ref <= 0 or t_cur <= 0 or n_ref + n_cur == 0:
        return math.nan, math.nan
    ratio = (n_cur / t_cur) / (n_ref / t_ref) if n_ref > 0 else math.inf
    p = stats.binomtest(n_cur, n_ref + n_cur, t_cur / (t_ref + t_cur)).pvalue
    return ratio, float(p)


def log_length_ks(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """(KS statistic, p-value) of log1p lengths."""
    if len(ref) == 0 or len(cur) == 0:
        return math.nan, math.nan
    res = stats.ks_2samp(np.log1p(ref.astype(float)), np.log1p(cur.astype(float)))
    return float(res.statistic), float(res.pvalue)


def slo_regression_test(
    ref: np.ndarray, cur: np.ndarray, drop: float
) -> tuple[float, float, float]:
    """(reference attainment, current attainment, one-sided p of cur < ref - drop)."""
    n1, n2 = len(ref), len(cur)
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan, math.nan
    p1, p2 = float(np.mean(ref)), float(np.mean(cur))
    se = math.sqrt(max(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2, 1e-12))
    z = ((p1 - drop) - p2) / se
    return p1, p2, float(stats.norm.sf(z))


def detect(ref: WindowSample, cur: WindowSample, cfg: DriftConfig | None = None) -> DriftReport:
    cfg = cfg or DriftConfig()
    rep = DriftReport()
    if ref.requests < cfg.min_requests or cur.requests < cfg.min_requests:
        rep.decided = False
        rep.reasons.append(
            f"too few requests to decide ({ref.requests} reference, {cur.requests} current)"
        )
        return rep
    a = cfg.alpha / 3
    rep.rate_ratio, rep.rate_p = rate_ratio_test(
        ref.requests, ref.duration_s, cur.requests, cur.duration_s
    )
    bound = 1 + cfg.min_rate_change
    if rep.rate_p < a and not (1 / bound <= rep.rate_ratio <= bound):
        rep.drifted = True
        rep.reasons.append(f"arrival rate x{rep.rate_ratio:.2f} (p={rep.rate_p:.2g})")
    for what, r, c in (
        ("prompt", ref.prompt_tokens, cur.prompt_tokens),
        ("output", ref.output_tokens, cur.output_tokens),
    ):
        d, p = log_length_ks(r, c)
        setattr(rep, f"{what}_ks", d)
        setattr(rep, f"{what}_p", p)
        if p < a and d > cfg.min_ks:
            rep.drifted = True
            rep.reasons.append(f"{what} lengths KS D={d:.2f} (p={p:.2g})")
    if ref.slo_met is not None and cur.slo_met is not None:
        rep.slo_ref, rep.slo_cur, rep.slo_p = slo_regression_test(
            ref.slo_met, cur.slo_met, cfg.slo_drop
        )
        if rep.slo_p < cfg.slo_alpha:
            rep.slo_regressed = True
            rep.reasons.append(
                f"SLO attainment {rep.slo_ref:.3f} -> {rep.slo_cur:.3f} (p={rep.slo_p:.2g})"
            )
    return rep


def sample_of(
    prompt: Sequence[int], output: Sequence[int], duration_s: float, slo: Sequence[bool] | None
) -> WindowSample:
    return WindowSample(
        duration_s,
        np.asarray(prompt, dtype=np.int64),
        np.asarray(output, dtype=np.int64),
        None if slo is None else np.asarray(slo, dtype=bool),
    )
