"""The scraper's adapter reads vLLM (old and new names), SGLang and llama.cpp the same way."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web

from serving.engine_server import EngineServer, EngineServerConfig
from serving.fleet import free_port
from serving.metrics_adapter import STALE_WAITING, EngineMetrics, Scraper, normalise

FIX = Path(__file__).parent / "fixtures" / "engine_metrics"


def test_v1_old_names():
    m = normalise((FIX / "vllm_v1_old.txt").read_text(), at=1.0)
    assert (m.running, m.waiting) == (12, 5)
    assert m.kv_usage == 0.6
    assert (m.prefix_queries, m.prefix_hits) == (20480.0, 8192.0)
    assert m.kv_blocks_total == 28181
    assert m.kv_blocks_used(0) == round(0.6 * 28181)


def test_v1_new_names():
    m = normalise((FIX / "vllm_v1_new.txt").read_text(), at=1.0)
    assert (m.running, m.waiting) == (9, 5)
    assert m.kv_usage == 0.35
    assert (m.prefix_queries, m.prefix_hits) == (20480.0, 8192.0)
    assert m.kv_blocks_total == 28181


def test_v0_legacy():
    m = normalise((FIX / "vllm_v0_legacy.txt").read_text(), at=1.0)
    assert (m.running, m.waiting, m.kv_usage) == (7, 3, 0.4125)
    assert m.kv_blocks_total == 27910
    assert m.preemptions == 2.0


def test_sglang_names():
    m = normalise((FIX / "sglang.txt").read_text(), at=1.0)
    assert (m.running, m.waiting) == (11, 6)
    assert m.kv_usage == 0.42
    assert m.kv_blocks_total == 418128 // 16  # its token pool, in the router's 16-token blocks
    assert (m.prefix_queries, m.prefix_hits) == (65536.0, 24576.0)
    assert m.preemptions == 3.0  # retractions


def test_llamacpp_names_as_its_server_exposes_them():
    m = normalise((FIX / "llamacpp.txt").read_text(), at=1.0)
    assert (m.running, m.waiting) == (4, 4)
    # Queries are every prompt token: the computed ones plus the ones reused from cache.
    assert (m.prefix_queries, m.prefix_hits) == (95.0 + 161.0, 161.0)
    assert (m.kv_usage, m.kv_blocks_total) == (0.0, 0)  # not exposed: the router's default


def test_stale_is_saturated():
    fresh = EngineMetrics(running=2, waiting=1, kv_usage=0.1, kv_blocks_total=100, at=0.0)
    sat = fresh.saturated()
    assert sat.kv_usage == 1.0 and sat.waiting >= STALE_WAITING and sat.running == 2


def test_simulated_engine_speaks_both_dialects_and_scraper_marks_stale():
    async def main():
        servers = []
        for names in ("old", "new"):
            srv = EngineServer(EngineServerConfig(metric_names=names, kv_blocks=1000))
            runner = web.AppRunner(srv.app())
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            servers.append((runner, f"http://127.0.0.1:{port}"))
        targets = {i: url for i, (_, url) in enumerate(servers)}
        scraper = Scraper(lambda: targets, interval_s=0.05, stale_after_s=0.3)
        await scraper.start()
        try:
            await scraper.scrape_once()
            for i in targets:
                m, age = scraper.view(i)
                assert scraper.ok[i]
                assert m.kv_blocks_total == 1000 and m.kv_usage == 0.0 and age < 0.3
            # Engine 1 goes away: its metrics age and it must look saturated.
            await servers[1][0].cleanup()
            await asyncio.sleep(0.5)
            m, age = scraper.view(1, time.monotonic())
            assert not scraper.ok[1]
            assert age > 0.3 and m.kv_usage == 1.0 and m.waiting >= STALE_WAITING
            assert scraper.view(0)[0].kv_usage == 0.0
        finally:
            await scraper.stop()
            await servers[0][0].cleanup()

    asyncio.run(main())
