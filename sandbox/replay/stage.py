"""The replay stage: a candidate routes a slice of a scenario through the live router.

The simulator stage scores a candidate in virtual time; this stage confirms it
on engines: the first ``requests`` requests (and/or ``seconds``) of a scenario's
workload are replayed open-loop through ``serving.router.Router`` running the
candidate, in front of the engines of an ``EngineTarget``
(``sandbox.replay.engines``): simulated vLLM-compatible engines as local
processes (what CI runs), engines already up at given URLs (real vLLM on a GPU
runner), or ``vllm serve`` containers. Latencies are measured at the client and
go through ``sandbox.results.SimResult``, so the summary has the simulator's
keys and objective; the simulator is run on the same slice too, and the result
carries both and their agreement.

Time scale: simulated engines may run at ``time_scale`` k wall seconds per
model second. Arrivals are sent at k times their trace time, the router's scrape
and monitor intervals are the cluster's times k, and measured latencies are
divided by k, so results are in model seconds like the simulator's. What does
not scale with k is the HTTP path (router, loopback, client: ~1-3 ms wall per
request, i.e. that divided by k in model time) and the policy's view of time
(``now`` and snapshot ages are wall seconds); keep k near 1 where that matters.

Cluster events of the scenario (GPU loss, replica failure) are left out of the
slice (engines cannot be made to lose GPUs on cue); the simulator replays the
same event-free slice, so the two compare like for like. Queueing time and
per-request replica are not observable from outside the engines (``queue_mean_s``
is NaN); retries and preemptions are the router's and engines' totals.

Isolation: callers outside this plane run the stage in a worker process of its
own (``sandbox.replay.worker.run_isolated``), never in their process. That worker
is not a sandbox: it needs loopback networking and starts engines. Candidates
reach this stage only after the sandboxed simulator stage; ``run`` re-runs the
static checks first, and the worker is bounded by a wall-clock limit and its
whole process group killed afterwards. On a GPU runner the whole stage --
worker, router and load generator -- runs inside the runner's container, next to
the engines it targets.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from sandbox.replay.engines import (
    EngineError,
    EngineTarget,
    engines_cluster,
    preemptions,
    served_model,
    start_fleet,
)
from sandbox.replay.loadgen import Result
from sandbox.replay.shots import workload_shots
from sandbox.results import STATUS_OK, STATUS_REJECTED, STATUS_TIMEOUT, DecisionTimes, SimResult
from sandbox.scenario_spec import Scenario
from sandbox.transforms import head, time_slice
from sandbox.workload import WorkloadError
from serving.fleet import Fleet
from serving.policy_loader import LoadedPolicy

AGREEMENT_KEYS = ("ttft_mean_s", "tpot_mean_s", "e2e_mean_s")
MIN_SCRAPE_S = 0.02
"""The router scrapes no faster than this (wall): more would only load the engines."""


@dataclass(frozen=True)
class ReplayRequest:
    """What to replay, with which policy, on which engines."""

    source: str
    scenario: str
    name: str = "candidate"
    seed: int = 0
    scale: float = 1.0
    requests: int | None = 200
    """The first this many requests of the scenario's workload (None: all)."""
    seconds: float | None = None
    """Only requests arriving in the first this many model seconds (None: no cut)."""
    target: EngineTarget = field(default_factory=EngineTarget)
    windows_dir: str | None = None
    route_budget_s: float = 0.002
    request_timeout_s: float = 600.0
    """Model seconds a request may take (the simulator's drain horizon): then it failed."""
    wall_s: float = 900.0
    """The whole stage's wall-clock limit (engine start, replay, simulation)."""

    def __post_init__(self) -> None:
        if self.requests is not None and self.requests < 1:
            raise ValueError(f"requests must be >= 1, got {self.requests}")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")

    @property
    def key(self) -> str:
        """Identity of the measurement (source, slice, engines), for journals."""
        d = self.to_dict()
        d["source"] = hashlib.sha256(self.source.encode()).hexdigest()
        for volatile in ("name", "wall_s", "windows_dir"):
            d.pop(volatile)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:24]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReplayRequest:
        return cls(**{**d, "target": EngineTarget.from_dict(d["target"])})


