"""Headroom: how far the best baseline is from what a policy could reach on a scenario.

Three figures per scenario, as SLO attainment and (where it is finite) SLO capacity:

``best baseline``   the best of the baseline policies, as any operator could run them;
``clairvoyant``     the best of the baselines and a clairvoyant least-work router
                    (``sandbox/headroom_router.py``, alone and with the threshold
                    autoscaler's rescheduling) on the ``oracle`` scenario: every
                    request's output length known to the router (``max_output_tokens`` =
                    its real length), engine snapshots refreshed every 10 ms instead of
                    250 ms, and decisions free (no decision time charged); the plain
                    baselines stay on its side, since more information never forces a
                    policy to use it (measured: fresh snapshots and free decisions made
                    prefix_affinity *worse* on bursty-code, 0.875 vs 0.896). A reference,
                    not a proof: a smarter policy could beat it, and evolution beating it
                    says so;
``no contention``   every request alone on the fastest replica any plan could deploy,
                    with every prefix block seen earlier in the run cached: its TTFT is
                    its own chunked prefill, its TPOT a batch-of-one decode. No policy
                    can do better on the step-time model (events and cold starts are
                    ignored, which only helps it). Its capacity is unbounded, so only its
                    attainment is reported.

``gap_closed(value, h)`` says how much of the gap from the best baseline to the
clairvoyant reference a policy's value closes (1.0: all of it).

Note on lengths: the catalogue's scenarios give every router what a live one gets, the
client's ``max_tokens`` as ``max_output_tokens``: a cap shared by every request of a
trace (public traces record only what was generated; ``sandbox.traces`` says how the
cap is chosen), never a request's own length. So the oracle's known output lengths are
information no baseline has, and the clairvoyant side's lead includes their worth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources

import numpy as np

from sandbox.scenario_spec import Scenario
from sandbox.scenarios import build_scenario
from sandbox.simulator import simulate
from sandbox.slo_capacity import CapacitySearch, nominal_rps, scenario_capacity
from serving.planning import deployable_specs
from serving.policy_loader import BUILTIN_POLICIES, LoadedPolicy, builtin_policy, load_policy
from serving.steptime import step_time_model

ORACLE_SNAPSHOT_S = 0.01
CAPACITY_CANDIDATES = 2
"""Capacity is searched for this many of the best (by attainment) policies of each side:
a search costs ~6 simulations, and the best at the scenario's load is nearly always the
best a little above it."""

Progress = Callable[[str], None]


def oracle(scenario: Scenario) -> Scenario:
    """``scenario`` as a clairvoyant router sees it (see the module docstring)."""
    w = scenario.workload
    cluster = replace(
        scenario.cluster, snapshot_interval_s=ORACLE_SNAPSHOT_S, decision_time_factor=0.0
    )
    return replace(
        scenario,
        name=f"{scenario.name}:oracle",
        workload=replace(w, max_tokens=w.output_tokens.copy()),
        cluster=cluster,
    )


def _specs(scenario: Scenario):
    c = scenario.cluster
    gpus = set(c.gpus) | {s.gpu for s in c.plan.replicas} | {e.gpu for e in scenario.events}
    return deployable_specs(c.model, {g for g in gpus if g}, c.engine)


def clairvoyant_source(scenario: Scenario) -> str:
    """The clairvoyant router's source with ``SPEED`` filled in for ``scenario``'s fleet."""
    model = scenario.cluster.model
    speed = {}
    for spec in _specs(scenario):
        st = step_time_model(model, spec.gpu, spec.tp)
        batch = 64
        speed[f"{spec.gpu}/tp{spec.tp}"] = batch / st.step_s(batch, batch * 1024, 0, 0.0)
    top = max(speed.values())
    table = {k: round(v / top, 4) for k, v in speed.items()}
    text = resources.files("sandbox").joinpath("headroom_router.py").read_text("utf-8")
    marker = "SPEED: dict[str, float] = {}"
    if marker not in text:
        raise RuntimeError("sandbox/headroom_router.py no longer declares SPEED as expected")
    return text.replace(marker, f"SPEED: dict[str, float] = {table!r}")


def _clairvoyant_policies(scenario: Scenario) -> dict[str, Callable[[], LoadedPolicy]]:
    source = clairvoyant_source(scenario)

    def router() -> LoadedPolicy:
        return load_policy(source, name="clairvoyant")

    def with_autoscaler() -> LoadedPolicy:
        scaler = builtin_policy("threshold_autoscaler")
        return replace(scaler, name="clairvoyant+autoscaler", route=router().route)

    return {"clairvoyant": router, "clairvoyant+autoscaler": with_autoscaler}


def no_contention(scenario: Scenario) -> dict[str, float]:
    """SLO attainment with every request alone on the fastest deployable replica."""
    w, slo, cfg = scenario.workload, scenario.slo, scenario.cluster.engine
    models = [step_time_model(scenario.cluster.model, s.gpu, s.tp) for s in _specs(scenario)]
    cached = _cached_tokens(scenario)
    met = np.zeros(len(w), dtype=bool)
    for st in models:
        for i in np.flatnonzero(~met):
            prompt, output = int(w.prompt_tokens[i]), int(w.output_tokens[i])
            done = min(int(cached[i]), prompt - 1)
            ttft = 0.0
            while done < prompt:  # chunked prefill, the whole token budget to itself
                new = min(prompt - done, cfg.max_num_batched_tokens)
                ttft += st.step_s(0, 0, new, new * (done + new / 2))
                done += new
            ok = ttft <= slo.ttft_s
            if ok and output > 1:
                w1, k = st.decode_coeffs(1)
                ok = w1 + k * (prompt + output / 2) <= slo.tpot_s  # mean of its decode steps
            met[i] = ok
    return {"slo_attainment": float(met.mean()) if len(w) else 0.0}


def _cached_tokens(scenario: Scenario) -> np.ndarray:
    """Per request, the leading prompt tokens whose blocks appeared in an earlier request."""
    w = scenario.workload
    out = np.zeros(len(w), dtype=np.int64)
    if not w.has_prefixes:
        return out
    seen: set[int] = set()
    for i, hashes in enumerate(w.prefix_hashes):
        lead = 0
        while lead < len(hashes) and hashes[lead] in seen:
            lead += 1
        out[i] = lead * w.prefix_block_tokens
        seen.update(hashes)
    return out


@dataclass(frozen=True)
class Side:
    """The best policy of one side (baselines, or clairvoyant) on one figure."""

    name: str
    value: float


@dataclass(frozen=True)
class Headroom:
    scenario: str
    split: str
    seeds: tuple[int, ...]
    scale: float
    best_baseline: Side
    """By SLO attainment (mean over seeds)."""
    clairvoyant: Side
    no_contention: float
    """SLO attainment of the no-contention bound."""
    best_baseline_capacity: Side | None = None
    """By capacity scale (multiple of the scenario's rate), mean over seeds."""
    clairvoyant_capacity: Side | None = None
    nominal_rps: float = 0.0
    attainment: dict[str, float] | None = None
    """Every policy's mean attainment: baselines by name, oracle runs as ``name:oracle``."""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def gap_closed(value: float, best_baseline: float, reference: float) -> float:
    """Share of the gap best baseline -> reference that ``value`` closes (nan: no gap)."""
    gap = reference - best_baseline
    return (value - best_baseline) / gap if gap > 1e-9 else math.nan


@dataclass
class _Runs:
    """One scenario's seeds and the policies of both sides, by label (``name[:oracle]``)."""

    built: dict[int, Scenario]
    policies: dict[str, Callable[[], LoadedPolicy]]

    def scenario(self, label: str, seed: int) -> Scenario:
        return oracle(self.built[seed]) if label.endswith(":oracle") else self.built[seed]

    def attainment_on(self, label: str, scenario: Scenario, seed: int) -> float:
        # A fresh load per run: module globals are policy state.
        return simulate(scenario, self.policies[label](), seed=seed).summary()["slo_attainment"]

    def attainment(self, label: str) -> float:
        return float(
            np.mean([self.attainment_on(label, self.scenario(label, s), s) for s in self.built])
        )

    def capacity(self, label: str, search: CapacitySearch) -> float:
        return float(
            np.mean(
                [
                    scenario_capacity(
                        self.scenario(label, s),
                        lambda sc, s=s: self.attainment_on(label, sc, s),
                        search,
                    ).crossing
                    for s in self.built
                ]
            )
        )


def headroom(
    name: str,
    *,
    seeds: Sequence[int] = (0,),
    scale: float = 1.0,
    split: str = "test",
    target: float = 0.90,
    capacity: bool = True,
    baselines: Sequence[str] = BUILTIN_POLICIES,
    progress: Progress | None = None,
) -> Headroom:
    """The headroom figures of scenario ``name`` (in this process: trusted code only)."""
    tick = progress or (lambda _what: None)
    built = {s: build_scenario(name, s, scale=scale, split=split) for s in seeds}
    plain = {b: (lambda b=b: builtin_policy(b)) for b in baselines}
    oracle_side = {f"{b}:oracle": f for b, f in plain.items()}
    oracle_side |= {f"{k}:oracle": f for k, f in _clairvoyant_policies(built[seeds[0]]).items()}
    runs = _Runs(built, plain | oracle_side)
    clairvoyant = list(runs.policies)  # more information never forces a policy to use it
    attainment: dict[str, float] = {}
    for label in runs.policies:
        attainment[label] = runs.attainment(label)
        tick(f"{name} / {label}")
    best = max(plain, key=lambda b: attainment[b])
    clair = max(clairvoyant, key=lambda b: attainment[b])
    bound = float(np.mean([no_contention(b)["slo_attainment"] for b in built.values()]))
    out = Headroom(
        name, split, tuple(seeds), scale, Side(best, attainment[best]),
        Side(clair, attainment[clair]), bound,
        nominal_rps=float(np.mean([nominal_rps(b) for b in built.values()])),
        attainment=attainment,
    )  # fmt: skip
    if not capacity:
        return out

    found: dict[str, float] = {}  # each policy's capacity searched once, shared by both sides

    def best_capacity(side: Sequence[str]) -> Side:
        for label in sorted(side, key=lambda b: -attainment[b])[:CAPACITY_CANDIDATES]:
            if label not in found:
                found[label] = runs.capacity(label, CapacitySearch(target))
                tick(f"{name} / capacity of {label}")
        top = max((k for k in found if k in side), key=lambda k: found[k])
        return Side(top, found[top])

    baseline_capacity = best_capacity(list(plain))
    oracle_capacity = best_capacity(list(oracle_side))
    # The clairvoyant side holds the baselines too: its capacity is the best of both.
    clair_capacity = max(baseline_capacity, oracle_capacity, key=lambda side: side.value)
    return replace(
        out, best_baseline_capacity=baseline_capacity, clairvoyant_capacity=clair_capacity
    )
