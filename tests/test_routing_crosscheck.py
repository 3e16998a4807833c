"""The live router and the simulator decide the same way: one script, both hosts' own paths.

One scripted sequence of arrivals, finishes, engine snapshots, a replica coming up
and monitoring ticks drives the router (``Router._route``, ``_release``, the
scraper's round hook, ``_drain``; its clock replaced by the script's) and the
simulator (``_on_arrival``, ``_on_engine``, ``_on_snapshot``, ``_on_ready``,
``_on_monitor``; its engines replaced by ones that replay the script's snapshots
and finishes). The policy holds selectively: long prompts while every replica has
two requests in flight, a session until t = 4. Every route() call (request, now,
every view field, answer) and the hold queue after every event must be identical,
and both hosts must have drained through ``serving.routing.RoutingCore``.
"""

from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest

from sandbox import simulator as simulator_module
from sandbox.scenario_spec import ClusterSpec, Scenario
from sandbox.simulator import Simulation
from sandbox.workload import Workload
from serving.contract import Plan, ReplicaSpec, Request
from serving.engine import INF
from serving.fleet import StaticFleet
from serving.metrics_adapter import EngineMetrics
from serving.policy_loader import load_policy
from serving.policy_runtime import PolicyRuntime
from serving.router import Router, RouterConfig
from serving.routing import NO_EXCLUSIONS, SKIP_AHEAD, RoutingCore

MODEL = "llama-3-8b"
H1 = ReplicaSpec("H100", 1)
ADMISSION_LIMIT = 12
LONG = 1500  # prompt tokens above which the policy may hold

SELECTIVE = f"""
from serving.contract import HOLD

CALLS = []


def route(request, replicas, now):
    serving = [r for r in replicas if r.state == "serving"]
    if request.session_id == "late" and now < 4.0:
        choice = HOLD
    elif request.prompt_tokens > {LONG} and min(r.inflight_requests for r in serving) >= 2:
        choice = HOLD
    else:
        choice = min(serving, key=lambda r: (r.inflight_requests + r.waiting, r.id)).id
    CALLS.append((request.id, now, replicas, choice))
    return choice
"""