@dataclass
class ReplayResult:
    ok: bool
    """The replay ran to the end (its requests may still have failed: see ``failures``)."""
    stage: str = ""
    """Where it stopped when not ok: static, load, scenario, engines, timeout, internal."""
    error: str = ""
    engine_kind: str = ""
    engines: list[str] = field(default_factory=list)
    scenario: str = ""
    requests: int = 0
    time_scale: float = 1.0
    summary: dict[str, float] = field(default_factory=dict)
    """Measured, with the keys of ``SimResult.summary`` (model seconds)."""
    simulated: dict[str, float] = field(default_factory=dict)
    """The simulator on the same slice (empty when the policy faulted there: ``sim_error``)."""
    sim_error: str = ""
    agreement: dict[str, float] = field(default_factory=dict)
    failures: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)
    """Route calls the router answered with a fallback policy, by reason."""
    demotions: int = 0
    reschedule_errors: int = 0
    plans_applied: int = 0
    max_send_lag_s: float = 0.0
    """How late the load generator sent a request (model seconds): large means overloaded."""
    events_dropped: int = 0
    wall_s: float = 0.0

    @property
    def objective(self) -> float | None:
        value = self.summary.get("objective") if self.ok else None
        return value if value is not None and math.isfinite(value) else None

    @property
    def faults(self) -> int:
        """The candidate's own failures on the live router (a budget overrun is not one)."""
        return (self.fallbacks.get("exception", 0) + self.fallbacks.get("invalid", 0)
                + self.reschedule_errors)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReplayResult:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# --------------------------------------------------------------------------- the slice
def scenario_slice(scenario: Scenario, requests: int | None, seconds: float | None
                   ) -> tuple[Scenario, int]:
    """The slice replayed, and how many of the scenario's events fell inside it."""
    w = scenario.workload
    if seconds is not None:
        w = time_slice(w, 0.0, seconds)
    if requests is not None:
        w = head(w, requests)
    if len(w) == 0:
        raise WorkloadError(f"{scenario.name}: the slice holds no requests")
    start, end = float(w.arrival_s[0]), float(w.arrival_s[-1])
    inside = sum(1 for e in scenario.events if e.at_s <= end)
    # A stretch of trace may open with an idle lead-in: a replay would wait it out in
    # real time for nothing (warm replicas, no events), so the slice starts at its first.
    w = w.take(slice(None), arrival_s=w.arrival_s - start)
    # Shots ask each engine for a request's true length as max_tokens (the only way to
    # make an engine stop there), so the live router sees it: the simulated side is told
    # the same, or the two would not be routing alike.
    w = replace(w, max_tokens=w.output_tokens.copy())
    return replace(scenario, name=f"{scenario.name}[:{len(w)}]", workload=w, events=()), inside


def measured(scenario: Scenario, policy: str, results: list[Result], time_scale: float,
             gpu_seconds: float) -> SimResult:
    """Client-side measurements as a ``SimResult`` in model seconds."""
    n = len(results)
    status = np.array([STATUS_OK if r.ok else STATUS_REJECTED if r.status == 400
                       else STATUS_TIMEOUT for r in results], dtype=np.int8)

    def col(name: str) -> np.ndarray:
        return np.array([getattr(r, name) for r in results], dtype=float) / time_scale

    arrival = np.asarray(scenario.workload.arrival_s[:n], dtype=float)
    e2e = col("e2e_s")
    finished = arrival + np.where(status == STATUS_OK, e2e, 0.0)
    return SimResult(
        scenario=scenario.name, policy=policy, arrival_s=arrival, ttft_s=col("ttft_s"),
        tpot_s=col("tpot_s"), e2e_s=e2e, queue_s=np.full(n, math.nan),
        replica=np.full(n, -1, dtype=np.int64), preemptions=np.zeros(n, dtype=np.int64),
        retries=np.zeros(n, dtype=np.int64), status=status,
        slo_ttft_s=scenario.slo.ttft_s, slo_tpot_s=scenario.slo.tpot_s,
        gpu_seconds=gpu_seconds, end_s=float(finished.max(initial=0.0)),
        decisions=DecisionTimes(),
    )


def summary_of(result: SimResult) -> dict[str, float]:
    with warnings.catch_warnings():  # queue_s is all NaN when measured: its mean is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return result.summary()


def agreement(sim: dict[str, float], live: dict[str, float]) -> dict[str, float]:
    """Replay relative to simulator: ratios - 1 of latency means, differences of scores."""
    out = {f"{k}_rel": live[k] / sim[k] - 1.0 for k in AGREEMENT_KEYS
           if sim.get(k) and math.isfinite(sim[k]) and math.isfinite(live.get(k, math.nan))}
    for k in ("slo_attainment", "objective"):
        if k in sim and k in live:
            out[f"{k}_diff"] = live[k] - sim[k]
    return out


# --------------------------------------------------------------------------- the replay
async def _gpu_seconds(fleet: Fleet, period_s: float, time_scale: float, box: list[float]
                       ) -> None:
    # GPUs held, integrated over the run in model seconds (sampled: plans change rarely).
    last = time.monotonic()
    while True:
        await asyncio.sleep(period_s)
        now = time.monotonic()
        box[0] += sum(e.spec.tp for e in fleet.engines()) * (now - last) / time_scale
        last = now


