"""The router's monitoring tick: a failing tick is logged once per kind, counted, survived."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from serving.engine_server import EngineServer, EngineServerConfig
from serving.fleet import StaticFleet, free_port
from serving.policy_loader import builtin_policy
from serving.policy_runtime import PolicyRuntime
from serving.router import RouterConfig
from serving.serve import start_router

COMPLETION = {"model": "llama-3-8b", "prompt": "hello", "max_tokens": 4, "stream": True}


class InventoryDownFleet(StaticFleet):
    """Fixed engines whose GPU inventory (asked on every tick) fails while ``down`` is set."""

    down: BaseException | None = None

    def gpus_available(self) -> dict[str, int]:
        if self.down is not None:
            raise self.down
        return super().gpus_available()


def _errors(metrics: str) -> dict[str, float]:
    out = {}
    for line in metrics.splitlines():
        if line.startswith("autopoiesis_monitor_errors_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


def test_failing_ticks_are_logged_once_per_kind_and_counted(caplog):
    async def main() -> tuple[dict[str, float], dict[str, float], dict[str, float], int]:
        srv = EngineServer(EngineServerConfig(fake_itl_s=0.002))
        runner = web.AppRunner(srv.app())
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        fleet = InventoryDownFleet([f"http://127.0.0.1:{port}"])
        running = await start_router(
            fleet,
            PolicyRuntime(builtin_policy("least_outstanding")),
            RouterConfig(scrape_interval_s=0.05, monitor_interval_s=0.05, model_name="llama-3-8b"),
        )
        try:
            await asyncio.sleep(0.3)
            healthy = _errors(running.router.render_metrics())
            fleet.down = RuntimeError("inventory API unreachable")
            await asyncio.sleep(0.4)
            fleet.down = KeyError("H100")
            await asyncio.sleep(0.4)
            fleet.down = None
            await asyncio.sleep(0.2)
            during = _errors(running.router.render_metrics())
            await asyncio.sleep(0.3)
            after = _errors(running.router.render_metrics())
            async with (
                aiohttp.ClientSession() as s,
                s.post(f"{running.url}/v1/completions", json=COMPLETION) as resp,
            ):
                await resp.read()
                status = resp.status
        finally:
            await running.close()
            await runner.cleanup()
        return healthy, during, after, status

    with caplog.at_level(logging.ERROR, logger="autopoiesis.router"):
        healthy, during, after, status = asyncio.run(main())
    assert healthy == {}
    assert set(during) == {"RuntimeError", "KeyError"}
    assert during["RuntimeError"] >= 3 and during["KeyError"] >= 3
    assert after == during  # the loop went on and stopped failing once the fleet recovered
    assert status == 200
    logged = [r for r in caplog.records if "monitor tick failed" in r.getMessage()]
    assert [r.getMessage().split("(", 1)[1].split(":", 1)[0] for r in logged] == [
        "RuntimeError",
        "KeyError",
    ]
    assert "inventory API unreachable" in logged[0].getMessage() and logged[0].exc_info
