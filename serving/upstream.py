"""The router's engine client: HTTP/1.1 POSTs over kept-alive connections, bodies pushed.

aiohttp's client spends most of the router's CPU on a streamed request: a
``ClientRequest``/``ClientResponse`` pair per request, then per streamed chunk a
``StreamReader`` future and a wake-up of the handler task before the chunk can be
written on. Here the engine's response is fed to an llhttp parser (``httptools``,
the one uvicorn uses) in the connection's ``data_received``, and the body bytes of
each read are handed to a sink callback there, so relaying a token costs one
callback and one socket write, no task switch (measured in
docs/router-http-stack.md). llhttp does the HTTP/1.1 parsing (status line,
headers, ``Content-Length``, chunked or close-delimited bodies, keep-alive);
this module adds what the router needs around it: a POST with a body, a pool of
kept-alive connections per engine, one retry on a connection the engine closed
while idle, and one timer per exchange. Everything else the router sends to
engines (health probes, ``/metrics``, ``/v1/models``) stays on aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024
MAX_IDLE_PER_ENGINE = 256

Sink = Callable[[bytes], None]


class UpstreamError(ConnectionError):
    """The engine could not be reached or broke the exchange (closed early, bad reply)."""


class Exchange(asyncio.Protocol):
    """One connection to an engine; carries one request/response exchange at a time."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self._pool = pool
        self._key = key
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        """Response headers, names lower-cased (a repeated header keeps its last value)."""
        self.reused = False
        self._timer: asyncio.TimerHandle | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head_bytes = 0
        self._head: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._pieces: list[bytes] = []
        self._ended = False
        self._keep_alive = False
        self._received = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received = True
        head, done, parser = self._head, self._done, self._parser
        if head is None or done is None or parser is None or done.done():
            # Bytes outside an exchange: the connection can no longer be trusted.
            self._keep_alive = False
            if self.transport is not None:
                self.transport.abort()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("engine answered with a protocol upgrade"))
        except httptools.HttpParserError as exc:
            if self._ended:  # bytes after the end of the response: keep it, drop the link
                self._keep_alive = False
                self._flush()
                self._finish()
                if self.transport is not None:
                    self.transport.abort()
            else:
                self._fail(UpstreamError(f"malformed response from engine: {exc}"))
            return
        if not head.done():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(UpstreamError("engine response head too large"))
            return
        self._flush()
        if self._ended:
            self._finish()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost ends the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool._forget(self)
        if self._done is None or self._done.done():
            return
        headers = self.headers
        if (self._head is not None and self._head.done() and "content-length" not in headers
                and "chunked" not in headers.get("transfer-encoding", "").lower()):
            self._finish()  # a close-delimited body ends here, cleanly (llhttp has no EOF call)
        else:
            self._fail(UpstreamError(f"engine closed the connection: {exc or 'EOF'}"))

    # -- httptools callbacks (from inside feed_data) ---------------------------------------
    def on_message_begin(self) -> None:
        if self._ended:  # bytes after the response: stop the parser, drop the connection
            raise UpstreamError("engine sent more than one response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()

    def on_headers_complete(self) -> None:
        parser, head = self._parser, self._head
        assert parser is not None and head is not None
        if parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next: the exchange fails
        self.status = parser.get_status_code()
        self._keep_alive = parser.should_keep_alive()
        head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)  # handed on once feed_data returns (one piece per read)

    def on_message_complete(self) -> None:
        self._ended = True

    # -- one exchange ----------------------------------------------------------------------
    def _start(self, request: list[bytes], timeout_s: float) -> asyncio.Future[None]:
        loop = self._pool.loop
        self._timer = loop.call_later(timeout_s, self._expire)
        self._head = loop.create_future()
        self._done = loop.create_future()
        self._done.add_done_callback(_consume_exception)  # a caller may not await it
        self._parser = httptools.HttpResponseParser(self)  # a fresh parser per exchange
        self._head_bytes = 0
        self.status = 0
        self.headers = {}
        self._sink = None
        self._pieces = []
        self._ended = False
        self._received = False
        assert self.transport is not None
        self.transport.writelines(request)
        return self._head

    def stream_to(self, sink: Sink) -> None:
        """From now on hand each body piece to ``sink`` as it arrives (none are buffered)."""
        self._sink = sink

    def take_buffered(self) -> bytes:
        """Body received so far and not yet handed to a sink."""
        pieces, self._pieces = self._pieces, []
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def finished(self) -> None:
        """Wait for the end of the body; raises ``UpstreamError`` if it was cut off."""
        assert self._done is not None
        await self._done

    async def read(self) -> bytes:
        """The whole body (for responses that are not relayed piece by piece)."""
        await self.finished()
        return self.take_buffered()

    @property
    def complete(self) -> bool:
        """The whole response was read (not cut off, failed or abandoned)."""
        done = self._done
        return (done is not None and done.done() and not done.cancelled()
                and done.exception() is None)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        """Hand the body bytes of the last read to the sink, if one is set, as one piece."""
        pieces = self._pieces
        if pieces and self._sink is not None:
            self._pieces = []
            self._sink(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _finish(self) -> None:
        assert self._done is not None
        if not self._done.done():
            self._done.set_result(None)

    def _expire(self) -> None:
        self._fail(UpstreamError("engine exchange timed out"))

    def _fail(self, exc: UpstreamError) -> None:
        self._keep_alive = False
        for fut in (self._head, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    @property
    def reusable(self) -> bool:
        return (self._keep_alive and self.complete and self.transport is not None
                and not self.transport.is_closing())


def _consume_exception(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


class UpstreamPool:
    """Kept-alive connections per engine ``host:port``; one exchange per connection at a time."""

    def __init__(self, *, timeout_s: float = 600.0, connect_timeout_s: float = 2.0,
                 max_idle_per_engine: int = MAX_IDLE_PER_ENGINE) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s
        """Limit on one whole exchange, request sent to last body byte."""
        self.connect_timeout_s = connect_timeout_s
        self.max_idle = max_idle_per_engine
        self._idle: dict[tuple[str, int], list[Exchange]] = {}
        self._open: set[Exchange] = set()
        self._prefix: dict[tuple[str, str], tuple[tuple[str, int], bytes]] = {}

    def _request_prefix(self, base_url: str, path: str) -> tuple[tuple[str, int], bytes]:
        """Engine address and request head up to the per-request headers, built once."""
        cached = self._prefix.get((base_url, path))
        if cached is None:
            u = urlsplit(base_url)
            if u.scheme != "http" or not u.hostname:
                raise UpstreamError(f"unsupported engine URL {base_url!r} (plain http only)")
            key = (u.hostname, u.port or 80)
            head = (f"POST {u.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                    "Content-Type: application/json\r\n").encode("latin-1")
            cached = self._prefix[(base_url, path)] = (key, head)
        return cached

    async def post(self, base_url: str, path: str, body: bytes,
                   headers: bytes = b"") -> Exchange:
        """Send a POST; returns once the response head is in (status, headers).

        ``headers`` are extra header lines, each ending in CRLF. A kept-alive
        connection that the engine closed while it was idle is retried once on
        a new connection; any other failure raises ``UpstreamError``.
        """
        key, prefix = self._request_prefix(base_url, path)
        request = [prefix, headers, b"Content-Length: %d\r\n\r\n" % len(body), body]
        while True:
            conn = self._take_idle(key) or await self._connect(key)
            try:
                await conn._start(request, self.timeout_s)
                return conn
            except UpstreamError:
                self.release(conn)
                if conn.reused and not conn._received:
                    continue  # stale keep-alive connection: nothing was processed
                raise
            except BaseException:
                self.release(conn)  # cancelled before the head: the exchange is unusable
                raise

    def release(self, conn: Exchange) -> None:
        """Give a connection back after its exchange: kept if reusable, else closed."""
        if conn._timer is not None:
            conn._timer.cancel()
            conn._timer = None
        idle = self._idle.setdefault(conn._key, [])
        if conn.reusable and len(idle) < self.max_idle:
            conn._head = conn._done = conn._parser = None
            conn._sink = None
            conn.reused = True
            conn.resume_reading()  # a relay may have paused it for a slow client
            idle.append(conn)
        else:
            conn.abort()

    def _take_idle(self, key: tuple[str, int]) -> Exchange | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def _connect(self, key: tuple[str, int]) -> Exchange:
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(lambda: Exchange(self, key), *key),
                self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {key[0]}:{key[1]}: {exc}") from exc
        self._open.add(conn)
        return conn

    def _forget(self, conn: Exchange) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn._key)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._open):
            conn.abort()
        self._open.clear()
        self._idle.clear()
