"""Open-loop replay: trace -> shots with rebuilt prefixes -> load against an endpoint."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
from aiohttp import web

from sandbox.replay.loadgen import run_load, summarize
from sandbox.replay.shots import workload_shots
from sandbox.workload import Workload
from serving.engine_server import EngineServer, EngineServerConfig
from serving.fleet import free_port
from serving.prompt_tokens import count_tokens, prefix_hashes


def _workload() -> Workload:
    n = 6
    return Workload(
        arrival_s=np.linspace(0.0, 1.0, n), prompt_tokens=np.full(n, 40, dtype=np.int64),
        output_tokens=np.full(n, 4, dtype=np.int64), max_tokens=np.full(n, 4, dtype=np.int64),
        prefix_hashes=tuple((7, 8) if i % 2 else (7, 9) for i in range(n)), name="tiny",
    )


def test_shots_scale_arrivals_cut_duration_and_keep_prefixes():
    shots = workload_shots(_workload(), rate_scale=2.0, duration=0.4, max_requests=100)
    assert [round(s.at, 2) for s in shots] == [0.0, 0.1, 0.2, 0.3]
    a, b, c = (s.prompt.encode() for s in shots[:3])
    assert count_tokens(a) == 40
    assert prefix_hashes(a)[0] == prefix_hashes(b)[0]  # shared first block (hash 7)
    assert prefix_hashes(a)[:2] == prefix_hashes(c)[:2]  # same (7, 9) prefix
    assert prefix_hashes(a)[1] != prefix_hashes(b)[1]


def test_a_trace_hash_over_several_blocks_shares_all_of_them():
    # Mooncake's hashes cover 512 tokens; the prompt text is built in 16-token blocks.
    w = replace(_workload(), prefix_block_tokens=32,
                prefix_hashes=tuple((7,) if i < 2 else (9,) for i in range(6)))
    a, b, c = (prefix_hashes(s.prompt.encode()) for s in workload_shots(w, 1.0, None, 3))
    assert len(a) == 2 and a == b  # 32 shared tokens: both 16-token blocks of a 40-token prompt
    assert a[0] != c[0]


def test_replay_against_simulated_engine():
    async def main():
        runner = web.AppRunner(EngineServer(EngineServerConfig(time_scale=0.5)).app())
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            shots = workload_shots(_workload(), 4.0, None, 100)
            results, wall = await run_load(f"http://127.0.0.1:{port}", shots, timeout_s=10)
            s = summarize(results, wall)
            assert s.ok == 6 and s.failed == 0
            assert all(r.tokens == 4 for r in results)
            assert s.ttft_ms["p50"] > 0 and s.tpot_ms["p50"] > 0
            results, _ = await run_load(f"http://127.0.0.1:{port}", shots, chat=True)
            assert all(r.ok and r.tokens == 4 for r in results)
        finally:
            await runner.cleanup()

    asyncio.run(main())
