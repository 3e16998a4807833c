"""Router benchmark: added TTFT over direct-to-engine, at several rates, plus policy swaps.

One run starts two engines -- fast fake ones (``serving.engine_server
--fake-itl-s``), or real llama.cpp ones on CPU (``serving.llamacpp``,
SmolLM2-135M, generating exactly ``output_tokens``: ``ignore_eos``) -- our router
as its own process, and -- when a ``vllm-router`` executable is found (``make
bench-env`` installs the PyPI package into ``.venv-bench``) -- the
Rust ``vllm-router`` in front of the same engines. At each rate the same
Poisson schedules are sent, streaming, directly to the engines (alternating) and
through each router, interleaved in short rounds; the added TTFT is the router's
percentile minus the direct one. Then, at ``swap_rate``, a policy swap is made
through the admin API every second while the load runs: every request must
succeed, and each swap's load-and-swap time is recorded. The load generator
runs in this process; all servers are separate processes on loopback ports,
stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp

from sandbox.replay.loadgen import Shot, percentile, poisson_shots, run_load, summarize
from serving.fleet import free_port, wait_healthy
from serving.policy_loader import builtin_source
from serving.prompt_tokens import synth_prompt

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchConfig:
    rates: Sequence[float] = (50, 100, 200, 500, 1000)
    duration_s: float = 5.0
    rounds: int = 3
    """Each rate's ``duration_s`` is cut into this many windows, sent to every target in
    turn (direct, ours, Rust, direct, ...), and percentiles are taken over the pooled
    windows: load from outside the benchmark (a shared machine) then falls on all
    targets alike instead of on whichever one it happened to coincide with."""
    output_tokens: int = 16
    prompt_tokens: int = 64
    fake_itl_s: float = 0.001
    swap_rate: float = 200.0
    swap_duration_s: float = 6.0
    policy: str = "least_outstanding"
    engines: str = "fake"
    """``fake`` (instant prefill, ``fake_itl_s`` per token) or ``llamacpp`` (real, CPU)."""
    rust_router: str | None = "auto"
    """Path of a ``vllm-router`` executable, ``auto`` to look for one, None to skip."""
    seed: int = 0


@dataclass
class Proc:
    name: str
    url: str
    popen: subprocess.Popen
    extra: dict = field(default_factory=dict)


def find_rust_router() -> str | None:
    for cand in (REPO / ".venv-bench" / "bin" / "vllm-router", shutil.which("vllm-router")):
        if cand and Path(cand).exists():
            return str(cand)
    return None


def spawn(name: str, cmd: list[str], url: str) -> Proc:
    """Start ``cmd`` (one benchmark target) in the repository, quiet."""
    popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=REPO,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Proc(name, url, popen)


def stop_all(procs: Sequence[Proc]) -> None:
    """Terminate every process, then kill whatever is still up after 5 s."""
    for p in procs:
        if p.popen.poll() is None:
            p.popen.terminate()
    for p in procs:
        try:
            p.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


async def start_targets(cfg: BenchConfig, log: Callable[[str], None]) -> tuple[list[Proc], dict]:
    """Two engines, our router in front of them and, if found, the Rust vllm-router."""
    procs: list[Proc] = []
    engines = []
    for _ in range(2):
        port = free_port()
        engines.append(spawn(cfg.engines, _engine_command(cfg, port),
                              f"http://127.0.0.1:{port}"))
    procs += engines
    for e in engines:
        if not await wait_healthy(e.url, 120, e.popen):
            stop_all(procs)
            raise RuntimeError(f"{cfg.engines} engine did not start")
    port, admin_port = free_port(), free_port()
    token = "bench-" + hashlib.sha256(os.urandom(16)).hexdigest()[:16]
    ours = spawn("autopoiesis", [
        sys.executable, "-m", "serving.serve", "--port", str(port), "--admin-port",
        str(admin_port), "--admin-token", token, "--policy", cfg.policy, "--no-reschedule",
        *[a for e in engines for a in ("--engine-url", e.url)]], f"http://127.0.0.1:{port}")
    ours.extra = {"admin": f"http://127.0.0.1:{admin_port}", "token": token}
    procs.append(ours)
    targets = {"direct": [e.url for e in engines], "autopoiesis": ours.url}
    if not await wait_healthy(ours.url, 30, ours.popen):
        raise RuntimeError("router did not start")
    rust = find_rust_router() if cfg.rust_router == "auto" else cfg.rust_router
    if rust:
        port = free_port()
        prom_port = free_port()
        rr = spawn("vllm-router", [
            rust, "--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin",
            "--prometheus-port", str(prom_port), "--prometheus-host", "127.0.0.1",
            "--log-level", "error", "--worker-urls", *[e.url for e in engines]],
            f"http://127.0.0.1:{port}")
        procs.append(rr)
        if await wait_healthy(rr.url, 60, rr.popen):
            targets["vllm-router"] = rr.url
        else:
            log(f"vllm-router at {rust} did not become healthy; skipped")
    else:
        log("no vllm-router executable found (run `make bench-env`); Rust comparison skipped")
    return procs, {"targets": targets, "ours": ours}


def _engine_command(cfg: BenchConfig, port: int) -> list[str]:
    if cfg.engines == "llamacpp":
        return [sys.executable, "-m", "serving.llamacpp", "--port", str(port)]
    if cfg.engines != "fake":
        raise ValueError(f"unknown engines {cfg.engines!r}: fake or llamacpp")
    return [sys.executable, "-m", "serving.engine_server", "--port", str(port),
            "--fake-itl-s", str(cfg.fake_itl_s), "--fake-ttft-s", "0"]


def _request_extras(cfg: BenchConfig) -> dict:
    # A real model may stop early; the same number of tokens for every target.
    return {"ignore_eos": True} if cfg.engines == "llamacpp" else {}


def _own_prompts(shots: Sequence[Shot], cfg: BenchConfig, salts: Iterator[int]) -> list[Shot]:
    """The same schedule with prompts no target has seen: a real engine's prompt cache
    (llama.cpp keeps past prompts' KV) must not serve one target from another's run."""
    return [replace(s, prompt=synth_prompt(cfg.prompt_tokens, salt=next(salts))) for s in shots]


async def _swap_under_load(cfg: BenchConfig, ours: Proc) -> dict:
    shots = poisson_shots(cfg.swap_rate, cfg.swap_duration_s, prompt_tokens=cfg.prompt_tokens,
                          max_tokens=cfg.output_tokens, seed=cfg.seed + 99)
    sources = [builtin_source(n) for n in ("round_robin", cfg.policy)]
    swap_ms: list[float] = []
    server_ms: list[float] = []
    swap_errors = 0

    async def swapper() -> None:
        nonlocal swap_errors
        headers = {"Authorization": f"Bearer {ours.extra['token']}"}
        async with aiohttp.ClientSession() as s:
            i = 0
            t_end = time.monotonic() + cfg.swap_duration_s
            while time.monotonic() < t_end - 0.5:
                await asyncio.sleep(1.0)
                src = sources[i % 2]
                t0 = time.perf_counter()
                async with s.post(f"{ours.extra['admin']}/admin/policy", headers=headers, json={
                        "source": src, "sha256": hashlib.sha256(src.encode()).hexdigest(),
                        "version": f"bench-{i}"}) as resp:
                    body = await resp.json()
                swap_ms.append((time.perf_counter() - t0) * 1000)
                if resp.status == 200:
                    server_ms.append(body["swap_ms"])
                else:
                    swap_errors += 1
                i += 1

    (results, _), _ = await asyncio.gather(
        run_load(ours.url, shots, extra_body=_request_extras(cfg)), swapper())
    return {"rate": cfg.swap_rate, "swaps": len(server_ms), "swap_errors": swap_errors,
            "requests": len(results), "failed_requests": sum(not r.ok for r in results),
            "max_swap_ms": max(swap_ms, default=math.nan),
            "max_swap_server_ms": max(server_ms, default=math.nan),
            "p50_swap_ms": percentile(swap_ms, 50)}


async def _measure_rate(cfg: BenchConfig, rate: float, targets: dict,
                        salts: Iterator[int], log: Callable[[str], None]) -> dict:
    """TTFT percentiles of every target at ``rate``, over ``cfg.rounds`` interleaved windows."""
    extra = _request_extras(cfg)
    pooled: dict[str, list] = {name: [] for name in targets}
    walls = dict.fromkeys(targets, 0.0)
    for k in range(cfg.rounds):
        shots = poisson_shots(rate, cfg.duration_s / cfg.rounds,
                              prompt_tokens=cfg.prompt_tokens,
                              max_tokens=cfg.output_tokens,
                              seed=cfg.seed + int(rate) + 1000 * k)
        for name, url in targets.items():
            results, wall = await run_load(url, _own_prompts(shots, cfg, salts),
                                           extra_body=extra)
            pooled[name] += results
            walls[name] += wall
            await asyncio.sleep(0.3)
    row: dict = {"rate": rate}
    for name in targets:
        s = summarize(pooled[name], walls[name])
        row[name] = {"ttft_p50_ms": s.ttft_ms["p50"], "ttft_p99_ms": s.ttft_ms["p99"],
                     "failed": s.failed, "requests": s.requests,
                     "max_send_lag_ms": s.max_send_lag_ms, "errors": s.errors}
        log(f"rate {rate:>6} {name:<12} ttft p50 {s.ttft_ms['p50']:7.2f} ms  "
            f"p99 {s.ttft_ms['p99']:7.2f} ms  failed {s.failed}/{s.requests}")
    return row


def _added_latency(cfg: BenchConfig, per_rate: list[dict], name: str) -> dict:
    """What target ``name`` adds over direct load, per rate, and the highest rate up to
    which every rate passed (under 1 % failures, at most 10 ms added p99)."""
    added50, added99, fails = [], [], []
    for row in per_rate:
        d, r = row["direct"], row[name]
        added50.append(r["ttft_p50_ms"] - d["ttft_p50_ms"])
        added99.append(r["ttft_p99_ms"] - d["ttft_p99_ms"])
        fails.append(r["failed"])
    best = None  # the highest rate up to which every rate passed
    for rate, a99, f, row in zip(cfg.rates, added99, fails, per_rate, strict=True):
        if f >= 0.01 * row[name]["requests"] or a99 > 10.0:
            break
        best = rate
    return {"added_ttft_p50_ms": added50, "added_ttft_p99_ms": added99,
            "failures": fails, "max_rate_no_failures": best}


async def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    procs, info = await start_targets(cfg, log)
    targets: dict = info["targets"]
    out: dict = {"rates": list(cfg.rates), "targets": list(targets), "per_rate": [],
                 "config": {"duration_s": cfg.duration_s, "output_tokens": cfg.output_tokens,
                            "prompt_tokens": cfg.prompt_tokens, "fake_itl_s": cfg.fake_itl_s,
                            "policy": cfg.policy, "rounds": cfg.rounds,
                            "engines": cfg.engines, "cpus": os.cpu_count()}}
    extra = _request_extras(cfg)
    salts = itertools.count(1)
    try:
        # Warm connections and code paths before measuring.
        warm = poisson_shots(min(50.0, 4 * min(cfg.rates)), 1.0, max_tokens=cfg.output_tokens,
                             seed=7)
        for url in targets.values():
            await run_load(url, warm, extra_body=extra)
        for rate in cfg.rates:
            out["per_rate"].append(await _measure_rate(cfg, rate, targets, salts, log))
        for name in targets:
            if name == "direct":
                continue
            entry = _added_latency(cfg, out["per_rate"], name)
            if name == "autopoiesis":
                out.update(entry)
            else:
                out[name.replace("-", "_")] = entry
        if cfg.swap_duration_s > 0:
            out["swap"] = await _swap_under_load(cfg, info["ours"])
            log(f"swap: {out['swap']}")
        else:
            out["swap"] = None
    finally:
        stop_all(procs)
    return out


def run(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict:
    from serving.process_tuning import install_uvloop

    install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run_bench(cfg, log))
    raise SystemExit(130)
