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

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from serving import prom
from serving.engine import EngineConfig, ReferenceEngine, Sequence
from serving.hardware import cold_start_s, kv_block_capacity
from serving.process_tuning import install_uvloop
from serving.prompt import BLOCK_TOKENS, count_tokens, prefix_hashes, prompt_bytes
from serving.steptime import step_time_model

MetricNames = Literal["new", "old"]
FaultMode = Literal["healthy", "refuse", "die", "crash"]

# vLLM V1's histogram buckets (vllm/v1/metrics/loggers.py), so dashboards and
# the scraper see the same resolution as on a real engine.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
               2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


@dataclass(frozen=True)
class EngineServerConfig:
    model: str = "llama-3-8b"
    """Engine model's model name (hardware catalogue key)."""
    served_model_name: str = ""
    """What ``/v1/models`` reports and requests must name; defaults to ``model``."""
    gpu: str = "H100"
    tp: int = 1
    time_scale: float = 1.0
    """Wall seconds per model second: 0.1 runs the engine ten times faster than real."""
    cold_start_s: float | None = 0.0
    """Wall seconds ``/health`` answers 503 after start; None: the hardware model's
    cold start (weights over load bandwidth + init) times ``time_scale``."""
    metric_names: MetricNames = "new"
    """``new``: vLLM >= 0.10 names (kv_cache_usage_perc, prefix_cache_*);
    ``old``: V1 before that (gpu_cache_usage_perc, gpu_prefix_cache_*)."""
    default_max_tokens: int = 0
    """Output length when a request gives no max_tokens; 0 samples one (mean 128)."""
    kv_blocks: int | None = None
    """Override the KV capacity (blocks); None: derived from GPU memory."""
    fake_itl_s: float | None = None
    """Skip the engine model: first token after ``fake_ttft_s``, then one every
    ``fake_itl_s`` wall seconds."""
    fake_ttft_s: float = 0.0
    fault: FaultMode = "healthy"
    """The fault injected from the start (``FaultInjection.mode``)."""
    die_after_tokens: int = 2
    """With fault ``die``: each stream is cut after this many tokens."""
    seed: int = 0
    engine_config: EngineConfig = field(default_factory=EngineConfig)