async def replay(req: ReplayRequest, scenario: Scenario, policy: LoadedPolicy,
                 out: ReplayResult) -> None:
    """Engines up, router with ``policy`` in front, the slice sent through it; fills ``out``."""
    from sandbox.replay.loadgen import run_load, summarize
    from serving.policy_runtime import PolicyRuntime
    from serving.router import RouterConfig
    from serving.serve import start_router

    k = req.target.time_scale
    cluster = scenario.cluster
    timeout_wall = req.request_timeout_s * k
    scrape = max(cluster.snapshot_interval_s * k, MIN_SCRAPE_S)
    config = RouterConfig(
        scrape_interval_s=scrape, stale_after_s=max(3.0 * k, 10 * scrape),
        monitor_interval_s=cluster.monitor_interval_s * k, route_budget_s=req.route_budget_s,
        hold_timeout_s=timeout_wall, upstream_timeout_s=timeout_wall, model_name=cluster.model)
    runtime = PolicyRuntime(policy, budget_s=req.route_budget_s)
    shots = workload_shots(scenario.workload, 1.0 / k, None, len(scenario.workload))
    fleet = await start_fleet(req.target, cluster)
    running = sampler = None
    try:
        urls = [e.url for e in fleet.engines()]
        out.engines = urls
        # Asked even when given: an engine that is not up fails the stage here, clearly.
        model = await served_model(urls, cluster.model)
        if req.target.kind == "urls" and req.target.model:
            model = req.target.model
        before = await preemptions(urls)
        running = await start_router(fleet, runtime, config)
        gpu = [0.0]
        sampler = asyncio.create_task(_gpu_seconds(fleet, config.monitor_interval_s, k, gpu))
        results, load_wall_s = await asyncio.wait_for(
            run_load(running.url, shots, model=model, timeout_s=timeout_wall,
                     extra_body={"ignore_eos": True}),  # real vLLM: generate the trace's length
            shots[-1].at + timeout_wall + 30.0)
        after = await preemptions([e.url for e in fleet.engines()])
    finally:
        if sampler is not None:
            sampler.cancel()
        if running is not None:
            await running.close()
        await fleet.close()
    live = summary_of(measured(scenario, policy.name, results, k, gpu[0]))
    live["retries"] = float(running.router.telemetry.retries)
    live["preemptions"] = after - before
    live["replans"] = float(running.router.telemetry.plans_applied)
    out.summary = live
    client = summarize(results, load_wall_s)
    out.failures, out.errors = client.failed, client.errors
    out.fallbacks = dict(runtime.fallbacks)
    out.demotions = runtime.demotions
    out.reschedule_errors = runtime.reschedule_errors
    out.plans_applied = running.router.telemetry.plans_applied
    out.max_send_lag_s = client.max_send_lag_ms / 1000 / k
    out.ok = True


def run(req: ReplayRequest) -> ReplayResult:
    """The stage, in this process: checks, the simulator on the slice, then the replay."""
    from sandbox.harness import build
    from sandbox.simulator import PolicyFault, simulate
    from sandbox.static_checks import first_violation
    from serving.policy_loader import PolicyError, load_policy

    t0 = time.monotonic()
    out = ReplayResult(ok=False, engine_kind=req.target.kind, time_scale=req.target.time_scale)

    def stop(stage: str, error: str) -> ReplayResult:
        out.stage, out.error, out.wall_s = stage, error, time.monotonic() - t0
        return out

    violation = first_violation(req.source)
    if violation:
        return stop("static", violation)
    try:
        scenario, out.events_dropped = scenario_slice(
            build(req.scenario, req.seed, req.scale, req.windows_dir), req.requests, req.seconds)
    except (KeyError, ValueError, OSError) as e:  # WorkloadError is a ValueError
        return stop("scenario", str(e).strip("'\""))
    scenario = replace(scenario, cluster=engines_cluster(req.target, scenario.cluster))
    out.scenario, out.requests = scenario.name, len(scenario.workload)
    try:
        # Two loads: module state a policy keeps (a round-robin counter) must not carry over.
        sim_policy = load_policy(req.source, name=req.name)
        live_policy = load_policy(req.source, name=req.name)
    except PolicyError as e:
        return stop("load", str(e))
    try:
        out.simulated = summary_of(simulate(scenario, sim_policy, seed=req.seed))
    except PolicyFault as e:
        out.sim_error = e.reason  # the live router falls back instead: replay anyway
    try:
        asyncio.run(replay(req, scenario, live_policy, out))
    except EngineError as e:
        return stop("engines", str(e))
    except TimeoutError:
        return stop("timeout", "the replay did not finish within its schedule and timeouts")
    except Exception as e:  # reported as a result, never raised into the caller
        return stop("internal", f"{type(e).__name__}: {e}")
    if out.simulated:
        out.agreement = agreement(out.simulated, out.summary)
    out.wall_s = time.monotonic() - t0
    return out
