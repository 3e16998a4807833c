"""The live router: OpenAI-compatible, policy-driven, streaming pass-through.

Each request is parsed once (prompt bytes -> token estimate and prefix block
hashes), routed by the current policy through the decision core the simulator
runs too (``serving.routing``: replica views from the scraper's engine metrics
and the router's exact accounting, admission, the hold queue and its drain rule,
choice and plan checks), forwarded with its original bytes, and its response
relayed piece by piece as it arrives -- the router never re-encodes what an
engine streams. Every request, failed or not, becomes a telemetry row. What is
the router's own: HTTP, health, retries on another replica, relaying, telemetry.

The server side is aiohttp (measured against Starlette/uvicorn + httpx, it adds
several times less latency per request); requests to engines go through
``serving.upstream``, whose connections hand each streamed piece straight to the
client's socket (docs/router-http-stack.md has the measurements behind both).

One job per module; ``Router`` here wires them and owns the lifecycle and endpoints:

- ``router_replicas``: the replica set -- follows the fleet, probes health, tells the
  routing core each replica's state and engine metrics;
- ``router_dispatch``: a request routed -- the policy's ``route()`` (filters ->
  scorers -> picker in the kit) through the runtime and the core, held requests
  parked and re-offered;
- ``router_proxy``: the completions proxy -- parse, forward, retry, relay;
- ``router_monitor``: the monitoring tick -- fleet, health, ``reschedule`` -> plan;
- ``router_telemetry``: telemetry rows, snapshots, recent traffic, ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from serving import prom
from serving.accounting import RouterAccounting
from serving.contract import ClusterView
from serving.fleet import Fleet
from serving.metrics_adapter import Scraper
from serving.policy_runtime import PolicyRuntime
from serving.router_dispatch import Dispatcher
from serving.router_monitor import Monitor
from serving.router_proxy import VERSION_HEADER, CompletionProxy
from serving.router_replicas import ReplicaSet, RouterReplica
from serving.router_telemetry import RouterTelemetry
from serving.routing import RoutingCore

__all__ = ["VERSION_HEADER", "Router", "RouterConfig"]

# Upstream failures that mean "this engine is gone", as opposed to an HTTP error it sent.
UPSTREAM_DOWN = (aiohttp.ClientConnectionError, ConnectionError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class RouterConfig:
    telemetry_dir: Path | None = None
    scrape_interval_s: float = 0.5
    stale_after_s: float = 3.0
    monitor_interval_s: float = 1.0
    route_budget_s: float = 0.002
    hold_timeout_s: float = 30.0
    upstream_timeout_s: float = 600.0
    model_name: str = ""
    """Reported by /v1/models when no engine answers; else the engines' list is relayed."""
    reschedule: bool = True


class Router:
    def __init__(
        self,
        fleet: Fleet,
        runtime: PolicyRuntime,
        config: RouterConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.runtime = runtime
        self.config = cfg = config or RouterConfig()
        self.clock = clock
        """The policies' ``now`` and the snapshots' ages (a seam for replayed time)."""
        self.core = RoutingCore(cfg.model_name)
        self.telemetry = RouterTelemetry(cfg.telemetry_dir)
        self.replica_set = ReplicaSet(fleet, self.core, cfg.model_name)
        # A fresh snapshot is a router event: held requests are offered again.
        self.scraper = Scraper(
            self.replica_set.targets,
            interval_s=cfg.scrape_interval_s,
            stale_after_s=cfg.stale_after_s,
            on_round=self._drain,
        )
        self.dispatch = Dispatcher(
            self.core,
            self.replica_set,
            self.scraper,
            runtime,
            clock,
            self.telemetry.route_time,
            cfg.hold_timeout_s,
        )
        self.proxy = CompletionProxy(
            self.dispatch, self.replica_set, self.telemetry, clock, cfg.upstream_timeout_s
        )
        self.monitor = Monitor(
            fleet=fleet,
            runtime=runtime,
            replicas=self.replica_set,
            scraper=self.scraper,
            telemetry=self.telemetry,
            clock=clock,
            drain=self._drain,
            interval_s=cfg.monitor_interval_s,
            reschedule=cfg.reschedule,
        )
        self._session: aiohttp.ClientSession | None = None
        """For probes and /v1/models; completions go through the proxy's upstream pool."""
        self._monitor: asyncio.Task | None = None

    @property
    def replicas(self) -> dict[int, RouterReplica]:
        return self.replica_set.replicas

    @property
    def accounting(self) -> RouterAccounting:
        return self.core.accounting

    # -- lifecycle -------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.on_startup.append(self._on_startup)
        # Shutdown runs before the server waits for its handlers, cleanup after: held
        # requests must be answered first, or the server waits out their hold timeout.
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        await self.start()

    async def _on_shutdown(self, _: web.Application) -> None:
        await self.dispatch.answer_held()

    async def _on_cleanup(self, _: web.Application) -> None:
        await self.stop()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s, connect=2.0),
            auto_decompress=False,  # pass bytes through untouched
        )
        self.proxy.start()
        self.replica_set.sync()
        await self.scraper.start()
        await self.replica_set.probe_health(self._session, self.scraper.ok)
        self._monitor = asyncio.create_task(self.monitor.run(self._session))

    async def stop(self) -> None:
        """Refuse new requests, answer the held ones, stop, then close the telemetry writer.

        Idempotent (the app's cleanup calls it too). Every held request is answered 503
        and logged as ``rejected`` before the writer closes.
        """
        await self.dispatch.answer_held()
        for task in (self._monitor, self.monitor.applying):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.scraper.stop()
        if self._session is not None:
            await self._session.close()
        self.proxy.close()
        self.telemetry.close()

    # -- replica set and monitoring ----------------------------------------------------
    def idle(self, replica_id: int) -> bool:
        return self.replica_set.idle(replica_id)

    def cluster_view(self) -> ClusterView:
        return self.monitor.cluster_view()

    def _drain(self) -> None:
        """The scraper's callback after each round (it is built before the dispatcher)."""
        self.dispatch.drain()

    # -- endpoints -------------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy.handle(request, "/v1/completions")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self.proxy.handle(request, "/v1/chat/completions")

    async def _models(self, _: web.Request) -> web.Response:
        assert self._session is not None
        for r in self.replicas.values():
            if r.down:
                continue
            with contextlib.suppress(*UPSTREAM_DOWN, aiohttp.ClientError):
                async with self._session.get(f"{r.handle.url}/v1/models") as resp:
                    if resp.status == 200:
                        return web.Response(body=await resp.read(), content_type="application/json")
        name = self.config.model_name or "unknown"
        return web.json_response(
            {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "autopoiesis"}]}
        )

    async def _health(self, _: web.Request) -> web.Response:
        ok = any(r.serves() for r in self.replicas.values())
        return web.json_response(
            {
                "status": "ok" if ok else "unavailable",
                "policy_version": self.runtime.current.version,
            },
            status=200 if ok else 503,
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self.render_metrics().encode(), headers={"Content-Type": prom.CONTENT_TYPE}
        )

    def render_metrics(self) -> str:
        return self.telemetry.render(
            self.runtime, self.replicas.values(), self.accounting, len(self.core.held)
        )
