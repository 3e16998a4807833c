"""Fleets: the Docker spec (no Docker needed), local subprocess engines, static URLs."""

from __future__ import annotations

import asyncio
import os
import uuid

import aiohttp
import pytest

from sandbox.backends import MARKER_ENV, leftover_processes
from serving.contract import Plan, ReplicaSpec
from serving.fleet import DockerVllmFleet, LocalFleet, StaticFleet


def test_docker_container_spec_requests_exact_gpus():
    fleet = DockerVllmFleet(Plan((ReplicaSpec("H100", 2),)), model="meta-llama/Llama-3-8B",
                            gpu_ids={"H100": ["0", "1", "2", "3"]}, hf_cache="/models")
    spec = fleet.container_spec(ReplicaSpec("H100", 2), 18001, ["2", "3"])
    assert spec["image"].startswith("vllm/vllm-openai")
    assert spec["command"][:4] == ["--model", "meta-llama/Llama-3-8B",
                                   "--tensor-parallel-size", "2"]
    assert spec["ports"] == {"8000/tcp": ("127.0.0.1", 18001)}
    assert spec["device_requests"] == [{"Driver": "nvidia", "DeviceIDs": ["2", "3"],
                                        "Capabilities": [["gpu"]]}]
    assert spec["ipc_mode"] == "host"
    assert spec["volumes"]["/models"]["bind"] == "/root/.cache/huggingface"
    assert fleet.gpus_available() == {"H100": 4}


def test_static_fleet_changes_only_weights_and_admission():
    fleet = StaticFleet(["http://127.0.0.1:1", "http://127.0.0.1:2"])
    asyncio.run(fleet.apply(Plan((ReplicaSpec("A100"),), (0.3, 0.7), 5), lambda _: True))
    plan = fleet.plan()
    assert len(plan.replicas) == 2 and plan.replicas[0].gpu == "H100"
    assert plan.weights == (0.3, 0.7) and plan.admission_limit == 5
    mixed = StaticFleet(["http://a:1", "http://b:2"], (ReplicaSpec("H100"), ReplicaSpec("A100")))
    assert [e.spec.gpu for e in mixed.engines()] == ["H100", "A100"]
    assert mixed.gpus_available() == {"H100": 1, "A100": 1}
    with pytest.raises(ValueError, match="2 engine URLs but 1"):
        StaticFleet(["http://a:1", "http://b:2"], [ReplicaSpec("H100")])


def test_local_fleet_starts_scales_and_stops_engines():
    async def main():
        fleet = LocalFleet(Plan((ReplicaSpec("H100"),)),
                           engine_args=["--fake-itl-s", "0.001"], start_timeout_s=30)
        await fleet.start()
        try:
            (e,) = fleet.engines()
            assert e.state == "serving"
            async with aiohttp.ClientSession() as s, s.get(f"{e.url}/health") as r:
                assert r.status == 200
            await fleet.apply(Plan((ReplicaSpec("H100"), ReplicaSpec("H100"))), lambda _: True)
            for _ in range(200):
                if len(fleet.engines()) == 2:
                    break
                await asyncio.sleep(0.05)
            assert [x.state for x in fleet.engines()] == ["serving", "serving"]
            await fleet.apply(Plan((ReplicaSpec("H100"),)), lambda _: True)
            for _ in range(100):
                if len(fleet.engines()) == 1:
                    break
                await asyncio.sleep(0.05)
            assert len(fleet.engines()) == 1
        finally:
            procs = [x.ref for x in fleet.engines()]
            await fleet.close()
            assert all(p.poll() is not None for p in procs)

    asyncio.run(main())


def test_local_fleet_that_fails_to_start_leaves_no_engine(monkeypatch):
    tag = uuid.uuid4().hex
    monkeypatch.setenv(MARKER_ENV, tag)  # inherited by every engine process

    async def main():
        fleet = LocalFleet(Plan((ReplicaSpec("H100"), ReplicaSpec("Z100"))), start_timeout_s=30)
        with pytest.raises(RuntimeError, match="did not become healthy"):
            await fleet.start()
        assert fleet.engines() == []

    asyncio.run(main())
    assert [p for p in leftover_processes(tag) if p != os.getpid()] == []