def script(seed: int = 7) -> tuple[list[tuple], list[dict]]:
    """(events, requests): a burst that fills the admission limit with long prompts
    held behind short ones, finishes that free room, snapshots, a replica coming up."""
    rng = random.Random(seed)
    requests: list[dict] = []
    events: list[tuple] = []

    def arrive(t: float, prompt: int, session: str = "") -> None:
        i = len(requests)
        blocks = prompt // 16
        shared = rng.randrange(3)  # three shared prefixes: overlap differs by replica
        hashes = tuple(shared * 10_000 + b for b in range(blocks // 2)) + tuple(
            i * 10_000 + 5_000 + b for b in range(blocks - blocks // 2)
        )
        requests.append(dict(t=t, prompt=prompt, output=64, hashes=hashes, session=session))
        events.append(("arrive", t, i))

    t = 0.1
    for _ in range(6):  # light load first
        arrive(t, rng.choice([200, 400, 2000]))
        t += 0.05
    events.append(("snapshot", 0.5, {0: (2, 0, 300), 1: (3, 1, 500)}))
    arrive(0.6, 300, "late")
    t = 1.0
    for _ in range(SKIP_AHEAD + 4):  # a burst of long prompts: most are held
        arrive(t, 1800)
        t += 0.01
    for _ in range(4):  # short ones behind them: dispatched past the held until the limit
        arrive(t, 250)
        t += 0.01
    events.append(("snapshot", 1.5, {0: (5, 2, 900), 1: (6, 0, 1200)}))
    events.append(("tick", 2.0, None))
    for k in range(8):
        events.append(("finish", 2.1 + 0.1 * k, None))
    events.append(("ready", 3.0, 2))
    events.append(("snapshot", 3.2, {0: (4, 1, 800), 1: (2, 0, 400), 2: (0, 0, 0)}))
    t = 3.3
    for _ in range(6):
        arrive(t, rng.choice([250, 1800]))
        t += 0.05
    events.append(("tick", 4.0, None))
    for k in range(10):
        events.append(("finish", 4.2 + 0.1 * k, None))
    events.append(("snapshot", 5.5, {0: (1, 0, 100), 1: (1, 0, 100), 2: (2, 0, 300)}))
    events.append(("tick", 6.0, None))
    for k in range(len(requests)):  # the rest finish one by one
        events.append(("finish", 6.1 + 0.05 * k, None))
    events.sort(key=lambda e: e[1])
    return events, requests


def request_of(i: int, spec: dict) -> Request:
    return Request(
        id=i, arrival=spec["t"], prompt_tokens=spec["prompt"], max_output_tokens=spec["output"],
        prefix_hashes=spec["hashes"], prefix_block_tokens=16, session_id=spec["session"],
    )  # fmt: skip


class ScriptedEngine:
    """An engine that replays the script: its snapshot is what the script says, and a
    request finishes when the script finishes it. Only the routing paths are under test."""

    def __init__(self) -> None:
        self.values = (0, 0, 0)
        self.seqs: list = []
        self.done: list = []
        self.epoch = 0
        self.steps = 0
        self.step_end = INF
        self.waiting: list = []

    def fits(self, seq) -> bool:
        return True

    def enqueue(self, seq, now: float) -> None:
        self.seqs.append(seq)

    def snapshot(self, now: float) -> tuple[int, int, int]:
        return self.values

    def on_step_end(self, now: float) -> list:
        for seq in self.done:
            seq.first_scheduled = seq.first_token = seq.finish = now
        done, self.done = self.done, []
        return done

    @property
    def idle(self) -> bool:
        return not self.seqs

    def abort(self) -> list:
        return []


class SimulatorSide:
    def __init__(self, policy_source: str, requests: list[dict], monkeypatch) -> None:
        monkeypatch.setattr(simulator_module, "make_engine", lambda *a, **k: ScriptedEngine())
        n = len(requests)
        workload = Workload(
            np.array([r["t"] for r in requests]),
            np.array([r["prompt"] for r in requests]),
            np.full(n, 64),
            np.full(n, 64),
            prefix_hashes=tuple(r["hashes"] for r in requests),
            session_ids=tuple(r["session"] for r in requests),
            name="script",
        )
        cluster = ClusterSpec(
            MODEL, {"H100": 3}, Plan((H1, H1), admission_limit=ADMISSION_LIMIT),
            snapshot_interval_s=1e6, monitor_interval_s=1e6, decision_time_factor=0.0,
        )  # fmt: skip
        self.policy = load_policy(policy_source, name="selective")
        self.sim = Simulation(Scenario("script", "", workload, cluster), self.policy)
        self.sim.start()
        # The third replica is planned now and comes up when the script says so.
        self.sim._apply(Plan((H1, H1, H1), admission_limit=ADMISSION_LIMIT))

    @property
    def core(self) -> RoutingCore:
        return self.sim.core

    def at(self, t: float) -> None:
        self.sim.now = t

    def arrive(self, i: int, _: Request) -> None:
        self.sim._on_arrival(i)

    def finish_oldest(self) -> None:
        if not self.sim.inflight:
            return
        i = min(self.sim.inflight)
        replica, _ = self.sim.inflight[i]
        engine = self.sim.replicas[replica].engine
        seq = next(s for s in engine.seqs if s.rid == i)
        engine.seqs.remove(seq)
        engine.done.append(seq)
        self.sim._on_engine((replica, engine.epoch))

    def snapshot(self, values: dict[int, tuple[int, int, int]]) -> None:
        for rid, v in values.items():
            self.sim.replicas[rid].engine.values = v
        self.sim._on_snapshot(None)

    def ready(self, rid: int) -> None:
        self.sim._on_ready(rid)

    def tick(self) -> None:
        self.sim._on_monitor(None)

    def dispatched(self) -> dict[int, int]:
        return {i: replica for i, (replica, _) in self.sim.inflight.items()}


class RouterSide:
    def __init__(self, policy_source: str) -> None:
        self.now = 0.0
        self.policy = load_policy(policy_source, name="selective")
        fleet = StaticFleet([f"http://127.0.0.1:{9 + k}" for k in range(3)], H1)
        self.router = Router(
            fleet, PolicyRuntime(self.policy, budget_s=math.inf),
            RouterConfig(model_name=MODEL, stale_after_s=1e6), clock=lambda: self.now,
        )  # fmt: skip
        self.kv_total = 0

    async def start(self) -> None:
        router = self.router
        await router.fleet.apply(Plan((H1,) * 3, admission_limit=ADMISSION_LIMIT), router.idle)
        router.replica_set.sync()
        self.kv_total = router.core.slot(0).kv_total
        for rid in (0, 1):  # warm at time 0, as the simulator's starting plan
            router.replicas[rid].healthy = True
        # One scrape at time 0 found every engine idle; the third is not healthy yet.
        # (A replica never scraped looks saturated to the live router: that rule is
        # the scraper's, and the simulator's engines are never unreachable.)
        for rid in (0, 1, 2):
            self._metrics(rid, (0, 0, 0))
        self.waiters: dict[int, asyncio.Task] = {}
        self.requests: dict[int, Request] = {}

    @property
    def core(self) -> RoutingCore:
        return self.router.core

    def at(self, t: float) -> None:
        self.now = t

    def _metrics(self, rid: int, values: tuple[int, int, int]) -> None:
        running, waiting, used = values
        total = self.router.replica_set.menu()[H1].kv_blocks
        self.router.scraper.latest[rid] = EngineMetrics(
            running=running, waiting=waiting, kv_usage=used / total, kv_blocks_total=total,
            at=self.now,
        )  # fmt: skip

    async def arrive(self, i: int, request: Request) -> None:
        self.requests[i] = request
        self.waiters[i] = asyncio.create_task(self.router.dispatch.route(request, NO_EXCLUSIONS))
        await _settle()

    async def finish_oldest(self) -> None:
        if not self.dispatched():
            return
        i = min(self.dispatched())
        replica, _ = self.waiters.pop(i).result()
        self.router.dispatch.release(replica, self.requests[i])
        await _settle()

    async def snapshot(self, values: dict[int, tuple[int, int, int]]) -> None:
        for rid, v in values.items():
            self._metrics(rid, v)
        self.router.scraper.on_round()  # what the scraper calls after each round
        await _settle()

    async def ready(self, rid: int) -> None:
        self.router.replicas[rid].healthy = True
        self._metrics(rid, (0, 0, 0))
        self.router.dispatch.drain()  # the end of the monitoring tick that found it healthy
        await _settle()

    async def tick(self) -> None:
        self.router.dispatch.drain()
        await _settle()

    def dispatched(self) -> dict[int, int]:
        return {i: task.result()[0] for i, task in self.waiters.items() if task.done()}


async def _settle() -> None:
    for _ in range(3):  # let woken waiters run
        await asyncio.sleep(0)


def held_ids(core: RoutingCore) -> list[int]:
    return [entry.request.id for entry in core.held]


async def replay(
    sim: SimulatorSide, live: RouterSide, events: list[tuple], specs: list[dict], after_event
) -> None:
    """Feed every scripted event to both hosts, at the script's time; check after each."""
    await live.start()
    try:
        for kind, t, arg in events:
            sim.at(t)
            live.at(t)
            if kind == "arrive":
                sim.arrive(arg, request_of(arg, specs[arg]))
                await live.arrive(arg, request_of(arg, specs[arg]))
            elif kind == "finish":
                sim.finish_oldest()
                await live.finish_oldest()
            elif kind == "snapshot":
                sim.snapshot(arg)
                await live.snapshot(arg)
            elif kind == "ready":
                sim.ready(arg)
                await live.ready(arg)
            else:
                sim.tick()
                await live.tick()
            if after_event(kind, t):
                return
    finally:
        for task in live.waiters.values():
            task.cancel()


def test_router_and_simulator_make_identical_decisions(monkeypatch):
    drained: set[int] = set()
    drain = RoutingCore.drain

    def spy(self, now, decide):
        drained.add(id(self))
        return drain(self, now, decide)

    monkeypatch.setattr(RoutingCore, "drain", spy)
    events, specs = script()
    sim = SimulatorSide(SELECTIVE, specs, monkeypatch)
    live = RouterSide(SELECTIVE)
    trace: list[tuple[str, list[int]]] = []

    def same_state(kind: str, t: float) -> bool:
        assert held_ids(sim.core) == held_ids(live.core), f"hold queues differ after {kind}@{t}"
        assert sim.dispatched() == live.dispatched(), f"dispatches differ after {kind}@{t}"
        trace.append((kind, held_ids(sim.core)))
        return False

    asyncio.run(replay(sim, live, events, specs, same_state))
    assert {id(sim.core), id(live.core)} <= drained, "a host drained without the core"
    calls, live_calls = sim.policy.module.CALLS, live.policy.module.CALLS
    assert len(calls) == len(live_calls) > 60
    for a, b in zip(calls, live_calls, strict=True):
        assert a == b, f"route() saw or answered differently:\n{a}\n{b}"

    # The script exercised what it is for: a deep hold queue, requests dispatched past
    # older held ones, a drain that stopped after SKIP_AHEAD held, a time-based hold.
    assert max(len(held) for _, held in trace) >= SKIP_AHEAD + 2
    answers: dict[int, list] = {}
    for rid, _, _, choice in calls:
        answers.setdefault(rid, []).append(choice)
    late = next(i for i, s in enumerate(specs) if s["session"] == "late")
    assert answers[late][0] is None and answers[late][-1] is not None
    assert sum(1 for a in answers.values() if a[0] is None and a[-1] is not None) >= SKIP_AHEAD
    offers: dict[float, list] = {}
    for _, now, _, choice in calls:
        offers.setdefault(now, []).append(choice)
    assert any(len(o) == SKIP_AHEAD + 1 and set(o) == {None} for o in offers.values())
    assert trace[-1][1] == []  # everyone was served in the end


@pytest.mark.parametrize("host", ["router", "simulator"])
def test_the_crosscheck_fails_when_a_host_drains_its_own_way(monkeypatch, host):
    """Head-of-line blocking on one side only (the old simulator rule) must be caught."""
    events, specs = script()
    sim = SimulatorSide(SELECTIVE, specs, monkeypatch)
    live = RouterSide(SELECTIVE)
    deviant = sim.core if host == "simulator" else live.core
    original = RoutingCore.drain

    def drain(self, now, decide):
        if self is not deviant:
            return original(self, now, decide)
        self.skip_ahead = 0  # stop at the first held request
        try:
            return original(self, now, decide)
        finally:
            self.skip_ahead = SKIP_AHEAD

    monkeypatch.setattr(RoutingCore, "drain", drain)
    differ: list[str] = []

    def compare(kind: str, t: float) -> bool:
        if held_ids(sim.core) != held_ids(live.core):
            differ.append(f"{kind}@{t}")
        return bool(differ)

    asyncio.run(replay(sim, live, events, specs, compare))
    assert differ
