"""A live cluster in this process: engines, the router and its admin API, with telemetry.

What the closed-loop demo and its tests serve traffic through: simulated vLLM engines
in this event loop, or real llama.cpp engines as processes, behind the live router.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class LiveCluster:
    """Engines + router + admin API in this event loop, with telemetry.

    ``engines="simulated"``: one simulated vLLM engine per GPU, in this process;
    ``"llamacpp"``: as many real llama.cpp engines (``serving.llamacpp``, processes).
    """

    def __init__(self, gpus: tuple[str, ...], time_scale: float, telemetry_dir: Path,
                 admin_token: str = "demo-admin-token", hold_timeout_s: float = 30.0,
                 engines: str = "simulated") -> None:
        self.hold_timeout_s = hold_timeout_s
        self.gpus, self.time_scale, self.telemetry_dir = gpus, time_scale, telemetry_dir
        self.admin_token = admin_token
        self.engines = engines
        self._runners: list[Any] = []
        self._fleet: Any = None
        self.running: Any = None

    async def _simulated_fleet(self) -> Any:
        from aiohttp import web

        from serving.engine_server import EngineServer, EngineServerConfig
        from serving.fleet import StaticFleet, free_port

        urls = []
        for gpu in self.gpus:
            srv = EngineServer(EngineServerConfig(gpu=gpu, time_scale=self.time_scale))
            runner = web.AppRunner(srv.app(), access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self._runners.append(runner)
            urls.append(f"http://127.0.0.1:{port}")
        return StaticFleet(urls)

    async def start(self, policy_source: str, version: str, name: str) -> None:
        from serving.llamacpp import LlamaCppFleet
        from serving.policy_loader import load_policy
        from serving.policy_runtime import PolicyRuntime
        from serving.router import RouterConfig
        from serving.serve import start_router

        if self.engines == "llamacpp":
            self._fleet = LlamaCppFleet(len(self.gpus),
                                        log_dir=self.telemetry_dir.parent / "engine-logs")
            await self._fleet.start()
            fleet = self._fleet
        else:
            fleet = await self._simulated_fleet()
        runtime = PolicyRuntime(load_policy(policy_source, name=name), version=version)
        self.running = await start_router(
            fleet, runtime,
            RouterConfig(telemetry_dir=self.telemetry_dir, scrape_interval_s=0.25,
                         monitor_interval_s=1.0, hold_timeout_s=self.hold_timeout_s,
                         reschedule=False),
            admin_token=self.admin_token,
        )

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def admin_url(self) -> str:
        return self.running.admin_url

    async def close(self) -> None:
        if self.running is not None:
            await self.running.close()
        for r in self._runners:
            await r.cleanup()
        if self._fleet is not None:
            await self._fleet.close()
