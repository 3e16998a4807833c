"""Added TTFT of bare pass-through proxies on each HTTP stack (see http_stack_proxies.py).

    .venv/bin/python infra/router/http_stack_bench.py   (needs `make bench-env` for starlette)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from sandbox.replay.loadgen import poisson_shots, run_load, summarize
from serving.fleet import free_port, wait_healthy

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RATES = (200, 500)
DURATION = 4.0


async def main() -> None:
    procs = []
    try:
        eport = free_port()
        engine = f"http://127.0.0.1:{eport}"
        procs.append(subprocess.Popen([sys.executable, "-m", "serving.engine_server", "--port",
                                       str(eport), "--fake-itl-s", "0.001"], cwd=REPO))
        await wait_healthy(engine, 30)
        targets = {"direct": engine}
        for stack, py in (("aiohttp", sys.executable),
                          ("starlette+uvicorn+httpx", str(REPO / ".venv-bench/bin/python"))):
            port = free_port()
            procs.append(subprocess.Popen(
                [py, str(HERE / "http_stack_proxies.py"), stack.split("+")[0], str(port),
                 engine], cwd=REPO, stderr=subprocess.DEVNULL))
            if await wait_healthy(f"http://127.0.0.1:{port}", 30):
                targets[stack] = f"http://127.0.0.1:{port}"
        for url in targets.values():
            await run_load(url, poisson_shots(50, 1.0, seed=1))
        out = {}
        for rate in RATES:
            shots = poisson_shots(rate, DURATION, seed=rate)
            for name, url in targets.items():
                s = summarize(*await run_load(url, shots))
                out[f"{name}@{rate}"] = {"ttft_p50_ms": round(s.ttft_ms["p50"], 2),
                                         "ttft_p99_ms": round(s.ttft_ms["p99"], 2),
                                         "failed": s.failed}
                print(name, rate, out[f"{name}@{rate}"], flush=True)
        print(json.dumps(out, indent=1))
    finally:
        for p in procs:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    asyncio.run(main())
