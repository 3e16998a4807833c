"""A vLLM-compatible engine server for machines without GPUs.

It runs the token-by-token ``ReferenceEngine`` (the same engine model the
simulator uses) in real time: each engine step is slept for as long as the
step-time model says (times ``time_scale``), and every sequence that got a token
in that step has one SSE chunk written. So clients, the router and the metrics
scraper see the timing, batching, KV-cache pressure and prefix-cache hits a
vLLM engine of that GPU would produce.

Endpoints: ``/v1/completions`` and ``/v1/chat/completions`` (streaming or not),
``/v1/models``, ``/health`` (503 while "cold-starting"), ``/metrics`` (vLLM's
metric names, old or new spelling), ``/sim/fault`` (failure injection for tests
and drills). ``fake_itl_s`` replaces the engine model by fixed token timing: the
"fast fake engine" a router benchmark needs, where the engine must cost nothing.

Run one: ``python -m serving.engine_server --port 8001`` (or ``autopoiesis engine``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time

from aiohttp import web

from serving import prom
from serving.engine import ReferenceEngine, Sequence
from serving.engine_metrics import VllmMetrics
from serving.engine_server_config import EngineServerConfig, FaultInjection, parse_args
from serving.hardware import cold_start_s, kv_block_capacity
from serving.openai_wire import chat_chunk, chunk, error_response, sse, token_text, token_usage
from serving.process_tuning import install_uvloop
from serving.prompt_tokens import BLOCK_TOKENS, count_tokens, prefix_hashes, prompt_bytes
from serving.steptime import step_time_model


class _Stream:
    """One request's view of its sequence: tokens ready to send, and a wake-up."""

    __slots__ = ("event", "failed", "finished", "ready", "seq")

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.ready = 0
        self.finished = False
        self.failed = False
        self.event = asyncio.Event()


