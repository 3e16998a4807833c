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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from serving import prom
from serving.accounting import RouterAccounting
from serving.contract import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    ClusterView,
    Plan,
    ReplicaSpec,
    ReplicaView,
    Request,
)
from serving.engine_snapshots import SnapshotWriter
from serving.fleet import EngineHandle, Fleet
from serving.hardware import UnknownHardware
from serving.metrics_adapter import Scraper
from serving.planning import SpecCost, capacities, deployable_specs
from serving.policy_runtime import ActivePolicy, PolicyRuntime
from serving.prompt_tokens import BLOCK_TOKENS, count_tokens, prefix_hashes, prompt_bytes
from serving.recent_traffic import WindowTracker
from serving.relay import DeferredHeadersResponse, SseRelay, engine_token_counts
from serving.routing import NO_EXCLUSIONS, Held, RoutingCore, review_plan
from serving.telemetry import TelemetryRow, TelemetryWriter
from serving.upstream import Exchange, UpstreamError, UpstreamPool

log = logging.getLogger("autopoiesis.router")

VERSION_HEADER = "x-autopoiesis-policy-version"
DEFAULT_KV_BLOCKS = 16384
"""KV capacity assumed for a replica whose engine does not expose it."""
NEVER_SCRAPED_AGE_S = 1e9
"""``snapshot_age`` shown for a replica whose metrics never arrived."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0, 60.0)
ROUTE_BUCKETS = (1e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
# Upstream failures that mean "this engine is gone", as opposed to an HTTP error it sent.
UPSTREAM_DOWN = (aiohttp.ClientConnectionError, ConnectionError, OSError, asyncio.TimeoutError)
FORWARDED_HEADERS = ("Authorization", "x-request-id")
STREAM_ERROR_EVENT = b"data: " + json.dumps({"error": {
    "message": "upstream engine failed mid-stream", "type": "upstream_error",
    "code": 502}}).encode() + b"\n\n"


@dataclass
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


@dataclass(eq=False)
class _Replica:
    handle: EngineHandle
    down: bool = False
    """Unreachable (connection refused, scrape failed) since the last successful probe."""
    healthy: bool = False
    """``/health`` answered 200 at least once since coming up."""

    @property
    def id(self) -> int:
        return self.handle.id


class Router:
    def __init__(self, fleet: Fleet, runtime: PolicyRuntime,
                 config: RouterConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fleet = fleet
        self.runtime = runtime
        self.config = cfg = config or RouterConfig()
        self.clock = clock
        """The policies' ``now`` and the snapshots' ages (a seam for replayed time)."""
        self.core = RoutingCore(cfg.model_name)
        self._followed: Plan | None = None
        """The fleet plan whose weights and admission limit the core holds."""
        self._chosen_by: dict[int, ActivePolicy] = {}
        """Request id -> the policy version that routed it, until its waiter takes it."""
        self.replicas: dict[int, _Replica] = {}
        self.telemetry = TelemetryWriter(cfg.telemetry_dir) if cfg.telemetry_dir else None
        self.snapshots = SnapshotWriter(cfg.telemetry_dir) if cfg.telemetry_dir else None
        self.window = WindowTracker()
        # A fresh snapshot is a router event: held requests are offered again.
        self.scraper = Scraper(self._targets, interval_s=cfg.scrape_interval_s,
                               stale_after_s=cfg.stale_after_s, on_round=self._drain)
        self._ids = itertools.count()
        self._run_id = uuid.uuid4().hex[:8]
        self._session: aiohttp.ClientSession | None = None
        """For probes and /v1/models; completions go through ``_upstream``."""
        self._upstream: UpstreamPool | None = None
        self._monitor: asyncio.Task | None = None
        self._applying: asyncio.Task | None = None
        self._closing = False
        """Shutting down: new requests are refused, held ones answered (``_answer_held``)."""
        self._parked = 0
        """Handlers waiting in ``_route`` for a held request's turn."""
        self._unparked = asyncio.Event()
        # Metrics.
        self.requests: dict[str, int] = {}
        self.ttft = prom.Histogram(LATENCY_BUCKETS)
        self.e2e = prom.Histogram(LATENCY_BUCKETS)
        self.route_time = prom.Histogram(ROUTE_BUCKETS)
        self.retries = 0
        self.plans_applied = 0
        self.monitor_errors: dict[str, int] = {}
        """Monitoring ticks that raised, by exception type."""
        self.swap_ms = prom.Histogram((1, 2, 5, 10, 20, 50, 100, 200, 500))

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
        await self._answer_held()

    async def _on_cleanup(self, _: web.Application) -> None:
        await self.stop()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self.config.upstream_timeout_s, connect=2.0),
            auto_decompress=False,  # pass bytes through untouched
        )
        self._upstream = UpstreamPool(timeout_s=self.config.upstream_timeout_s)
        self._sync_replicas()
        await self.scraper.start()
        await self._probe_health()
        self._monitor = asyncio.create_task(self._monitor_loop())

    async def stop(self) -> None:
        """Refuse new requests, answer the held ones, stop, then close the telemetry writer.

        Idempotent (the app's cleanup calls it too). Every held request is answered 503
        and logged as ``rejected`` before the writer closes.
        """
        await self._answer_held()
        for task in (self._monitor, self._applying):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.scraper.stop()
        if self._session is not None:
            await self._session.close()
        if self._upstream is not None:
            self._upstream.close()
        if self.telemetry is not None:
            self.telemetry.close()  # a clean stop loses nothing
        if self.snapshots is not None:
            self.snapshots.flush()

    async def _answer_held(self, timeout_s: float = 5.0) -> None:
        """Refuse new requests; answer every held one and wait until its handler logged it.

        Its handler writes the row (``rejected``) when it wakes, a loop iteration or two
        after its ticket is resolved: the telemetry writer must still be open then.
        """
        self._closing = True
        for entry in self.core.held:
            if isinstance(entry.ticket, asyncio.Future) and not entry.ticket.done():
                entry.ticket.set_result((None, None))
        self.core.held.clear()

        async def unparked() -> None:
            while self._parked:
                self._unparked.clear()
                await self._unparked.wait()

        # Bounded: a shutdown must not hang on a handler that never wakes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(unparked(), timeout_s)

    @property
    def accounting(self) -> RouterAccounting:
        return self.core.accounting

    # -- replica set ---------------------------------------------------------------------
    def _targets(self) -> dict[int, str]:
        return {r.id: r.handle.url for r in self.replicas.values()}

    def _sync_replicas(self) -> None:
        """Follow the fleet: new engines join the accounting, gone ones leave it."""
        engines = {e.id: e for e in self.fleet.engines()}
        for eid, handle in engines.items():
            if eid not in self.replicas:
                self.replicas[eid] = _Replica(handle)
                # Remember about as many prefix blocks as the replica can cache (one hash
                # per 16-token KV block), sized as the simulator sizes it.
                cost = self._menu().get(handle.spec)
                kv = cost.kv_blocks if cost else DEFAULT_KV_BLOCKS
                self.core.add_replica(eid, handle.spec, kv_blocks=kv, prefix_capacity=kv)
                self._followed = None  # the new replica's plan weight
        for eid in list(self.replicas):
            if eid not in engines:
                del self.replicas[eid]
                self.core.remove_replica(eid)

    async def _probe_health(self) -> None:
        """Mark replicas up or down from /health (and the last scrape's outcome)."""
        assert self._session is not None

        async def probe(r: _Replica) -> None:
            try:
                async with self._session.get(f"{r.handle.url}/health",
                                             timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
                    ok = resp.status == 200
            except (TimeoutError, aiohttp.ClientError, OSError):
                ok = False
            r.healthy = ok
            r.down = not ok

        # Serving replicas are watched by the scraper; probe only the doubtful ones.
        doubtful = [r for r in self.replicas.values()
                    if r.down or not r.healthy or not self.scraper.ok.get(r.id, True)]
        await asyncio.gather(*(probe(r) for r in doubtful))

    def idle(self, replica_id: int) -> bool:
        try:
            return self.accounting.ledger(replica_id).inflight_requests == 0
        except KeyError:
            return True

    def _state(self, r: _Replica) -> str:
        if r.handle.state == "draining":
            return "draining"
        return "serving" if r.healthy and r.handle.state == "serving" else "starting"

    # -- monitoring tick -----------------------------------------------------------------
    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.monitor_interval_s)
            try:
                await self._tick()
            except Exception as e:  # a bad tick must never stop the loop, nor go unseen
                self._tick_failed(e)

    def _tick_failed(self, e: Exception) -> None:
        """Count the failure by kind; log the first of each kind with its traceback."""
        kind = type(e).__name__
        seen = self.monitor_errors.get(kind, 0)
        self.monitor_errors[kind] = seen + 1
        if not seen:
            log.error("router monitor tick failed (%s: %s); later %s failures are only "
                      "counted, in autopoiesis_monitor_errors_total", kind, e, kind, exc_info=e)

    async def _tick(self) -> None:
        if self.telemetry is not None:
            self.telemetry.flush_due()
        if self.snapshots is not None:
            now = self.clock()
            for rid, m in list(self.scraper.latest.items()):
                r = self.replicas.get(rid)
                if r is not None:
                    self.snapshots.add(r.handle.url, m, now)
        self._sync_replicas()
        await self._probe_health()
        if self.config.reschedule and (self._applying is None or self._applying.done()):
            plan = self.runtime.reschedule(self.cluster_view(), self.clock())
            menu = self._menu() or set(self.fleet.plan().replicas)
            review = review_plan(plan, self.fleet.plan(), self.config.model_name,
                                 self.fleet.gpus_available(), menu)
            if review.problem is not None:
                self.runtime.reschedule_errors += 1  # the same rule the simulator faults on
            elif review.plan is not None:
                self.plans_applied += 1
                self._applying = asyncio.create_task(self.fleet.apply(review.plan, self.idle))
        self._drain()

    def _menu(self) -> dict[ReplicaSpec, SpecCost]:
        """The specs a plan may use: what the pool's GPU types can run for this model."""
        model = self.config.model_name
        try:
            return deployable_specs(model, self.fleet.gpus_available())
        except UnknownHardware:
            return {}  # an engine this catalogue does not know: plans keep today's specs

    def cluster_view(self) -> ClusterView:
        plan = self.fleet.plan()
        now = self.clock()
        window = self.window.summary(now)
        menu = self._menu()
        self._refresh(now)
        return ClusterView(
            window=window,
            gpus_available=self.fleet.gpus_available(),
            plan=plan,
            replicas=self.core.views(None, now),
            queued=len(self.core.held),
            cold_start_s={spec: cost.cold_start_s for spec, cost in menu.items()},
            capacity_rps=capacities(self.config.model_name, menu, window) if menu else {},
            model=self.config.model_name,
        )

    # -- routing: the core decides, the router feeds it and waits -------------------------
    def _refresh(self, now: float) -> None:
        """Tell the core what the router knows now: states, reachability, snapshots, plan."""
        core, scraper = self.core, self.scraper
        for r in self.replicas.values():
            slot = core.slot(r.id)
            slot.state = self._state(r)  # type: ignore[assignment]
            core.set_visible(r.id, not r.down)
            m, _ = scraper.view(r.id, now)  # saturated when stale
            total = m.kv_blocks_total or slot.kv_total  # else the catalogue's estimate
            at = m.at if math.isfinite(m.at) else now - NEVER_SCRAPED_AGE_S
            core.observe(r.id, m.running, m.waiting, m.kv_blocks_used(total), at, total)
        plan = self.fleet.plan()
        if plan is not self._followed:
            core.follow_plan(plan)
            self._followed = plan

    def _decide(self, request: Request, views: tuple[ReplicaView, ...], now: float) -> object:
        """The policy's route() through the runtime's budget and fallbacks, timed."""
        t0 = time.perf_counter()
        choice, active = self.runtime.route(request, views, now)
        self.route_time.observe(time.perf_counter() - t0)
        if choice is not None:
            self._chosen_by[request.id] = active
        return choice

    def _hand_over(self, dispatched: list[tuple[Held, int]]) -> None:
        """Wake the waiter of each request the core dispatched."""
        for entry, replica_id in dispatched:
            active = self._chosen_by.pop(entry.request.id)
            fut = entry.ticket
            assert isinstance(fut, asyncio.Future)
            if fut.done():  # its waiter is gone: the dispatch never happens
                self.core.finish(replica_id, entry.request)
            else:
                fut.set_result((replica_id, active))

    def _drain(self) -> None:
        """Offer held requests again (a finish, a tick or a snapshot may have freed room)."""
        if self.core.held:
            now = self.clock()
            self._refresh(now)
            self._hand_over(self.core.drain(now, self._decide))

    def _could_serve(self, exclude: frozenset[int]) -> bool:
        return any(not r.down and r.id not in exclude and self._state(r) != "draining"
                   for r in self.replicas.values())

    async def _route(self, request: Request, exclude: frozenset[int], retry: bool = False
                     ) -> tuple[int | None, ActivePolicy | None]:
        """Enqueue and drain (the core's arrival rule); wait while held.

        A dispatched request is counted in flight on its replica: the caller must
        ``_release`` it. (None, None) when nothing can serve it, it waited too long, or
        the router is shutting down.
        """
        if self._closing:
            return None, None
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        now = self.clock()
        self._refresh(now)
        entry, dispatched = self.core.arrive(request, now, self._decide, ticket=fut,
                                             exclude=exclude, front=retry)
        self._hand_over(dispatched)
        if fut.done():
            return fut.result()
        if not self._could_serve(exclude):
            self.core.withdraw(entry)
            return None, None  # nothing is serving or starting: fail fast with 503
        self._parked += 1
        try:
            return await asyncio.wait_for(fut, self.config.hold_timeout_s)
        except TimeoutError:
            return None, None
        finally:
            # The caller logs the request in this same step, before any other task runs.
            self._parked -= 1
            if not self._parked:
                self._unparked.set()
            if not fut.done() or fut.cancelled():
                self.core.withdraw(entry)

    def _release(self, replica_id: int, request: Request) -> None:
        """``request`` is off ``replica_id``: count it out and re-offer what is held."""
        self.core.finish(replica_id, request)
        self._drain()

    # -- request handling -------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "/v1/completions")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._proxy(request, "/v1/chat/completions")

    async def _proxy(self, request: web.Request, path: str) -> web.StreamResponse:
        # Latencies use perf_counter: uvloop's loop.time() is in whole milliseconds
        # and cached per loop iteration, too coarse for TTFT/TPOT telemetry.
        t0 = time.perf_counter()
        arrival_unix = time.time()
        raw = await request.read()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return _error(400, "request body must be a JSON object", "invalid_request_error")
        data = prompt_bytes(body)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            max_tokens = 0
        n = next(self._ids)
        req = Request(
            id=n, arrival=self.clock(), prompt_tokens=count_tokens(data),
            max_output_tokens=max_tokens or DEFAULT_MAX_OUTPUT_TOKENS,
            prefix_hashes=prefix_hashes(data), prefix_block_tokens=BLOCK_TOKENS,
            session_id=str(body.get("user") or request.headers.get("x-session-id", "")),
        )
        request_id = request.headers.get("x-request-id") or f"{self._run_id}-{n}"
        self.window.add(req)
        stream = bool(body.get("stream"))
        chat = path.endswith("chat/completions")
        forwarded = _forwarded_headers(request)

        exclude = NO_EXCLUSIONS
        row = _RowState(request_id, arrival_unix, req, max_tokens)
        while True:
            choice, active = await self._route(req, exclude, retry=bool(exclude))
            queue_s = time.perf_counter() - t0
            if choice is None:
                row.finish(self, "rejected", queue_s=queue_s, version=active)
                why = "the router is shutting down" if self._closing else (
                    "no engine available to serve the request")
                return _error(503, why, "service_unavailable", version=active)
            assert active is not None and self._upstream is not None
            # From here the core counts the request on ``choice`` until it is released.
            replica = self.replicas.get(choice)
            try:
                if replica is None:  # left the fleet while the request waited to resume
                    raise UpstreamError("replica gone")
                upstream = await self._upstream.post(replica.handle.url, path, raw, forwarded)
            except UpstreamError:
                self.core.finish(choice, req)
                if replica is not None:
                    replica.down = True
                exclude = exclude | {choice}
                self.retries += 1
                continue
            except BaseException:
                self._release(choice, req)
                raise
            if upstream.status in (502, 503) and len(exclude) + 1 < len(self.replicas):
                # Refused before any byte reached the client: another replica may serve it.
                self._upstream.release(upstream)
                self.core.finish(choice, req)
                exclude = exclude | {choice}
                self.retries += 1
                continue
            break
        try:
            if stream and upstream.status == 200:
                return await self._relay_stream(request, upstream, row, replica, active, chat,
                                                t0, queue_s)
            return await self._relay_whole(upstream, row, replica, active, t0, queue_s)
        finally:
            self._upstream.release(upstream)
            self._release(choice, req)

    async def _relay_stream(self, request: web.Request, upstream: Exchange, row: _RowState,
                            replica: _Replica, active: ActivePolicy, chat: bool, t0: float,
                            queue_s: float) -> web.StreamResponse:
        resp = DeferredHeadersResponse(status=200, headers={
            "Content-Type": upstream.headers.get("content-type", "text/event-stream"),
            "Cache-Control": "no-cache", VERSION_HEADER: active.version})
        await resp.prepare(request)
        relay = SseRelay(asyncio.get_running_loop(), upstream)
        status = "ok"
        try:
            # The headers go out with whatever the engine has streamed so far (one
            # socket write), then the relay sends the rest as it arrives.
            first = upstream.take_buffered()
            relay.note(first)
            await resp.write(first)
            relay.attach(request)
            await upstream.finished()
            if not relay.done:
                raise UpstreamError("stream ended without [DONE]")
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            relay.cancelled = True  # the client went away before the first write
        except UpstreamError:
            if not relay.cancelled:  # else: aborted because the client went away
                status = "error"
                with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionResetError):
                    await resp.write(STREAM_ERROR_EVENT)
                replica.down = True
        if relay.cancelled:
            status = "cancelled"
        tokens = relay.output_tokens(chat)
        with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionResetError):
            await resp.write_eof()
        end = time.perf_counter()
        first_at, last_at = relay.first, relay.last
        row.finish(self, status, version=active, replica=replica, queue_s=queue_s,
                   output_tokens=tokens, prompt_tokens=relay.prompt_tokens(),
                   ttft_s=first_at - t0, e2e_s=end - t0,
                   tpot_s=(last_at - first_at) / (tokens - 1) if tokens > 1 else math.nan)
        return resp

    async def _relay_whole(self, upstream: Exchange, row: _RowState, replica: _Replica,
                           active: ActivePolicy, t0: float, queue_s: float) -> web.Response:
        try:
            payload = await upstream.read()
        except UpstreamError:
            replica.down = True
            row.finish(self, "error", version=active, replica=replica, queue_s=queue_s,
                       e2e_s=time.perf_counter() - t0)
            return _error(502, "upstream engine failed", "upstream_error", version=active)
        prompt, tokens = engine_token_counts(payload) if upstream.status == 200 else (None, 0)
        status = "ok" if upstream.status == 200 else "error"
        e2e = time.perf_counter() - t0
        row.finish(self, status, version=active, replica=replica, queue_s=queue_s,
                   output_tokens=tokens or 0, prompt_tokens=prompt, e2e_s=e2e)
        return web.Response(status=upstream.status, body=payload, headers={
            "Content-Type": upstream.headers.get("content-type", "application/json"),
            VERSION_HEADER: active.version})

    def record(self, row: TelemetryRow) -> None:
        self.requests[row.status] = self.requests.get(row.status, 0) + 1
        if row.ttft_s == row.ttft_s:
            self.ttft.observe(row.ttft_s)
        if row.e2e_s == row.e2e_s:
            self.e2e.observe(row.e2e_s)
        if row.status == "ok":
            self.window.finish(row.output_tokens)
        if self.telemetry is not None:
            self.telemetry.add(row)

    # -- other endpoints ---------------------------------------------------------------
    async def _models(self, _: web.Request) -> web.Response:
        assert self._session is not None
        for r in self.replicas.values():
            if r.down:
                continue
            with contextlib.suppress(*UPSTREAM_DOWN, aiohttp.ClientError):
                async with self._session.get(f"{r.handle.url}/v1/models") as resp:
                    if resp.status == 200:
                        return web.Response(body=await resp.read(),
                                            content_type="application/json")
        name = self.config.model_name or "unknown"
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "owned_by": "autopoiesis"}]})

    async def _health(self, _: web.Request) -> web.Response:
        ok = any(self._state(r) == "serving" and not r.down for r in self.replicas.values())
        return web.json_response({"status": "ok" if ok else "unavailable",
                                  "policy_version": self.runtime.current.version},
                                 status=200 if ok else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.render_metrics().encode(),
                            headers={"Content-Type": prom.CONTENT_TYPE})

    def render_metrics(self) -> str:
        rt = self.runtime
        cur = rt.current
        out = [prom.header("autopoiesis_requests_total", "counter",
                           "Requests finished by the router, by telemetry status."),
               *(prom.sample("autopoiesis_requests_total", v, {"status": k})
                 for k, v in sorted(self.requests.items())),
               prom.header("autopoiesis_policy_info", "gauge",
                           "The policy now routing (value 1)."),
               prom.sample("autopoiesis_policy_info", 1,
                           {"version": cur.version, "sha256": cur.sha256,
                            "name": cur.policy.name}),
               prom.header("autopoiesis_policy_fallbacks_total", "counter",
                           "Route calls answered by a fallback policy, by reason."),
               *(prom.sample("autopoiesis_policy_fallbacks_total", v, {"reason": k})
                 for k, v in rt.fallbacks.items()),
               prom.header("autopoiesis_policy_swaps_total", "counter", "Policy swaps."),
               prom.sample("autopoiesis_policy_swaps_total", rt.swaps),
               prom.header("autopoiesis_policy_rollbacks_total", "counter", "Rollbacks."),
               prom.sample("autopoiesis_policy_rollbacks_total", rt.rollbacks),
               prom.header("autopoiesis_policy_demotions_total", "counter",
                           "Policies demoted after repeated failures."),
               prom.sample("autopoiesis_policy_demotions_total", rt.demotions),
               prom.header("autopoiesis_reschedule_errors_total", "counter",
                           "reschedule() calls that raised or returned a non-plan."),
               prom.sample("autopoiesis_reschedule_errors_total", rt.reschedule_errors),
               prom.header("autopoiesis_plans_applied_total", "counter",
                           "New plans handed to the fleet."),
               prom.sample("autopoiesis_plans_applied_total", self.plans_applied),
               prom.header("autopoiesis_monitor_errors_total", "counter",
                           "Monitoring ticks that failed, by exception type."),
               *(prom.sample("autopoiesis_monitor_errors_total", v, {"kind": k})
                 for k, v in sorted(self.monitor_errors.items())),
               prom.header("autopoiesis_upstream_retries_total", "counter",
                           "Requests retried on another replica before any byte was sent."),
               prom.sample("autopoiesis_upstream_retries_total", self.retries),
               prom.header("autopoiesis_held_requests", "gauge",
                           "Requests waiting in the router queue."),
               prom.sample("autopoiesis_held_requests", len(self.core.held)),
               prom.header("autopoiesis_replica_up", "gauge", "1 when the replica serves."),
               prom.header("autopoiesis_replica_inflight_requests", "gauge",
                           "Requests the router has in flight on the replica.")]
        for r in self.replicas.values():
            lab = {"replica": str(r.id), "url": r.handle.url}
            up = 1 if self._state(r) == "serving" and not r.down else 0
            out.append(prom.sample("autopoiesis_replica_up", up, lab))
            out.append(prom.sample("autopoiesis_replica_inflight_requests",
                                   self.accounting.ledger(r.id).inflight_requests, lab))
        out += [prom.header("autopoiesis_ttft_seconds", "histogram",
                            "Time to first streamed chunk, measured at the router."),
                self.ttft.render("autopoiesis_ttft_seconds"),
                prom.header("autopoiesis_e2e_seconds", "histogram",
                            "End-to-end request latency at the router."),
                self.e2e.render("autopoiesis_e2e_seconds"),
                prom.header("autopoiesis_route_seconds", "histogram",
                            "Time of one routing decision, policy included."),
                self.route_time.render("autopoiesis_route_seconds"),
                prom.header("autopoiesis_policy_swap_milliseconds", "histogram",
                            "Admin load-and-swap time."),
                self.swap_ms.render("autopoiesis_policy_swap_milliseconds")]
        return "".join(out)


