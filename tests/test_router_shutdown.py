"""Stopping the router with requests in its hold queue: every one answered and logged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from serving.engine_server import EngineServer, EngineServerConfig
from serving.fleet import StaticFleet, free_port
from serving.policy_loader import load_policy
from serving.policy_runtime import PolicyRuntime
from serving.router import RouterConfig
from serving.serve import start_router
from serving.telemetry import read_telemetry

HOLD_ALL = """
from serving.contract import HOLD

def route(request, replicas, now):
    return HOLD
"""
HELD = 3
COMPLETION = {"model": "llama-3-8b", "prompt": "hello", "max_tokens": 4, "stream": True}


async def _engine() -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(EngineServer(EngineServerConfig(fake_itl_s=0.002)).app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def _held_then_stopped(telemetry: Path, direct: bool) -> list[int | str]:
    """Statuses the clients of ``HELD`` held requests got when the router stopped."""
    engine, url = await _engine()
    # A hold timeout far past the test's length: only the stop can end the holds.
    config = RouterConfig(
        telemetry_dir=telemetry, scrape_interval_s=0.1, monitor_interval_s=0.1, hold_timeout_s=600.0
    )
    running = await start_router(StaticFleet([url]), PolicyRuntime(load_policy(HOLD_ALL)), config)
    router = running.router

    async def client(session: aiohttp.ClientSession) -> int | str:
        try:
            async with session.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                await r.read()
                return r.status
        except aiohttp.ClientError as e:
            return type(e).__name__

    try:
        async with aiohttp.ClientSession() as session:
            clients = [asyncio.create_task(client(session)) for _ in range(HELD)]
            for _ in range(200):
                if len(router.core.held) == HELD:
                    break
                await asyncio.sleep(0.02)
            assert len(router.core.held) == HELD
            if direct:  # what the app's cleanup calls; close() below calls it again
                await asyncio.wait_for(router.stop(), 10)
            await asyncio.wait_for(running.close(), 10)
            return await asyncio.wait_for(asyncio.gather(*clients), 10)
    finally:
        await engine.cleanup()


@pytest.mark.parametrize("direct", [False, True], ids=["close", "stop"])
def test_stopping_answers_and_logs_every_held_request(tmp_path, direct):
    statuses = asyncio.run(_held_then_stopped(tmp_path, direct))
    assert statuses == [503] * HELD  # an answer, not a dropped connection
    rows = read_telemetry(tmp_path)
    assert len(rows) == HELD
    assert set(rows["status"]) == {"rejected"}
    assert rows["request_id"].nunique() == HELD
