"""The live router's completions proxy: a request in, routed, forwarded, its answer relayed.

Each request is parsed once (prompt bytes -> token estimate and prefix block hashes),
routed (``serving.router_dispatch``), forwarded with its original bytes through
``serving.upstream``, and its response relayed piece by piece as it arrives -- the
router never re-encodes what an engine streams. An engine that refuses or cannot be
reached before any byte reached the client is retried on another replica. Every
request, failed or not, becomes one telemetry row.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from serving.contract import DEFAULT_MAX_OUTPUT_TOKENS, Request
from serving.policy_runtime import ActivePolicy
from serving.prompt_tokens import BLOCK_TOKENS, count_tokens, prefix_hashes, prompt_bytes
from serving.relay import DeferredHeadersResponse, SseRelay, engine_token_counts
from serving.router_dispatch import Dispatcher
from serving.router_replicas import ReplicaSet, RouterReplica
from serving.router_telemetry import RouterTelemetry
from serving.routing import NO_EXCLUSIONS
from serving.telemetry import TelemetryRow
from serving.upstream import Exchange, UpstreamError, UpstreamPool

VERSION_HEADER = "x-autopoiesis-policy-version"
FORWARDED_HEADERS = ("Authorization", "x-request-id")
STREAM_ERROR_EVENT = (
    b"data: "
    + json.dumps(
        {
            "error": {
                "message": "upstream engine failed mid-stream",
                "type": "upstream_error",
                "code": 502,
            }
        }
    ).encode()
    + b"\n\n"
)


@dataclass
class _Forwarded:
    """A request an engine accepted: it is in flight on ``choice`` until released."""

    choice: int
    replica: RouterReplica
    active: ActivePolicy
    upstream: Exchange
    queue_s: float


class CompletionProxy:
    def __init__(
        self,
        dispatch: Dispatcher,
        replicas: ReplicaSet,
        telemetry: RouterTelemetry,
        clock: Callable[[], float],
        upstream_timeout_s: float,
    ) -> None:
        self.dispatch = dispatch
        self.replicas = replicas
        self.telemetry = telemetry
        self.clock = clock
        self.upstream_timeout_s = upstream_timeout_s
        self._ids = itertools.count()
        self._run_id = uuid.uuid4().hex[:8]
        self._upstream: UpstreamPool | None = None

    def start(self) -> None:
        """Open the engine connection pool (it needs the running loop)."""
        self._upstream = UpstreamPool(timeout_s=self.upstream_timeout_s)

    def close(self) -> None:
        if self._upstream is not None:
            self._upstream.close()

    async def handle(self, request: web.Request, path: str) -> web.StreamResponse:
        # Latencies use perf_counter: uvloop's loop.time() is in whole milliseconds
        # and cached per loop iteration, too coarse for TTFT/TPOT telemetry.
        t0 = time.perf_counter()
        arrival_unix = time.time()
        raw = await request.read()
        admitted = self._admit(request, raw, arrival_unix)
        if isinstance(admitted, web.Response):
            return admitted
        body, row = admitted
        forwarded = await self._forward(row, path, raw, _forwarded_headers(request), t0)
        if isinstance(forwarded, web.Response):
            return forwarded
        assert self._upstream is not None
        try:
            if body.get("stream") and forwarded.upstream.status == 200:
                return await self._relay_stream(
                    request, forwarded, row, path.endswith("chat/completions"), t0
                )
            return await self._relay_whole(forwarded, row, t0)
        finally:
            self._upstream.release(forwarded.upstream)
            self.dispatch.release(forwarded.choice, row.req)

    def _admit(
        self, request: web.Request, raw: bytes, arrival_unix: float
    ) -> tuple[dict, _RowState] | web.Response:
        """Parse the body into a ``Request`` and count it in the recent traffic."""
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return error_response(
                400, "request body must be a JSON object", "invalid_request_error"
            )
        data = prompt_bytes(body)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            max_tokens = 0
        n = next(self._ids)
        req = Request(
            id=n,
            arrival=self.clock(),
            prompt_tokens=count_tokens(data),
            max_output_tokens=max_tokens or DEFAULT_MAX_OUTPUT_TOKENS,
            prefix_hashes=prefix_hashes(data),
            prefix_block_tokens=BLOCK_TOKENS,
            session_id=str(body.get("user") or request.headers.get("x-session-id", "")),
        )
        request_id = request.headers.get("x-request-id") or f"{self._run_id}-{n}"
        self.telemetry.window.add(req)
        return body, _RowState(request_id, arrival_unix, req, max_tokens)

    async def _forward(
        self, row: _RowState, path: str, raw: bytes, headers: bytes, t0: float
    ) -> _Forwarded | web.Response:
        """Route and send the request until an engine takes it, or answer 503."""
        req = row.req
        exclude = NO_EXCLUSIONS
        while True:
            choice, active = await self.dispatch.route(req, exclude, retry=bool(exclude))
            queue_s = time.perf_counter() - t0
            if choice is None:
                row.finish(self.telemetry.record, "rejected", queue_s=queue_s, version=active)
                why = (
                    "the router is shutting down"
                    if self.dispatch.closing
                    else ("no engine available to serve the request")
                )
                return error_response(503, why, "service_unavailable", version=active)
            assert active is not None and self._upstream is not None
            # From here the core counts the request on ``choice`` until it is released.
            replica = self.replicas.replicas.get(choice)
            try:
                if replica is None:  # left the fleet while the request waited to resume
                    raise UpstreamError("replica gone")
                upstream = await self._upstream.post(replica.handle.url, path, raw, headers)
            except UpstreamError:
                self.replicas.core.finish(choice, req)
                if replica is not None:
                    replica.down = True
                exclude = exclude | {choice}
                self.telemetry.retries += 1
                continue
            except BaseException:
                self.dispatch.release(choice, req)
                raise
            if upstream.status in (502, 503) and len(exclude) + 1 < len(self.replicas.replicas):
                # Refused before any byte reached the client: another replica may serve it.
                self._upstream.release(upstream)
                self.replicas.core.finish(choice, req)
                exclude = exclude | {choice}
                self.telemetry.retries += 1
                continue
            return _Forwarded(choice, replica, active, upstream, queue_s)

    async def _relay_stream(
        self, request: web.Request, fwd: _Forwarded, row: _RowState, chat: bool, t0: float
    ) -> web.StreamResponse:
        upstream, replica = fwd.upstream, fwd.replica
        resp = DeferredHeadersResponse(
            status=200,
            headers={
                "Content-Type": upstream.headers.get("content-type", "text/event-stream"),
                "Cache-Control": "no-cache",
                VERSION_HEADER: fwd.active.version,
            },
        )
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
        row.finish(
            self.telemetry.record,
            status,
            version=fwd.active,
            replica=replica,
            queue_s=fwd.queue_s,
            output_tokens=tokens,
            prompt_tokens=relay.prompt_tokens(),
            ttft_s=first_at - t0,
            e2e_s=end - t0,
            tpot_s=(last_at - first_at) / (tokens - 1) if tokens > 1 else math.nan,
        )
        return resp

    async def _relay_whole(self, fwd: _Forwarded, row: _RowState, t0: float) -> web.Response:
        upstream, replica, active = fwd.upstream, fwd.replica, fwd.active
        try:
            payload = await upstream.read()
        except UpstreamError:
            replica.down = True
            row.finish(
                self.telemetry.record,
                "error",
                version=active,
                replica=replica,
                queue_s=fwd.queue_s,
                e2e_s=time.perf_counter() - t0,
            )
            return error_response(502, "upstream engine failed", "upstream_error", version=active)
        prompt, tokens = engine_token_counts(payload) if upstream.status == 200 else (None, 0)
        status = "ok" if upstream.status == 200 else "error"
        e2e = time.perf_counter() - t0
        row.finish(
            self.telemetry.record,
            status,
            version=active,
            replica=replica,
            queue_s=fwd.queue_s,
            output_tokens=tokens or 0,
            prompt_tokens=prompt,
            e2e_s=e2e,
        )
        return web.Response(
            status=upstream.status,
            body=payload,
            headers={
                "Content-Type": upstream.headers.get("content-type", "application/json"),
                VERSION_HEADER: active.version,
            },
        )


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

    def __init__(self, request_id: str, arrival_unix: float, req: Request, max_tokens: int) -> None:
        self.request_id = request_id
        self.arrival_unix = arrival_unix
        self.req = req
        self.max_tokens = max_tokens

    def finish(
        self,
        record: Callable[[TelemetryRow], None],
        status: str,
        *,
        version: ActivePolicy | None,
        replica: RouterReplica | None = None,
        queue_s: float = math.nan,
        output_tokens: int = 0,
        prompt_tokens: int | None = None,
        ttft_s: float = math.nan,
        tpot_s: float = math.nan,
        e2e_s: float = math.nan,
    ) -> None:
        """``prompt_tokens``: the engine's count; without one, the router's estimate."""
        req = self.req
        record(
            TelemetryRow(
                request_id=self.request_id,
                arrival_unix_s=self.arrival_unix,
                prompt_tokens=req.prompt_tokens if prompt_tokens is None else prompt_tokens,
                output_tokens=output_tokens,
                max_tokens=self.max_tokens,
                ttft_s=ttft_s,
                tpot_s=tpot_s,
                e2e_s=e2e_s,
                queue_s=queue_s,
                replica=replica.handle.url if replica is not None else "",
                policy_version=version.version if version is not None else "",
                status=status,
                prefix_block_tokens=req.prefix_block_tokens,
                prefix_hashes=req.prefix_hashes,
                session_id=req.session_id,
            )
        )


def error_response(
    status: int, message: str, kind: str, version: ActivePolicy | None = None
) -> web.Response:
    headers = {VERSION_HEADER: version.version} if version is not None else None
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": status}},
        status=status,
        headers=headers,
    )
