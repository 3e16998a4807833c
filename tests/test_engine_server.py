"""The simulated engine: OpenAI wire format, real-time token timing, health, faults."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from serving.engine_server import EngineServer, EngineServerConfig
from serving.fleet import free_port
from serving.prompt_tokens import count_tokens, prefix_hashes, synth_prompt


async def _serve(cfg: EngineServerConfig) -> tuple[EngineServer, web.AppRunner, str]:
    srv = EngineServer(cfg)
    runner = web.AppRunner(srv.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return srv, runner, f"http://127.0.0.1:{port}"


def _events(raw: bytes) -> list[bytes]:
    return [e[6:] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


def test_prompt_hashes_follow_shared_prefixes():
    a = synth_prompt(64, (1, 2, 3), salt=1).encode()
    b = synth_prompt(64, (1, 2, 9), salt=2).encode()
    assert count_tokens(a) == 64
    ha, hb = prefix_hashes(a), prefix_hashes(b)
    assert ha[:2] == hb[:2] and ha[2] != hb[2]


def test_streams_tokens_at_engine_step_times_and_counts_prefix_hits():
    async def main():
        srv, runner, url = await _serve(EngineServerConfig(time_scale=1.0))
        try:
            async with aiohttp.ClientSession() as s:
                prompt = synth_prompt(256, tuple(range(16)))
                for _ in range(2):
                    async with s.post(f"{url}/v1/completions", json={
                            "model": "llama-3-8b", "prompt": prompt, "max_tokens": 8,
                            "stream": True}) as r:
                        assert r.status == 200
                        assert r.headers["Content-Type"].startswith("text/event-stream")
                        raw = await r.read()
                ev = _events(raw)
                assert ev[-1] == b"[DONE]"
                chunks = [json.loads(e) for e in ev[:-1]]
                assert [c["choices"][0]["text"] for c in chunks] == [f" t{i}" for i in
                                                                     range(1, 9)]
                assert chunks[-1]["choices"][0]["finish_reason"] == "length"
                async with s.post(f"{url}/v1/chat/completions", json={
                        "model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 3}) as r:
                    body = await r.json()
                assert body["choices"][0]["message"]["content"] == " t1 t2 t3"
                assert body["usage"]["completion_tokens"] == 3
                async with s.get(f"{url}/metrics") as r:
                    text = await r.text()
            # Second identical prompt hits the 15 cached full blocks (the last
            # token is always recomputed, as in vLLM).
            assert srv.metrics.prefix_hits == 15 * 16
            assert "vllm:prefix_cache_hits_total" in text
            assert "vllm:kv_cache_usage_perc" in text
            assert srv.metrics.ttft.count == 3
            # Real engine-model timing: an 8B decode step on an H100 is milliseconds.
            itl = srv.metrics.itl.total / srv.metrics.itl.count
            assert 0.002 < itl < 0.05
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_health_is_503_while_cold_starting():
    async def main():
        _, runner, url = await _serve(EngineServerConfig(cold_start_s=0.4))
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{url}/health") as r:
                    assert r.status == 503
                async with s.post(f"{url}/v1/completions",
                                  json={"prompt": "x", "max_tokens": 1}) as r:
                    assert r.status == 503
                await asyncio.sleep(0.5)
                async with s.get(f"{url}/health") as r:
                    assert r.status == 200
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_fault_injection_refuse_and_die():
    async def main():
        _, runner, url = await _serve(EngineServerConfig(fake_itl_s=0.002))
        try:
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{url}/sim/fault", json={"mode": "refuse"}) as r:
                    assert r.status == 200
                async with s.post(f"{url}/v1/completions",
                                  json={"prompt": "x", "max_tokens": 4}) as r:
                    assert r.status == 503
                    assert "error" in await r.json()
                async with s.post(f"{url}/sim/fault",
                                  json={"mode": "die", "die_after_tokens": 2}) as r:
                    assert r.status == 200
                got = b""
                try:
                    async with s.post(f"{url}/v1/completions", json={
                            "prompt": "x", "max_tokens": 10, "stream": True}) as r:
                        async for chunk in r.content.iter_any():
                            got += chunk
                    raised = False
                except aiohttp.ClientPayloadError:
                    raised = True
                assert raised
                assert b"[DONE]" not in got and b" t2" in got
        finally:
            await runner.cleanup()

    asyncio.run(main())
