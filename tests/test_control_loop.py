"""The control plane end to end: deployments, registry aliases, the loop, rollback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prefect_support import offline_prefect

from serving.policy_loader import builtin_source

HOLD_ALL = """
from serving.contract import HOLD, Param, ReplicaView, Request

PARAMS: dict[str, Param] = {}


def route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None:
    return HOLD
"""


@pytest.fixture(scope="module", autouse=True)
def prefect_env(tmp_path_factory):
    with offline_prefect(tmp_path_factory.mktemp("prefect")):
        yield


def test_deployments_listed_with_schedules_and_registry_aliases(tmp_path: Path):
    from prefect.client.orchestration import get_client

    from flows import deploy
    from flows.registry import CHALLENGER, CHAMPION, PolicyRegistry, RegistryError

    deploy.apply(deploy.deployments(str(tmp_path / "tel"), str(tmp_path / "state"), 120))
    with get_client(sync_client=True) as client:
        deps = {d.name: d for d in client.read_deployments()}
    assert {"pull-telemetry", "evolve", "promote"} <= set(deps)
    pull_sched = deps["pull-telemetry"].schedules[0].schedule
    assert pull_sched.interval.total_seconds() == 120
    assert deps["evolve"].schedules[0].schedule.cron == "0 3 * * *"

    reg = PolicyRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    v1 = reg.register_source(builtin_source("round_robin"), "round_robin", alias=CHAMPION)
    v2 = reg.register_source(builtin_source("least_outstanding"), "lo", alias=CHALLENGER)
    seen = {v["version"]: v["aliases"] for v in reg.versions()}
    assert seen == {v1: [CHAMPION], v2: [CHALLENGER]}
    got = reg.fetch(CHAMPION)
    assert got.version == v1 and got.source == builtin_source("round_robin")
    # A source whose hash no longer matches its tag is refused.
    reg.tag(v2, "source_sha256", "0" * 64)
    with pytest.raises(RegistryError, match="hashes to"):
        reg.fetch(v2)


def test_regression_after_promotion_rolls_back_router_and_alias(tmp_path: Path):
    from flows.control_state import read_events
    from flows.demo_traffic import shots
    from flows.live import AdminClient, WatchConfig, watch
    from flows.live_cluster import LiveCluster
    from flows.promote_steps import make_rollback
    from flows.registry import CHAMPION, PolicyRegistry
    from sandbox.replay.loadgen import run_load

    reg = PolicyRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    v1 = reg.register_source(builtin_source("least_outstanding"), "lo", alias=CHAMPION)
    v2 = reg.register_source(HOLD_ALL, "hold_all")
    tel = tmp_path / "tel"
    cluster = LiveCluster(("H100", "H100"), 0.05, tel, hold_timeout_s=0.3)

    async def main() -> dict:
        await cluster.start(builtin_source("least_outstanding"), v1, "lo")
        try:
            await run_load(cluster.url, shots("conv", 20, 0, 2.0, 0), timeout_s=30)
            admin = AdminClient(cluster.admin_url, cluster.admin_token)
            swapped = time.time()
            await asyncio.to_thread(admin.load, reg.fetch(v2))  # the "promotion"
            reg.set_alias(CHAMPION, v2)
            load = asyncio.create_task(
                run_load(cluster.url, shots("conv", 20, 0, 3.0, 1), timeout_s=30)
            )
            cfg = WatchConfig(dwell_s=8.0, poll_s=0.5, min_requests=10)
            rb = make_rollback(admin, reg, v2, v1, tmp_path / "state")
            res = await asyncio.to_thread(watch, tel, v2, v1, swapped, cfg, rb)
            await load
            res["router"] = await asyncio.to_thread(admin.policy)
            return res
        finally:
            await cluster.close()

    res = asyncio.run(main())
    assert res["rolled_back"], res
    assert res["before"]["slo_attainment"] > 0.9 and res["after"]["slo_attainment"] < 0.5
    assert res["router"]["current"]["version"] == v1
    assert reg.version_of(CHAMPION) == v1
    assert [e["event"] for e in read_events(tmp_path / "state")] == ["rolled_back"]


def test_closed_loop_with_scripted_llm(tmp_path: Path):
    from llm_double import LLMDouble, fenced

    from flows.demo import run_demo
    from flows.demo_traffic import DemoConfig
    from flows.registry import CHAMPION, PolicyRegistry

    answer = fenced(builtin_source("least_outstanding"))
    with LLMDouble(lambda user: [{"content": answer}]) as llm:
        # A load-blind starting champion, so that the scripted answer is a real improvement:
        # this checks the loop's mechanics (the demo itself starts from the best baseline).
        out = run_demo(
            DemoConfig(
                workdir=tmp_path,
                conv_s=20.0,
                code_s=45.0,
                pull_every_s=6.0,
                dwell_s=3.0,
                llm_base_url=llm.url,
                population=1,
                champion="round_robin",
            ),
            log=lambda m: None,
        )
    assert out["control_error"] is None, out["control_error"]
    assert out["drift_detected_s"] is not None and out["drift_detected_s"] > 0
    assert out["promoted_version"] is not None, out["events"]
    assert PolicyRegistry(out["tracking_uri"]).version_of(CHAMPION) == out["promoted_version"]
    # Beside before/after: the best static baseline for the new traffic, replayed live on
    # the same requests, and a verdict metric by metric.
    static = out["best_static"]
    assert static["name"] != "round_robin" and static["metrics"]["requests"] > 0
    if out["after"]:  # a swap in the last seconds leaves no "after"; then all code traffic
        assert static["metrics"]["requests"] == out["after"]["requests"]
    v = out["verdict"]["live_vs_best_static"]
    assert len(v["better"]) + len(v["worse"]) + len(v["unchanged"]) == 5 and not v["missing"]
    kinds = [e["event"] for e in out["events"]]
    assert kinds[:4] == ["drift", "evolved", "promoted", "swapped"]
    assert llm.calls  # the proposer asked the scripted server
    # Evolution replayed the pulled window itself (and its variants) plus the guards.
    evolved = next(e for e in out["events"] if e["event"] == "evolved")
    variants = [s.rsplit(":", 1)[1] for s in evolved["scenarios"] if s.startswith("window:")]
    # (gpu-loss joins from three replicas on; the demo's fleet has two)
    assert variants == ["replay", "rate-1.5x", "burst"], evolved["scenarios"]
    assert list(tmp_path.glob("state-*/windows/*.parquet"))
    # Promotion judged on the held-back (newest) part of the window, not the evolved-on part.
    promoted = next(e for e in out["events"] if e["event"] == "promoted")
    learned = {s.split(":")[1] for s in evolved["scenarios"] if s.startswith("window:")}
    judged = {s.split(":")[1] for s in promoted["scenarios"] if s.startswith("window:")}
    assert judged and learned and judged.isdisjoint(learned), (evolved, promoted)