def _forwarded_headers(request: web.Request) -> bytes:
    """The client headers an engine should see, as header lines."""
    out = b""
    for name in FORWARDED_HEADERS:
        value = request.headers.get(name)
        if value:
            out += b"%s: %s\r\n" % (name.encode(), value.encode("latin-1", "replace"))
    return out


class _RowState:
    """What is known of a request before its end; ``finish`` makes its telemetry row."""

    __slots__ = ("arrival_unix", "max_tokens", "req", "request_id")

    def __init__(self, request_id: str, arrival_unix: float, req: Request,
                 max_tokens: int) -> None:
        self.request_id = request_id
        self.arrival_unix = arrival_unix
        self.req = req
        self.max_tokens = max_tokens

    def finish(self, router: Router, status: str, *, version: ActivePolicy | None,
               replica: _Replica | None = None, queue_s: float = math.nan,
               output_tokens: int = 0, prompt_tokens: int | None = None,
               ttft_s: float = math.nan, tpot_s: float = math.nan,
               e2e_s: float = math.nan) -> None:
        """``prompt_tokens``: the engine's count; without one, the router's estimate."""
        req = self.req
        router.record(TelemetryRow(
            request_id=self.request_id, arrival_unix_s=self.arrival_unix,
            prompt_tokens=req.prompt_tokens if prompt_tokens is None else prompt_tokens,
            output_tokens=output_tokens,
            max_tokens=self.max_tokens, ttft_s=ttft_s, tpot_s=tpot_s, e2e_s=e2e_s,
            queue_s=queue_s, replica=replica.handle.url if replica is not None else "",
            policy_version=version.version if version is not None else "",
            status=status, prefix_block_tokens=req.prefix_block_tokens,
            prefix_hashes=req.prefix_hashes, session_id=req.session_id,
        ))


def _error(status: int, message: str, kind: str,
           version: ActivePolicy | None = None) -> web.Response:
    headers = {VERSION_HEADER: version.version} if version is not None else None
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status, headers=headers)