class EngineServer:
    def __init__(self, config: EngineServerConfig | None = None) -> None:
        self.config = cfg = config or EngineServerConfig()
        self.name = cfg.served_model_name or cfg.model
        self.fake = cfg.fake_itl_s is not None
        if self.fake:
            self.kv_blocks = cfg.kv_blocks or 1
            self.engine: ReferenceEngine | None = None
        else:
            self.kv_blocks = cfg.kv_blocks or kv_block_capacity(
                cfg.model, cfg.gpu, cfg.tp, cfg.engine_config.gpu_memory_utilization,
                cfg.engine_config.block_size,
            )
            self.engine = ReferenceEngine(
                cfg.engine_config, step_time_model(cfg.model, cfg.gpu, cfg.tp), self.kv_blocks
            )
        self.cold_s = (
            cold_start_s(cfg.model, cfg.gpu, cfg.tp) * cfg.time_scale
            if cfg.cold_start_s is None else cfg.cold_start_s
        )
        self.faults = FaultInjection(cfg.fault, cfg.die_after_tokens)
        self._rng = random.Random(cfg.seed)
        self._ids = itertools.count()
        self._streams: dict[int, _Stream] = {}
        self._fake_running = 0
        self._wake: asyncio.Event | None = None
        self._driver: asyncio.Task | None = None
        self._t0 = 0.0
        self._started_wall = 0.0
        self.metrics = VllmMetrics()

    # -- lifecycle ------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/sim/fault", self._set_fault)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._started_wall = time.monotonic()
        self._wake = asyncio.Event()
        if self.engine is not None:
            self._driver = asyncio.create_task(self._drive())

    async def _on_cleanup(self, _: web.Application) -> None:
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver

    def _now(self) -> float:
        """Model time: wall time since start divided by the time scale."""
        return (asyncio.get_running_loop().time() - self._t0) / self.config.time_scale

    @property
    def ready(self) -> bool:
        return time.monotonic() - self._started_wall >= self.cold_s

    # -- the real-time engine loop ------------------------------------------------------
    async def _drive(self) -> None:
        engine, scale = self.engine, self.config.time_scale
        assert engine is not None and self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if engine.idle:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = self._t0 + engine.step_end * scale - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if engine.idle:  # aborted while we slept
                continue
            # Steps run at model time: if this process falls behind the wall clock,
            # tokens stream late but the engine's own timeline stays exact.
            engine.on_step_end(engine.step_end)
            for seq in engine.emitted:
                st = self._streams.get(seq.rid)
                if st is None:
                    continue
                st.ready += 1
                if seq.generated == seq.output:
                    st.finished = True
                st.event.set()

    def _crash(self) -> None:
        """The engine dies: every sequence is lost and every open stream is cut."""
        if self.engine is not None:
            self.engine.abort()
        for st in self._streams.values():
            st.failed = True
            st.event.set()

    # -- request handling ------------------------------------------------------------
    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    def _output_len(self, body: dict) -> int:
        mt = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(mt, int) and not isinstance(mt, bool) and mt > 0:
            return mt
        if self.config.default_max_tokens > 0:
            return self.config.default_max_tokens
        return max(1, int(self._rng.expovariate(1 / 128)))

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        if self.faults.mode == "crash":
            # A dead engine accepts no connection; dropping it is the closest an
            # in-process server gets to "connection refused".
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if self.faults.mode == "refuse" or not self.ready:
            return error_response(503, "engine unavailable", "ServiceUnavailableError")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return error_response(400, "request body must be a JSON object", "BadRequestError")
        if body.get("model", self.name) != self.name:
            return error_response(404, f"The model `{body.get('model')}` does not exist.",
                          "NotFoundError")
        data = prompt_bytes(body)
        prompt = count_tokens(data)
        output = self._output_len(body)
        rid = next(self._ids)
        seq = Sequence(rid=rid, prompt=prompt, output=output, arrival=0.0,
                       hashes=prefix_hashes(data))
        if self.engine is not None and not self.engine.fits(seq):
            return error_response(400, f"This model's maximum context is exceeded: {prompt} prompt "
                          f"tokens + {output} output tokens", "BadRequestError")
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.metrics.prompt_tokens_total += prompt
        st = _Stream(seq)
        self._streams[rid] = st
        start = asyncio.get_running_loop().time()
        try:
            if self.engine is None:
                feed = self._fake_tokens(st)
            else:
                self.metrics.prefix_queries += prompt
                hit = self.engine.cache.match(seq.hashes, (prompt - 1) // BLOCK_TOKENS)
                self.metrics.prefix_hits += hit * BLOCK_TOKENS
                seq.arrival = self._now()
                self.engine.enqueue(seq, seq.arrival)
                assert self._wake is not None
                self._wake.set()
                feed = self._model_tokens(st)
            rid_s = f"{'chatcmpl' if chat else 'cmpl'}-{rid:x}"
            if stream:
                return await self._stream(request, feed, st, rid_s, chat, include_usage, start)
            return await self._whole(feed, st, rid_s, chat, start)
        finally:
            self._streams.pop(rid, None)
            if self.engine is not None and not st.finished and not st.failed:
                self._drop(seq)

    def _drop(self, seq: Sequence) -> None:
        """The client went away: free the sequence as vLLM aborts a request."""
        assert self.engine is not None
        self.engine.cancel(seq)
        self.metrics.success["abort"] += 1

    async def _model_tokens(self, st: _Stream):
        """Yield the number of new tokens each time the engine emits some."""
        sent = 0
        while True:
            if st.ready == sent and not st.failed:
                st.event.clear()
                await st.event.wait()
            if st.failed:
                raise ConnectionResetError("engine died")
            if st.ready > sent:
                n, sent = st.ready - sent, st.ready
                yield n
                if st.finished:
                    return

    async def _fake_tokens(self, st: _Stream):
        cfg = self.config
        self._fake_running += 1
        try:
            await asyncio.sleep(cfg.fake_ttft_s)
            for i in range(st.seq.output):
                if i:
                    await asyncio.sleep(cfg.fake_itl_s or 0.0)
                if st.failed:
                    raise ConnectionResetError("engine died")
                st.ready += 1
                if i == st.seq.output - 1:
                    st.finished = True
                yield 1
        finally:
            self._fake_running -= 1

    async def _stream(self, request: web.Request, feed, st: _Stream, rid: str, chat: bool,
                      include_usage: bool, start: float) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        created = int(time.time())
        sent = 0
        out = st.seq.output
        loop = asyncio.get_running_loop()
        first: float | None = None
        last = start
        fault_die = self.faults.mode == "die"
        try:
            async for n in feed:
                parts = []
                for _ in range(n):
                    sent += 1
                    finish = "length" if sent == out else None
                    if chat and sent == 1:
                        parts.append(sse(chat_chunk(rid, created, self.name,
                                                      {"role": "assistant", "content": ""})))
                    parts.append(sse(chunk(rid, created, self.name, chat, sent, finish)))
                await resp.write(b"".join(parts))
                last = loop.time()
                if first is None:
                    first = last
                if fault_die and sent >= self.faults.die_after_tokens and sent < out:
                    raise ConnectionResetError("injected mid-stream failure")
        except ConnectionResetError:
            # Cut the connection without a terminating chunk, as a crashed engine does.
            if request.transport is not None:
                request.transport.abort()
            st.failed = True
            return resp
        if include_usage:
            usage = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": created, "model": self.name, "choices": [],
                     "usage": token_usage(st.seq.prompt, out)}
            await resp.write(sse(usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self.metrics.record(st.seq.output, start, first or start, last)
        return resp

    async def _whole(self, feed, st: _Stream, rid: str, chat: bool,
                     start: float) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        first = last = None
        try:
            async for _ in feed:
                last = loop.time()
                first = first or last
        except ConnectionResetError:
            return error_response(500, "engine failed", "InternalServerError")
        text = "".join(token_text(i) for i in range(1, st.seq.output + 1))
        created = int(time.time())
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": "length"}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            obj = "text_completion"
        self.metrics.record(st.seq.output, start, first or start, last or start)
        return web.json_response({"id": rid, "object": obj, "created": created,
                                  "model": self.name, "choices": [choice],
                                  "usage": token_usage(st.seq.prompt, st.seq.output)})

    # -- other endpoints ------------------------------------------------------------
    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.name, "object": "model", "created": int(self._started_wall),
             "owned_by": "vllm", "root": self.name, "max_model_len": None}]})

    async def _health(self, _: web.Request) -> web.Response:
        if self.faults.mode == "crash" or not self.ready:
            return web.Response(status=503)
        return web.Response(status=200)

    async def _set_fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        mode = body.get("mode")
        if mode not in ("healthy", "refuse", "die", "crash"):
            return error_response(
                400, "mode must be healthy, refuse, die or crash", "BadRequestError"
            )
        if "die_after_tokens" in body:
            self.faults.die_after_tokens = int(body["die_after_tokens"])
        self.faults.mode = mode
        if mode == "crash":
            self._crash()
        return web.json_response({"mode": mode})

    def snapshot(self) -> tuple[int, int, int]:
        """(running, waiting, KV blocks used) now."""
        if self.engine is None:
            return self._fake_running, 0, 0
        return self.engine.snapshot(0.0)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.render_metrics().encode(),
                            headers={"Content-Type": prom.CONTENT_TYPE})

    def render_metrics(self) -> str:
        """The ``/metrics`` page (``VllmMetrics.render``)."""
        running, waiting, used = self.snapshot()
        return self.metrics.render(
            model_name=self.name,
            old_names=self.config.metric_names == "old",
            running=running,
            waiting=waiting,
            kv_used=used,
            kv_blocks=self.kv_blocks,
            preemptions=self.engine.preemptions if self.engine else 0,
            engine_config=self.config.engine_config,
        )


# -- command line --------------------------------------------------------------------


def run(config: EngineServerConfig, host: str = "127.0.0.1", port: int = 8001) -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    install_uvloop()
    web.run_app(EngineServer(config).app(), host=host, port=port, print=None,
                access_log=None, handle_signals=True)


def main(argv: list[str] | None = None) -> None:
    cfg, host, port = parse_args(argv)
    run(cfg, host, port)


if __name__ == "__main__":
    main()
