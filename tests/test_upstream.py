"""The router's engine client against scripted raw HTTP servers: framing, reuse, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from serving.upstream import UpstreamError, UpstreamPool

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(script: Script) -> tuple[asyncio.Server, str, list[int]]:
    """A server running ``script`` per request; also counts the connections it accepted."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                await script(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", accepted


def _chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


HEAD_CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 10))


def test_chunked_body_split_anywhere_reaches_the_sink_whole_and_connection_is_reused():
    events = [b'data: {"text":"a"}\n\n', b'data: {"text":"\xc3\xa9"}\n\n', b"data: [DONE]\n\n"]
    wire = HEAD_CHUNKED + _chunked(*events)

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for i in range(0, len(wire), 7):  # cut through headers, sizes, CRLFs and data
            w.write(wire[i : i + 7])
            await w.drain()
            await asyncio.sleep(0.001)

    async def main() -> None:
        server, url, accepted = await _serve(script)
        pool = UpstreamPool()
        try:
            for _ in range(3):
                ex = await pool.post(url, "/v1/completions", b"{}")
                assert ex.status == 200 and ex.headers["content-type"] == "text/event-stream"
                got: list[bytes] = [ex.take_buffered()]
                ex.stream_to(got.append)
                await ex.finished()
                assert b"".join(got) == b"".join(events)
                pool.release(ex)
            assert len(accepted) == 1  # kept alive across the three exchanges
        finally:
            pool.close()
            server.close()

    run(main)


def test_content_length_and_close_delimited_bodies():
    replies = [b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nnope!",
               b"HTTP/1.0 200 OK\r\n\r\nuntil close"]

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(replies.pop(0))
        if not replies:
            w.close()

    async def main() -> None:
        server, url, accepted = await _serve(script)
        pool = UpstreamPool()
        try:
            ex = await pool.post(url, "/x", b"{}")
            assert (ex.status, await ex.read()) == (404, b"nope!")
            pool.release(ex)
            ex = await pool.post(url, "/x", b"{}")
            assert (ex.status, await ex.read()) == (200, b"until close")
            assert not ex.reusable
            pool.release(ex)
            assert len(accepted) == 1
        finally:
            pool.close()
            server.close()

    run(main)


def test_engine_dying_mid_body_and_malformed_chunk_raise():
    bodies = [HEAD_CHUNKED + b"5\r\nhello\r\n", HEAD_CHUNKED + b"zz\r\nhello\r\n"]

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(bodies.pop(0))
        await w.drain()
        w.close()

    async def main() -> None:
        server, url, _ = await _serve(script)
        pool = UpstreamPool()
        try:
            for _ in range(2):
                ex = await pool.post(url, "/x", b"{}")
                with pytest.raises(UpstreamError):
                    await ex.finished()
                pool.release(ex)
        finally:
            pool.close()
            server.close()

    run(main)


def test_stale_keep_alive_connection_is_retried_and_refused_port_raises():
    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
        w.close()  # the engine drops the kept-alive connection after each reply

    async def main() -> None:
        server, url, accepted = await _serve(script)
        pool = UpstreamPool()
        try:
            for _ in range(2):
                ex = await pool.post(url, "/x", b"{}")
                assert await ex.read() == b"ok"
                pool.release(ex)
                await asyncio.sleep(0.05)  # let the close arrive while it sits idle
            assert len(accepted) == 2
        finally:
            server.close()
            await server.wait_closed()
        with pytest.raises(UpstreamError):
            await pool.post(url, "/x", b"{}")
        pool.close()

    run(main)


def test_reused_connection_closed_without_reply_is_retried_on_a_new_one():
    calls: list[int] = []

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        calls.append(1)
        if len(calls) == 2:
            w.close()  # as if the engine's keep-alive timer fired just as we sent
            return
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async def main() -> None:
        server, url, accepted = await _serve(script)
        pool = UpstreamPool()
        try:
            for _ in range(2):
                ex = await pool.post(url, "/x", b"{}")
                assert await ex.read() == b"ok"
                pool.release(ex)
            assert (len(calls), len(accepted)) == (3, 2)
        finally:
            pool.close()
            server.close()

    run(main)


def test_exchange_timeout_raises():
    async def script(_: asyncio.StreamReader, __: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def main() -> None:
        server, url, _ = await _serve(script)
        pool = UpstreamPool(timeout_s=0.1)
        try:
            with pytest.raises(UpstreamError, match="timed out"):
                await pool.post(url, "/x", b"{}")
        finally:
            pool.close()
            server.close()

    run(main)


def test_malformed_status_line_or_headers_upgrade_and_oversized_head_raise():
    cases = [
        (b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok", "malformed response"),
        (b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 2\r\n\r\nok", "malformed response"),
        (b"SMTP ready\r\n\r\n", "malformed response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "malformed response"),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
         "upgrade"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000, "head too large"),
    ]
    replies = [wire for wire, _ in cases]

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(replies.pop(0))
        await w.drain()
        await asyncio.sleep(5)  # no close: the client must give up on the bytes alone

    async def main() -> None:
        server, url, _ = await _serve(script)
        pool = UpstreamPool(timeout_s=2)
        try:
            for _, message in cases:
                with pytest.raises(UpstreamError, match=message):
                    await pool.post(url, "/x", b"{}")
        finally:
            pool.close()
            server.close()

    run(main)


def test_bytes_after_the_response_keep_the_body_but_not_the_connection():
    replies = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nxx",  # a reply nobody asked for
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokjunk",
               b"HTTP/1.1 204 No Content\r\n\r\n"]

    async def script(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(replies.pop(0))

    async def main() -> None:
        server, url, accepted = await _serve(script)
        pool = UpstreamPool()
        try:
            for expected in (b"ok", b"ok"):
                ex = await pool.post(url, "/x", b"{}")
                assert await ex.read() == expected
                assert ex.complete and not ex.reusable
                pool.release(ex)
            ex = await pool.post(url, "/x", b"{}")
            assert (ex.status, await ex.read(), ex.reusable) == (204, b"", True)
            pool.release(ex)
            assert len(accepted) == 3
        finally:
            pool.close()
            server.close()

    run(main)
