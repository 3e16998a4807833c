"""The replay stage (a policy routes a scenario slice through the live router on engines),
and its place in the cascade as the confirmation stage.

Agreement tolerance (test_replay_agrees_with_the_simulator_on_a_slice): the first 100
requests of bursty-code (seed 1: they arrive over 17.5 s; seed 0's arrive in a 1.1 s
burst, ~90 req/s, which on two shared cores measures the CPUs, not the policy) on two
simulated H100 engines, time scale 0.5, least_outstanding. On the 2-core development
machine under a load average of 3.3-3.6 (other work running), eight runs at time scales
0.25 and 0.5 measured TTFT means 3-14 % and E2E means 1-7 % above the simulator's, SLO
attainment equal or one request apart: the HTTP path costs a few milliseconds the
simulator does not charge. When the CPUs cannot keep up (time scale 0.1-0.15 there) TTFT
came out 100-240 % high. The bounds below sit about three times above the worst
agreeing run and far below that breakdown, and would catch a time-scale conversion error
(a factor of 2 at this scale).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from flows.evolution import selection
from flows.evolution.archive import Archive, Candidate
from flows.evolution.cascade import Cascade, Outcome
from flows.evolution.config import ConfirmStage, EvolutionConfig, Suite
from flows.evolution.journal import Journal
from sandbox.backends import MARKER_ENV, leftover_processes
from sandbox.replay.engines import EngineTarget, engines_cluster
from sandbox.replay.loadgen import Result
from sandbox.replay.stage import (
    ReplayRequest,
    agreement,
    measured,
    run,
    scenario_slice,
    summary_of,
)
from sandbox.replay.worker import run_isolated
from sandbox.scenario_spec import ClusterEvent, ClusterSpec, Scenario
from sandbox.workload import Workload
from serving.contract import Plan, ReplicaSpec
from serving.fleet import LocalFleet, free_port
from serving.policy_loader import builtin_source

LO = builtin_source("least_outstanding")
RAISES = "def route(request, replicas, now):\n    raise RuntimeError('candidate bug')\n"
HANGS = "def route(request, replicas, now):\n    while True:\n        pass\n"


def _children() -> list[int]:
    """Live (non-zombie) child processes of this one."""
    me, out = str(os.getpid()), []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                out.append(int(p.name))
    return out


@pytest.fixture
def marker(monkeypatch):
    """Tags every process the test starts; none may be alive afterwards."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(MARKER_ENV, tag)
    yield tag
    deadline = time.monotonic() + 3.0
    while (
        left := [p for p in leftover_processes(tag) if p != os.getpid()]
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], f"processes left behind: {left}"


def test_replay_agrees_with_the_simulator_on_a_slice(marker):
    req = ReplayRequest(
        LO,
        "bursty-code",
        name="least_outstanding",
        seed=1,
        requests=100,
        target=EngineTarget(time_scale=0.5),
        wall_s=120.0,
    )
    res = run_isolated(req)
    assert res.ok, f"{res.stage}: {res.error}"
    assert res.engine_kind == "simulated" and len(res.engines) == 2
    assert res.summary.keys() == res.simulated.keys()  # the simulator's summary, measured
    s = res.summary
    assert s["requests"] == 100 and s["completed"] == 100 and res.failures == 0
    assert res.faults == 0 and res.scenario == "bursty-code[:100]"
    assert 0 < s["ttft_p50_s"] <= s["ttft_p99_s"] and 0 < s["ttft_mean_s"] < s["e2e_mean_s"]
    assert 0 < s["tpot_mean_s"] < 0.5 and math.isnan(s["queue_mean_s"])
    assert s["objective"] == pytest.approx(s["slo_attainment"], abs=1e-4)
    a = res.agreement
    assert -0.15 < a["ttft_mean_s_rel"] < 0.40, a
    assert -0.10 < a["e2e_mean_s_rel"] < 0.25, a
    assert abs(a["slo_attainment_diff"]) <= 0.05, a


