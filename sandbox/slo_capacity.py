"""SLO capacity: the highest load at which a policy still meets the SLO target.

Goodput at SLO, as DistServe and Splitwise measure serving systems: the scenario is
replayed at ``f`` times its arrival rate (``at_rate``: every gap divided by ``f``, so
bursts stay bursts; the cluster's events move with the clock, so a GPU loss at 30 % of
the run stays at 30 %; cold starts stay physical), and ``search_capacity`` finds the
highest ``f`` at which SLO attainment >= ``target`` by bracketing from a starting guess
and bisecting in log space. Attainment is near-monotone in load but not exactly (a
seed's bursts land differently), so the answer is *a* passing multiple with a failing
one within ``tolerance`` above it, not a proof that every lower load passes.

Cost: one simulation per probe (at the probe's load, so overloaded probes cost more).
From a guess within 30 % of the answer, 4-6 probes at the default 3 % tolerance; from
1.0 with the answer anywhere in 0.25-4x, 6-10 (the bracket gallops: each step away from
the guess squares its factor). The caller's previous answer (the parent's capacity, the
best baseline's) is the natural ``hint``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from sandbox.scenario_spec import Scenario
from sandbox.transforms import scale_rate


def at_rate(scenario: Scenario, factor: float) -> Scenario:
    """``scenario`` at ``factor`` times its arrival rate, its events on the same clock."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"rate factor must be a positive number, got {factor!r}")
    if factor == 1.0:
        return scenario
    events = tuple(replace(e, at_s=e.at_s / factor) for e in scenario.events)
    return replace(scenario, workload=scale_rate(scenario.workload, factor), events=events)


def nominal_rps(scenario: Scenario) -> float:
    """The scenario's own mean arrival rate (requests over the arrival span)."""
    w = scenario.workload
    return len(w) / w.duration_s if w.duration_s > 0 else 0.0


@dataclass(frozen=True)
class CapacitySearch:
    """How ``search_capacity`` brackets and bisects."""

    target: float = 0.90
    tolerance: float = 0.03
    """Stop when the failing multiple is within this (relative) of the passing one."""
    growth: float = 1.3
    """Bracketing step, up or down from the hint."""
    lowest: float = 1 / 32
    """Below this the capacity is reported as 0 (the policy fails even nearly idle)."""
    highest: float = 16.0
    """Above this the search stops and reports it (``bracketed`` False)."""
    max_probes: int = 14

    def __post_init__(self) -> None:
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"capacity target must be in (0, 1), got {self.target!r}")
        if not (self.tolerance > 0 and self.growth > 1 + self.tolerance):
            raise ValueError("capacity search needs tolerance > 0 and growth > 1 + tolerance")
        if not 0 < self.lowest < 1 < self.highest:
            raise ValueError("capacity search needs 0 < lowest < 1 < highest")


@dataclass(frozen=True)
class Capacity:
    """The answer: the highest passing rate multiple, and how it was found."""

    scale: float
    """Highest multiple of the scenario's rate that met the target (0: none did)."""
    rps: float
    """``scale`` x the scenario's nominal rate, in requests/s."""
    nominal_rps: float
    probes: tuple[tuple[float, float], ...]
    """(multiple, attainment) in the order tried."""
    bracketed: bool
    """False when the search hit ``highest`` or ``lowest`` instead of a failing/passing pair."""
    target: float = 0.90

    @property
    def crossing(self) -> float:
        """The multiple where attainment crosses the target: log-linear between the highest
        passing probe and the lowest failing one above it (``scale`` when unbracketed).

        Finer than the bisection's tolerance at no extra simulation, and continuous: two
        policies that both pass at ``scale`` and fail one bisection step higher differ
        here by how far each was from the target, which is what a search must see.
        """
        if not self.bracketed or self.scale <= 0:
            return self.scale
        above = [(f, a) for f, a in self.probes if f > self.scale and a < self.target]
        at = [a for f, a in self.probes if f == self.scale]
        if not above or not at:
            return self.scale
        f_hi, a_hi = min(above)
        a_lo = max(at)
        t = min(max((a_lo - self.target) / (a_lo - a_hi), 0.0), 1.0) if a_lo > a_hi else 0.0
        return self.scale * (f_hi / self.scale) ** t

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["probes"] = [list(p) for p in self.probes]
        return d

    def summary_fields(self) -> dict[str, float]:
        """What a run's summary carries (flat floats, as the sandbox protocol wants)."""
        return {
            "capacity_scale": self.scale,
            "capacity_crossing": self.crossing,
            "capacity_rps": self.rps,
            "capacity_probes": float(len(self.probes)),
            "capacity_bracketed": float(self.bracketed),
        }


def search_capacity(
    attainment_at: Callable[[float], float],
    search: CapacitySearch = CapacitySearch(),
    hint: float = 1.0,
) -> tuple[float, tuple[tuple[float, float], ...], bool]:
    """``(highest passing multiple, probes, bracketed)`` for ``attainment_at(multiple)``."""
    probes: list[tuple[float, float]] = []

    def passes(f: float) -> bool:
        a = attainment_at(f)
        probes.append((f, a))
        return a >= search.target

    guess = hint if hint > 0 and math.isfinite(hint) else 1.0
    start = min(max(guess, search.lowest), search.highest)
    lo: float | None = None
    hi: float | None = None
    step = search.growth  # galloping: each step away from the hint squares the factor
    if passes(start):
        lo = start
        while hi is None:
            up = lo * step
            if up > search.highest or len(probes) >= search.max_probes:
                return lo, tuple(probes), False
            if passes(up):
                lo, step = up, step * step
            else:
                hi = up
    else:
        hi = start
        while lo is None:
            down = hi / step
            if down < search.lowest or len(probes) >= search.max_probes:
                return 0.0, tuple(probes), False
            if passes(down):
                lo = down
            else:
                hi, step = down, step * step
    while hi / lo > 1.0 + search.tolerance and len(probes) < search.max_probes:
        mid = math.sqrt(lo * hi)
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo, tuple(probes), True


def scenario_capacity(
    scenario: Scenario,
    attainment: Callable[[Scenario], float],
    search: CapacitySearch = CapacitySearch(),
    hint: float = 1.0,
) -> Capacity:
    """SLO capacity of whatever ``attainment`` runs (a policy, in a fresh state per call)."""
    scale, probes, bracketed = search_capacity(
        lambda f: attainment(at_rate(scenario, f)), search, hint
    )
    nominal = nominal_rps(scenario)
    return Capacity(scale, scale * nominal, nominal, probes, bracketed, search.target)
