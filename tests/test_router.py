"""The live router end to end, every server in-process on loopback ports."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from serving.engine_server import EngineServer, EngineServerConfig
from serving.fleet import StaticFleet, free_port
from serving.policy_loader import builtin_policy, builtin_source, load_policy
from serving.policy_runtime import PolicyRuntime
from serving.router import VERSION_HEADER, RouterConfig
from serving.serve import start_router
from serving.telemetry import read_telemetry

COMPLETION = {"model": "llama-3-8b", "prompt": "hello there", "max_tokens": 6, "stream": True}


async def _site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def cluster(n=2, policy=None, telemetry_dir=None, engine_cfg=None, upstreams=(),
                  model_name=""):
    runners, urls, servers = [], list(upstreams), []
    for _ in range(n):
        srv = EngineServer(engine_cfg() if engine_cfg else EngineServerConfig(fake_itl_s=0.002))
        runner, url = await _site(srv.app())
        runners.append(runner)
        urls.append(url)
        servers.append(srv)
    runtime = PolicyRuntime(policy or builtin_policy("least_outstanding"))
    running = await start_router(
        StaticFleet(urls), runtime,
        RouterConfig(telemetry_dir=telemetry_dir, scrape_interval_s=0.1,
                     monitor_interval_s=0.1, hold_timeout_s=2.0, model_name=model_name),
        admin_token="s3cret")
    try:
        yield running, servers, urls
    finally:
        await running.close()
        for r in runners:
            await r.cleanup()


def test_streaming_passthrough_is_byte_for_byte():
    # An upstream that streams odd-sized, event-splitting chunks: the router must
    # relay exactly these bytes, not re-frame them.
    pieces = [b"data: {\"choices\":[{\"text\":\"a", b"b\"}]}\n", b"\ndata: {\"choices\"",
              b":[{\"text\":\"\xc3\xa9\"}]}\n\n", b"data: [DO", b"NE]\n\n"]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for p in pieces:
            await resp.write(p)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main():
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        app.router.add_get("/health", health)
        runner, url = await _site(app)
        try:
            async with cluster(n=0, upstreams=[url]) as (running, _, _), \
                    aiohttp.ClientSession() as s, \
                    s.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                assert r.status == 200
                assert r.headers[VERSION_HEADER].startswith("least_outstanding@")
                got = await r.read()
            assert got == b"".join(pieces)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_slow_client_pauses_the_engine_and_still_gets_every_byte(monkeypatch):
    from serving.upstream import Exchange

    event = b"data: {\"choices\":[{\"text\":\"" + b"x" * 8000 + b"\"}]}\n\n"
    events = 2000  # 16 MB: more than loopback socket buffers hold

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(events):
            await resp.write(event)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    pauses = []
    pause = Exchange.pause_reading
    monkeypatch.setattr(Exchange, "pause_reading", lambda self: (pauses.append(1), pause(self)))

    async def main():
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        app.router.add_get("/health", health)
        runner, url = await _site(app)
        try:
            async with cluster(n=0, upstreams=[url]) as (running, _, _), \
                    aiohttp.ClientSession() as s, \
                    s.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                await asyncio.sleep(0.5)  # read nothing while the engine streams
                got = await r.read()
            assert got == event * events + b"data: [DONE]\n\n"
            assert pauses
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_engine_dying_mid_stream_gives_clean_error_and_failed_row(tmp_path: Path):
    async def main():
        async with cluster(telemetry_dir=tmp_path) as (running, servers, urls), \
                aiohttp.ClientSession() as s:
            servers[0].faults.mode = "die"
            servers[0].faults.die_after_tokens = 2
            # Pin routing: least-outstanding picks replica 0 first when both are idle.
            async with s.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                assert r.status == 200
                raw = await r.read()  # no exception: the router ends the stream cleanly
            assert b"upstream engine failed mid-stream" in raw and b"[DONE]" not in raw
            # The others keep serving.
            for _ in range(4):
                async with s.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                    assert r.status == 200
                    assert (await r.read()).endswith(b"data: [DONE]\n\n")
        rows = read_telemetry(tmp_path)
        assert len(rows) == 5
        bad = rows[rows.status == "error"]
        assert len(bad) == 1 and bad.iloc[0].replica == urls[0]
        assert (rows.status == "ok").sum() == 4
        assert set(rows[rows.status == "ok"].replica) == {urls[1]}

    asyncio.run(main())


def test_all_engines_down_gives_503_json(tmp_path: Path):
    async def main():
        async with cluster(telemetry_dir=tmp_path) as (running, servers, _), \
                aiohttp.ClientSession() as s:
            for srv in servers:
                srv.faults.mode = "crash"
            async with s.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                assert r.status == 503
                body = await r.json()
            assert body["error"]["code"] == 503
            async with s.get(f"{running.url}/health") as r:
                assert r.status == 503
        rows = read_telemetry(tmp_path)
        assert list(rows.status) == ["rejected"]

    asyncio.run(main())


RAISING = '''
from serving.contract import Param
PARAMS = {}
def route(request, replicas, now):
    raise RuntimeError("boom")
'''


def test_policy_that_raises_falls_back():
    async def main():
        async with cluster(policy=load_policy(RAISING, name="raising")) as (running, _, _), \
                aiohttp.ClientSession() as s:
            rt = running.router.runtime
            rt.max_consecutive_failures = 1000
            for _ in range(3):
                async with s.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                    assert r.status == 200
                    assert r.headers[VERSION_HEADER].startswith("baseline:")
                    await r.read()
            assert rt.fallbacks["exception"] == 3
            async with s.get(f"{running.url}/metrics") as r:
                text = await r.text()
            assert 'autopoiesis_policy_fallbacks_total{reason="exception"} 3.0' in text
            assert "vllm:" not in text

    asyncio.run(main())


def test_admin_auth_sha_swap_and_rollback():
    async def main():
        async with cluster() as (running, _, _), aiohttp.ClientSession() as s:
            admin = f"{running.admin_url}/admin/policy"
            good = {"Authorization": "Bearer s3cret"}
            async with s.get(admin) as r:
                assert r.status == 401
            async with s.get(admin, headers={"Authorization": "Bearer nope"}) as r:
                assert r.status == 401
            src = builtin_source("round_robin")
            sha = hashlib.sha256(src.encode()).hexdigest()
            async with s.post(admin, headers=good,
                              json={"source": src, "sha256": "0" * 64}) as r:
                assert r.status == 409
            async with s.post(admin, json={"source": src, "sha256": sha}) as r:
                assert r.status == 401
            async with s.post(admin, headers=good,
                              json={"registry_version": "3"}) as r:
                assert r.status == 501
            async with s.post(admin, headers=good,
                              json={"source": src, "sha256": sha, "version": "v2"}) as r:
                assert r.status == 200
                assert (await r.json())["current"]["sha256"] == sha
            async with s.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                assert r.headers[VERSION_HEADER] == "v2"
                await r.read()
            async with s.post(f"{running.admin_url}/admin/rollback", headers=good) as r:
                assert r.status == 200
                assert (await r.json())["current"]["name"] == "least_outstanding"
            async with s.get(admin, headers=good) as r:
                info = await r.json()
            assert info["previous"]["version"] == "v2" and info["swaps"] == 1

    asyncio.run(main())


def test_swap_mid_stream_keeps_version_of_inflight_request(tmp_path: Path):
    async def main():
        async with cluster(telemetry_dir=tmp_path) as (running, _, _), \
                aiohttp.ClientSession() as s:
            body = {**COMPLETION, "max_tokens": 30}
            async with s.post(f"{running.url}/v1/completions", json=body) as r:
                first = await r.content.readany()
                running.router.runtime.swap(builtin_policy("round_robin"), "v-new")
                rest = await r.read()
                assert r.headers[VERSION_HEADER].startswith("least_outstanding@")
            assert (first + rest).endswith(b"[DONE]\n\n")
            async with s.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                assert r.headers[VERSION_HEADER] == "v-new"
                await r.read()
        rows = read_telemetry(tmp_path)
        assert list(rows.policy_version.str[:5]) == ["least", "v-new"]
        assert list(rows.status) == ["ok", "ok"]

    asyncio.run(main())


def test_client_leaving_mid_stream_gives_cancelled_row_and_frees_the_replica(tmp_path: Path):
    async def main():
        async with cluster(telemetry_dir=tmp_path) as (running, _, _):
            body = {**COMPLETION, "max_tokens": 200}
            async with aiohttp.ClientSession() as s:
                r = await s.post(f"{running.url}/v1/completions", json=body)
                assert await r.content.readany()
                r.close()  # hang up mid-stream
            router = running.router
            for _ in range(100):
                if router.telemetry.requests.get("cancelled"):
                    break
                await asyncio.sleep(0.02)
            assert router.telemetry.requests == {"cancelled": 1}
            assert all(router.idle(rid) for rid in router.replicas)
            async with aiohttp.ClientSession() as s, \
                    s.post(f"{running.url}/v1/completions", json=COMPLETION) as r:
                assert (await r.read()).endswith(b"data: [DONE]\n\n")
        rows = read_telemetry(tmp_path)
        assert sorted(rows.status) == ["cancelled", "ok"]

    asyncio.run(main())


def test_streamed_usage_event_is_not_counted_as_a_token(tmp_path: Path):
    async def main():
        async with cluster(n=1, telemetry_dir=tmp_path) as (running, _, _), \
                aiohttp.ClientSession() as s:
            for path, body in (
                    ("completions", {**COMPLETION, "stream_options": {"include_usage": True}}),
                    ("chat/completions", {
                        "model": "llama-3-8b", "max_tokens": 6, "stream": True,
                        "stream_options": {"include_usage": True},
                        "messages": [{"role": "user", "content": "hi"}]})):
                async with s.post(f"{running.url}/v1/{path}", json=body) as r:
                    assert b'"completion_tokens":6' in await r.read()
        rows = read_telemetry(tmp_path)
        assert list(rows.output_tokens) == [6, 6]

    asyncio.run(main())


def test_telemetry_survives_clean_restart_complete(tmp_path: Path):
    async def burst(n: int) -> None:
        async with cluster(telemetry_dir=tmp_path) as (running, _, _), \
                aiohttp.ClientSession() as s:
            async def one(i: int) -> None:
                body = {**COMPLETION, "prompt": f"request {i} " * 20}
                async with s.post(f"{running.url}/v1/completions", json=body) as r:
                    await r.read()
            await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(burst(7))
    asyncio.run(burst(5))
    rows = read_telemetry(tmp_path)
    assert len(rows) == 12 and (rows.status == "ok").all()
    assert (rows.output_tokens == 6).all()
    assert rows.request_id.is_unique
    ok = rows.iloc[0]
    assert ok.prompt_tokens > 0 and len(ok.prefix_hashes) > 0
    assert not math.isnan(ok.ttft_s) and ok.e2e_s >= ok.ttft_s


def test_non_streaming_and_models_and_chat():
    async def main():
        async with cluster() as (running, _, _), aiohttp.ClientSession() as s:
            async with s.post(f"{running.url}/v1/chat/completions", json={
                    "model": "llama-3-8b", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "hi"}]}) as r:
                assert r.status == 200
                assert json.loads(await r.read())["usage"]["completion_tokens"] == 2
            async with s.get(f"{running.url}/v1/models") as r:
                assert (await r.json())["data"][0]["id"] == "llama-3-8b"
            async with s.post(f"{running.url}/v1/completions", data=b"not json") as r:
                assert r.status == 400

    asyncio.run(main())


def test_engine_metric_snapshots_are_stored_beside_telemetry(tmp_path: Path):
    import pyarrow.parquet as pq

    async def main():
        async with cluster(telemetry_dir=tmp_path) as _:
            await asyncio.sleep(0.35)  # a few scrape rounds and monitor ticks

    asyncio.run(main())
    files = sorted(tmp_path.glob("engine-metrics-*.parquet"))
    assert files
    table = pq.read_table(files[0])
    assert table.num_rows >= 2 and set(table.column("kv_blocks_total").to_pylist()) == {1}


def test_prefix_index_is_sized_to_the_replicas_kv_cache_as_in_the_simulator():
    from serving.planning import deployable_specs

    async def main():
        async with cluster(n=1, model_name="llama-3-8b") as (running, _, _):
            router = running.router
            handle = router.fleet.engines()[0]
            expected = deployable_specs("llama-3-8b", ["H100"])[handle.spec].kv_blocks
            ledger = router.accounting.ledger(handle.id)
            assert ledger.prefix_capacity == expected > 16384  # an H100 holds more than the default

    asyncio.run(main())
