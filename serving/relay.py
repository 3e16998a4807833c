"""How an engine's streamed response reaches the client: piece by piece, counted, timed.

``SseRelay`` is the sink ``serving.upstream.Exchange`` hands each body piece to,
from the engine connection's ``data_received``: it notes the piece (first/last
time, SSE events), writes it to the client's transport in the same callback, and
applies back-pressure to the engine when the client falls behind. The router
builds the response head; this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import math
import re
import time

from aiohttp import web

from serving.upstream import Exchange

# The engine's own token counts: OpenAI ``usage`` (vLLM, SGLang, llama.cpp on text
# completions), else llama.cpp's ``timings`` (its streamed chat chunks carry only those):
# predicted_n tokens out, prompt_n computed + cache_n reused tokens in.
_COUNT = rb'"%s"\s*:\s*(\d+)'
USAGE_COMPLETION_TOKENS = re.compile(_COUNT % b"completion_tokens")
USAGE_PROMPT_TOKENS = re.compile(_COUNT % b"prompt_tokens")
TIMINGS_PREDICTED = re.compile(_COUNT % b"predicted_n")
TIMINGS_PROMPT = re.compile(_COUNT % b"prompt_n")
TIMINGS_CACHED = re.compile(_COUNT % b"cache_n")


def _last(pattern: re.Pattern[bytes], text: bytes) -> int | None:
    found = pattern.findall(text)
    return int(found[-1]) if found else None


def engine_token_counts(text: bytes) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens as the engine counted them in ``text``; None: not said."""
    prompt, completion = _last(USAGE_PROMPT_TOKENS, text), _last(USAGE_COMPLETION_TOKENS, text)
    computed, cached = _last(TIMINGS_PROMPT, text), _last(TIMINGS_CACHED, text)
    if prompt is None and computed is not None:
        prompt = computed + (cached or 0)
    if completion is None:
        completion = _last(TIMINGS_PREDICTED, text)
    return prompt, completion

# A client this far behind (bytes queued in its socket) pauses reading from the engine.
RELAY_HIGH_WATER = 256 * 1024
RELAY_LOW_WATER = 64 * 1024
RELAY_DRAIN_POLL_S = 0.01


class DeferredHeadersResponse(web.StreamResponse):
    # aiohttp >= 3.12 then holds the headers back until the first body write, saving
    # a socket write per request; older versions ignore the flag and send them early.
    _send_headers_immediately = False


class SseRelay:
    """Relays a streamed body to the client as the engine sends it, counting and timing it.

    Called from the engine connection's ``data_received`` (``Exchange.stream_to``):
    a token goes out in the same callback that brought it in, with no task switch.
    SSE events are counted, not parsed: occurrences of ``data:``, with a short
    carried tail so a field name or ``[DONE]`` split across two pieces still counts.
    """

    __slots__ = ("_chunked", "_last_piece", "_loop", "_paused", "_prev_piece", "_tail",
                 "_transport", "_upstream", "cancelled", "done", "events", "first", "last")

    def __init__(self, loop: asyncio.AbstractEventLoop, upstream: Exchange) -> None:
        self._loop = loop
        self._upstream = upstream
        self._transport: asyncio.Transport | None = None
        self._chunked = True
        self._paused = False
        self._tail = b""
        self._prev_piece = self._last_piece = b""
        self.events = 0
        self.done = False
        self.cancelled = False
        self.first = self.last = math.nan

    def note(self, piece: bytes) -> None:
        if not piece:
            return
        now = time.perf_counter()
        if self.first != self.first:  # NaN: the first piece
            self.first = now
        self.last = now
        tail = self._tail
        scan = tail + piece
        self.events += scan.count(b"data:") - tail.count(b"data:")
        self.done = self.done or b"[DONE]" in scan
        self._tail = scan[-6:]
        self._prev_piece, self._last_piece = self._last_piece, piece

    def output_tokens(self, chat: bool) -> int:
        """Tokens streamed: the engine's own count if it ended with one, else events.

        The count rides on the last chunk before ``[DONE]`` (``usage`` when the
        client asked for ``stream_options.include_usage``, or llama.cpp's
        ``timings``): the last two pieces hold it.
        """
        counted = engine_token_counts(self._prev_piece + self._last_piece)[1]
        if counted is not None:
            return counted
        # One [DONE], and for chat one role-only chunk, are not tokens.
        return max(0, self.events - (1 if self.done else 0) - (1 if chat else 0))

    def prompt_tokens(self) -> int | None:
        """The prompt's tokens as the engine counted them; None when its stream did not say."""
        return engine_token_counts(self._prev_piece + self._last_piece)[0]

    def attach(self, request: web.Request) -> None:
        """Take over from the handler: write what arrived meanwhile, then every later piece."""
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        self._transport = transport
        # aiohttp frames the response in chunked encoding for HTTP/1.1 clients only;
        # an HTTP/1.0 one gets the bare body, ended by closing the connection.
        self._chunked = request.version >= (1, 1)
        pending = self._upstream.take_buffered()
        self._upstream.stream_to(self)
        if pending:
            self(pending)

    def __call__(self, piece: bytes) -> None:
        self.note(piece)
        transport = self._transport
        assert transport is not None
        if transport.is_closing():
            if not self.cancelled:
                self.cancelled = True  # the client went away: stop the engine's work too
                self._upstream.abort()
            return
        transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if self._chunked else piece)
        if not self._paused and transport.get_write_buffer_size() > RELAY_HIGH_WATER:
            # A slow client: stop reading the engine until the client catches up.
            self._paused = True
            self._upstream.pause_reading()
            self._loop.call_later(RELAY_DRAIN_POLL_S, self._resume_when_drained)

    def _resume_when_drained(self) -> None:
        transport = self._transport
        assert transport is not None
        if not transport.is_closing() and transport.get_write_buffer_size() > RELAY_LOW_WATER:
            self._loop.call_later(RELAY_DRAIN_POLL_S, self._resume_when_drained)
            return
        self._paused = False
        self._upstream.resume_reading()