@dataclass
class FaultInjection:
    """The failure a server is told to act out (``/sim/fault``, tests, drills).

    The one part of an engine server that changes while it runs, so it is its own
    object, owned by the server; the configuration it starts from stays frozen.
    """

    mode: FaultMode = "healthy"
    die_after_tokens: int = 2
    """With mode ``die``: each stream is cut after this many tokens."""


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
        # Counters and histograms exposed on /metrics.
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.success = {"length": 0, "stop": 0, "abort": 0}
        self.ttft = prom.Histogram(TTFT_BUCKETS)
        self.itl = prom.Histogram(ITL_BUCKETS)
        self.e2e = prom.Histogram(E2E_BUCKETS)

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
            return _error(503, "engine unavailable", "ServiceUnavailableError")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return _error(400, "request body must be a JSON object", "BadRequestError")
        if body.get("model", self.name) != self.name:
            return _error(404, f"The model `{body.get('model')}` does not exist.",
                          "NotFoundError")
        data = prompt_bytes(body)
        prompt = count_tokens(data)
        output = self._output_len(body)
        rid = next(self._ids)
        seq = Sequence(rid=rid, prompt=prompt, output=output, arrival=0.0,
                       hashes=prefix_hashes(data))
        if self.engine is not None and not self.engine.fits(seq):
            return _error(400, f"This model's maximum context is exceeded: {prompt} prompt "
                          f"tokens + {output} output tokens", "BadRequestError")
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.prompt_tokens_total += prompt
        st = _Stream(seq)
        self._streams[rid] = st
        start = asyncio.get_running_loop().time()
        try:
            if self.engine is None:
                feed = self._fake_tokens(st)
            else:
                self.prefix_queries += prompt
                hit = self.engine.cache.match(seq.hashes, (prompt - 1) // BLOCK_TOKENS)
                self.prefix_hits += hit * BLOCK_TOKENS
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
        self.success["abort"] += 1

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

    def _record(self, st: _Stream, start: float, first: float, last: float) -> None:
        n = st.seq.output
        self.generation_tokens_total += n
        self.success["length"] += 1
        self.ttft.observe(first - start)
        if n > 1:
            self.itl.observe((last - first) / (n - 1))
        self.e2e.observe(last - start)

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
                        parts.append(_sse(_chat_chunk(rid, created, self.name,
                                                      {"role": "assistant", "content": ""})))
                    parts.append(_sse(_chunk(rid, created, self.name, chat, sent, finish)))
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
                     "usage": _usage(st.seq.prompt, out)}
            await resp.write(_sse(usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self._record(st, start, first or start, last)
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
            return _error(500, "engine failed", "InternalServerError")
        text = "".join(_token(i) for i in range(1, st.seq.output + 1))
        created = int(time.time())
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": "length"}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            obj = "text_completion"
        self._record(st, start, first or start, last or start)
        return web.json_response({"id": rid, "object": obj, "created": created,
                                  "model": self.name, "choices": [choice],
                                  "usage": _usage(st.seq.prompt, st.seq.output)})

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
            return _error(400, "mode must be healthy, refuse, die or crash", "BadRequestError")
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
        """vLLM V1's metric names and label set (model_name, engine)."""
        old = self.config.metric_names == "old"
        lab = {"engine": "0", "model_name": self.name}
        running, waiting, used = self.snapshot()
        kv_name = "vllm:gpu_cache_usage_perc" if old else "vllm:kv_cache_usage_perc"
        pq = "vllm:gpu_prefix_cache_queries" if old else "vllm:prefix_cache_queries"
        ph = "vllm:gpu_prefix_cache_hits" if old else "vllm:prefix_cache_hits"
        ecfg = self.config.engine_config
        out = [
            prom.header("vllm:num_requests_running", "gauge",
                        "Number of requests in model execution batches."),
            prom.sample("vllm:num_requests_running", running, lab),
            prom.header("vllm:num_requests_waiting", "gauge",
                        "Number of requests waiting to be processed."),
            prom.sample("vllm:num_requests_waiting", waiting, lab),
            prom.header(kv_name, "gauge", "KV-cache usage. 1 means 100 percent usage."),
            prom.sample(kv_name, used / self.kv_blocks if self.kv_blocks else 0.0, lab),
            prom.header(f"{pq}_total", "counter",
                        "Prefix cache queries, in terms of number of queried tokens."),
            prom.sample(f"{pq}_total", self.prefix_queries, lab),
            prom.header(f"{ph}_total", "counter",
                        "Prefix cache hits, in terms of number of cached tokens."),
            prom.sample(f"{ph}_total", self.prefix_hits, lab),
            prom.header("vllm:num_preemptions_total", "counter",
                        "Cumulative number of preemption from the engine."),
            prom.sample("vllm:num_preemptions_total",
                        self.engine.preemptions if self.engine else 0, lab),
            prom.header("vllm:prompt_tokens_total", "counter",
                        "Number of prefill tokens processed."),
            prom.sample("vllm:prompt_tokens_total", self.prompt_tokens_total, lab),
            prom.header("vllm:generation_tokens_total", "counter",
                        "Number of generation tokens processed."),
            prom.sample("vllm:generation_tokens_total", self.generation_tokens_total, lab),
            prom.header("vllm:request_success_total", "counter",
                        "Count of successfully processed requests."),
            *(prom.sample("vllm:request_success_total", v, {**lab, "finished_reason": k})
              for k, v in self.success.items()),
            prom.header("vllm:cache_config_info", "gauge",
                        "Information of the LLMEngine CacheConfig"),
            prom.sample("vllm:cache_config_info", 1.0, {
                "block_size": str(ecfg.block_size),
                "enable_prefix_caching": str(ecfg.enable_prefix_caching),
                "gpu_memory_utilization": str(ecfg.gpu_memory_utilization),
                "num_gpu_blocks": str(self.kv_blocks), "engine": "0"}),
            prom.header("vllm:time_to_first_token_seconds", "histogram",
                        "Histogram of time to first token in seconds."),
            self.ttft.render("vllm:time_to_first_token_seconds", lab),
            prom.header("vllm:e2e_request_latency_seconds", "histogram",
                        "Histogram of e2e request latency in seconds."),
            self.e2e.render("vllm:e2e_request_latency_seconds", lab),
        ]
        itl = "vllm:time_per_output_token_seconds" if old else "vllm:inter_token_latency_seconds"
        out += [prom.header(itl, "histogram", "Histogram of inter-token latency in seconds."),
                self.itl.render(itl, lab)]
        return "".join(out)


# -- OpenAI wire format -------------------------------------------------------------


def _token(i: int) -> str:
    # Deterministic token text, so byte-for-byte passthrough checks have something to compare.
    return f" t{i}"


def _usage(prompt: int, output: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": output,
            "total_tokens": prompt + output}


def _chat_chunk(rid: str, created: int, model: str, delta: dict,
                finish: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}


def _chunk(rid: str, created: int, model: str, chat: bool, i: int, finish: str | None) -> dict:
    if chat:
        return _chat_chunk(rid, created, model, {"content": _token(i)}, finish)
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": _token(i), "logprobs": None,
                         "finish_reason": finish}]}


def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _error(status: int, message: str, kind: str) -> web.Response:
    # vLLM's error body shape (ErrorResponse).
    return web.json_response({"error": {"message": message, "type": kind, "param": None,
                                        "code": status}}, status=status)


# -- command line --------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[EngineServerConfig, str, int]:
    p = argparse.ArgumentParser(description="Simulated vLLM engine (OpenAI-compatible).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--served-model-name", default="")
    p.add_argument("--gpu", default="H100")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--cold-start-s", type=float, default=0.0,
                   help="wall seconds of 503 on /health; negative: the hardware model's")
    p.add_argument("--metric-names", choices=("new", "old"), default="new")
    p.add_argument("--default-max-tokens", type=int, default=0)
    p.add_argument("--kv-blocks", type=int, default=None)
    p.add_argument("--fake-itl-s", type=float, default=None)
    p.add_argument("--fake-ttft-s", type=float, default=0.0)
    p.add_argument("--fault", choices=("healthy", "refuse", "die"), default="healthy")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg = EngineServerConfig(
        model=a.model, served_model_name=a.served_model_name, gpu=a.gpu, tp=a.tp,
        time_scale=a.time_scale, cold_start_s=None if a.cold_start_s < 0 else a.cold_start_s,
        metric_names=a.metric_names, default_max_tokens=a.default_max_tokens,
        kv_blocks=a.kv_blocks, fake_itl_s=a.fake_itl_s, fake_ttft_s=a.fake_ttft_s,
        fault=a.fault, seed=a.seed)
    return cfg, a.host, a.port


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