def _new_children(before: set[int], grace_s: float = 3.0) -> set[int]:
    # Other tests' children (a warm sandbox pool, Prefect's server) may be alive: only
    # the ones started since `before` count, and engines get a moment to exit.
    deadline = time.monotonic() + grace_s
    while (new := set(_children()) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    return new


def test_a_policy_that_raises_falls_back_and_still_returns():
    before = set(_children())
    res = run(
        ReplayRequest(
            RAISES,
            "bursty-code",
            name="raises",
            scale=0.2,
            requests=20,
            target=EngineTarget(time_scale=0.25),
        )
    )
    assert res.ok, f"{res.stage}: {res.error}"
    assert res.failures == 0 and res.summary["completed"] == 20
    # The router's fallback routed them; after five failures in a row it demoted the policy.
    assert res.fallbacks["exception"] >= 1 and res.demotions == 1 and res.faults >= 1
    assert "RuntimeError" in res.sim_error and res.simulated == {}
    assert _new_children(before) == set()


def test_an_unreachable_engine_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    res = run(
        ReplayRequest(LO, "bursty-code", scale=0.2, requests=5, target=EngineTarget.parse(url))
    )
    assert not res.ok and res.stage == "engines"
    assert url in res.error and "unreachable" in res.error
    assert time.monotonic() - t0 < 20


def test_engines_at_urls_are_replayed_as_they_are():
    async def up() -> LocalFleet:
        fleet = LocalFleet(Plan((ReplicaSpec("H100"),)), start_timeout_s=30)
        await fleet.start()
        return fleet

    fleet = asyncio.run(up())
    try:
        urls = tuple(e.url for e in fleet.engines())
        res = run(
            ReplayRequest(
                LO,
                "bursty-code",
                scale=0.2,
                requests=20,
                target=EngineTarget(kind="urls", urls=urls),
            )
        )
        assert res.ok, f"{res.stage}: {res.error}"
        assert res.engine_kind == "urls" and tuple(res.engines) == urls
        assert res.failures == 0 and res.summary["completed"] == 20
        # The simulator predicted for the same one engine, not the scenario's two.
        assert abs(res.agreement["e2e_mean_s_rel"]) < 0.5
    finally:
        asyncio.run(fleet.close())


def test_engines_at_urls_form_the_cluster_the_simulator_is_given():
    two = _tiny().cluster
    three = engines_cluster(EngineTarget.parse("http://a:1,http://b:2,http://c:3"), two)
    assert three.plan.replicas == (ReplicaSpec("H100"),) * 3 and dict(three.gpus) == {"H100": 3}
    assert engines_cluster(EngineTarget.parse("http://a:1,http://b:2"), two) is two
    assert engines_cluster(EngineTarget(), two) is two


def test_a_stage_past_its_limit_is_stopped_with_its_engines(marker):
    req = ReplayRequest(
        LO, "bursty-code", scale=0.2, requests=200, target=EngineTarget(time_scale=1.0), wall_s=6.0
    )
    t0 = time.monotonic()
    res = run_isolated(req, grace_s=5.0)
    assert not res.ok and res.stage == "timeout" and "6 s" in res.error
    assert time.monotonic() - t0 < 15


def test_a_policy_that_never_returns_cannot_hang_the_stage(marker):
    req = ReplayRequest(HANGS, "bursty-code", scale=0.2, requests=20, wall_s=4.0)
    t0 = time.monotonic()
    res = run_isolated(req, grace_s=2.0)
    assert not res.ok and res.stage == "timeout"
    assert time.monotonic() - t0 < 10


def _tiny() -> Scenario:
    n = 6
    w = Workload(
        arrival_s=np.array([5.0, 5.5, 6.0, 7.0, 9.0, 12.0]),
        prompt_tokens=np.full(n, 100, dtype=np.int64),
        output_tokens=np.full(n, 10, dtype=np.int64),
        max_tokens=np.full(n, 10, dtype=np.int64),
        name="tiny",
    )
    cluster = ClusterSpec("llama-3-8b", {"H100": 2}, Plan((ReplicaSpec("H100"),) * 2))
    events = (ClusterEvent(6.5, "fail_replica", replica=0), ClusterEvent(30.0, "add_gpus"))
    return Scenario("tiny", "", w, cluster, events)


def test_a_slice_starts_at_its_first_request_and_leaves_events_out():
    part, dropped = scenario_slice(_tiny(), requests=4, seconds=None)
    assert part.workload.arrival_s.tolist() == [0.0, 0.5, 1.0, 2.0]
    assert part.events == () and dropped == 1 and part.name == "tiny[:4]"
    part, _ = scenario_slice(_tiny(), requests=None, seconds=9.5)
    assert len(part.workload) == 5


def test_measurements_are_converted_to_model_seconds():
    ok = Result(at=0.0, ok=True, status=200, ttft_s=0.05, tpot_s=0.01, e2e_s=0.2, tokens=10)
    too_long = Result(at=0.1, ok=False, status=400, error="HTTP 400")
    s = summary_of(measured(scenario_slice(_tiny(), 2, None)[0], "p", [ok, too_long], 0.5, 0.0))
    assert s["ttft_mean_s"] == pytest.approx(0.1) and s["e2e_mean_s"] == pytest.approx(0.4)
    assert s["completed"] == 1 and s["slo_attainment"] == 0.5
    a = agreement({"ttft_mean_s": 0.08, "slo_attainment": 0.5, "objective": 0.5}, s)
    assert a["ttft_mean_s_rel"] == pytest.approx(0.25) and a["slo_attainment_diff"] == 0.0


def test_engine_targets_parse_and_refuse_what_cannot_work():
    assert EngineTarget.parse("simulated").kind == "simulated"
    t = EngineTarget.parse("http://a:1/, http://b:2")
    assert t.kind == "urls" and t.urls == ("http://a:1", "http://b:2")
    for bad in ("ftp://a", ""):
        with pytest.raises(ValueError):
            EngineTarget.parse(bad)
    with pytest.raises(ValueError, match="real time"):
        EngineTarget.parse("http://a:1", time_scale=0.5)
    with pytest.raises(ValueError, match="model and GPU ids"):
        EngineTarget.parse("vllm-docker")


# --------------------------------------------------------------------------- in the cascade
def _confirming(**kw) -> EvolutionConfig:
    return EvolutionConfig(
        quick=Suite(("bursty-code",), (0,), 0.2),
        full=None,
        confirm=ConfirmStage(**{"top_k": 2, "requests": 20, "time_scale": 0.25, **kw}),
    )


def test_the_cascade_confirms_through_the_worker_and_journals_it(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    cascade = Cascade(_confirming(), journal)
    try:
        good, bad = cascade.confirm([LO, RAISES])
        assert good.ok and 0 < good.objective <= 1 and not good.cached
        assert good.summaries[0]["requests"] == 20
        assert bad.objective is None and bad.stage == "confirm:fault"
        assert "failed" in bad.reason and bad.results[0]["fallbacks"]["exception"] >= 1
        again = cascade.confirm([LO, RAISES])  # a resumed run takes both from the journal
        assert [o.cached for o in again] == [True, True]
        assert again[0].objective == good.objective
    finally:
        cascade.close()
        journal.close()


def _cand(cid: str, quick: float, origin: str = "tune") -> Candidate:
    return Candidate(cid, f"# {cid}\n{LO}", cid, cid, 1, 0, origin, quick=quick)


@pytest.mark.parametrize(
    ("top_k", "b_replayed", "expected"),
    [
        (0, 0.88, "g001-s000"),  # stage off: the simulator's best
        (2, 0.88, "g001-s001"),  # A faulted on the router; B confirmed within tolerance
        (2, 0.80, None),  # B trails the champion's replay by more than the tolerance
    ],
)
def test_the_challenger_is_what_the_replay_confirmed(tmp_path, top_k, b_replayed, expected):
    cfg = _confirming(top_k=top_k)
    archive = Archive(cfg.islands, cfg.min_gain)
    champ = _cand("g000-s000", 0.80, "seed:least_outstanding")
    a, b, c = _cand("g001-s000", 0.90), _cand("g001-s001", 0.85), _cand("g001-s002", 0.84)
    for x in (champ, a, b, c):
        archive.record(x)
    replayed = {
        champ.source: Outcome(0.85),
        a.source: Outcome(None, stage="confirm:fault", reason="route() raised"),
        b.source: Outcome(b_replayed),
    }
    asked: list[str] = []

    class Replayer:  # the cascade's replay stage, answered from the table above
        def confirm(self, sources):
            asked.extend(sources)
            return [replayed[s] for s in sources]

    if top_k:
        selection.confirm_stage(cfg, archive, champ, Replayer(), None)
        assert asked == [champ.source, a.source, b.source]  # the top 2, not c
        assert a.confirmed is None and a.confirmation["verdict"].startswith("confirm:fault")
    chal = selection.challenger(cfg, archive, champ)
    assert (chal.id if chal else None) == expected


def test_the_evolve_flow_takes_the_stage_as_json_settings():
    from flows.evolve_steps import confirm_stage

    stage = confirm_stage({"top_k": 2, "target": "simulated", "gpu_ids": ["0", "1"]})
    assert stage == ConfirmStage(top_k=2, target="simulated", gpu_ids=("0", "1"))
    assert confirm_stage({}) == ConfirmStage()
    with pytest.raises(ValueError, match=r"unknown setting.*topk"):
        confirm_stage({"topk": 2})
