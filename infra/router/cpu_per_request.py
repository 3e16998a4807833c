"""CPU time each router spends per request, under the router benchmark's load.

    .venv/bin/python infra/router/cpu_per_request.py [RATE] [SECONDS] [ROUNDS]

Latency on a shared 2-core machine moves with whatever else runs; the CPU a
router process burns per request moves much less, so this is the figure used to
compare hot-path changes (docs/router-http-stack.md). Same fake engines and load
as ``autopoiesis bench router``; the targets take turns in each round: our router,
the bare aiohttp pass-through proxy (``http_stack_proxies.py``, one engine) and the
Rust ``vllm-router`` when ``make bench-env`` has installed it. User CPU only
(``/proc/PID/stat`` utime): kernel time is mostly the same socket calls for all.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from pathlib import Path

from flows.bench.router import BenchConfig, spawn, start_targets, stop_all
from sandbox.replay.loadgen import poisson_shots, run_load, summarize
from serving.fleet import free_port, wait_healthy

HERE = Path(__file__).resolve().parent


def user_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK")


async def main(rate: float, seconds: float, rounds: int) -> None:
    cfg = BenchConfig(rates=(rate,))
    procs, info = await start_targets(cfg, print)
    try:
        pids = {"autopoiesis": info["ours"].popen.pid}
        urls = {"autopoiesis": info["targets"]["autopoiesis"]}
        port = free_port()
        bare = spawn("bare-aiohttp", [sys.executable, str(HERE / "http_stack_proxies.py"),
                                       "aiohttp", str(port), info["targets"]["direct"][0]],
                      f"http://127.0.0.1:{port}")
        procs.append(bare)
        if await wait_healthy(bare.url, 30, bare.popen):
            pids["bare-aiohttp"], urls["bare-aiohttp"] = bare.popen.pid, bare.url
        for p in procs:
            if p.name == "vllm-router" and "vllm-router" in info["targets"]:
                pids["vllm-router"], urls["vllm-router"] = p.popen.pid, p.url
        per_req: dict[str, list[float]] = {name: [] for name in urls}
        for url in urls.values():  # warm-up
            await run_load(url, poisson_shots(50, 1.0, seed=7))
        for k in range(rounds):
            shots = poisson_shots(rate, seconds, seed=k + 1)
            for name, url in urls.items():
                before = user_cpu_s(pids[name])
                results, wall = await run_load(url, shots)
                s = summarize(results, wall)
                per_req[name].append((user_cpu_s(pids[name]) - before) / s.requests * 1e6)
                await asyncio.sleep(0.3)
        for name, vals in per_req.items():
            print(f"{name:>13}: user CPU per request, median {statistics.median(vals):4.0f} us"
                  f"  (rounds: {', '.join(f'{v:.0f}' for v in vals)})")
    finally:
        stop_all(procs)


if __name__ == "__main__":
    from serving.process_tuning import install_uvloop

    args = [float(a) for a in sys.argv[1:]]
    install_uvloop()
    asyncio.run(main(args[0] if args else 200.0, args[1] if len(args) > 1 else 4.0,
                     int(args[2]) if len(args) > 2 else 4))
