"""Open-loop HTTP load generator for any OpenAI-compatible endpoint.

Requests are sent at their scheduled times whatever the server does (open loop:
a slow server does not slow the arrivals down, as with real users), streamed,
and timed at the client: TTFT is the time to the first chunk carrying a token,
TPOT the mean gap between later ones. Used by ``autopoiesis replay`` and the
router benchmark. Every run is bounded by its schedule plus ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp


@dataclass(frozen=True, slots=True)
class Shot:
    at: float
    """Seconds after the start of the run."""
    prompt: str
    max_tokens: int
    session_id: str = ""


@dataclass(slots=True)
class Result:
    at: float
    ok: bool
    status: int = 0
    ttft_s: float = math.nan
    tpot_s: float = math.nan
    e2e_s: float = math.nan
    tokens: int = 0
    lag_s: float = 0.0
    """How late the request was sent versus its schedule (load-generator overload)."""
    error: str = ""


@dataclass
class Summary:
    requests: int
    ok: int
    failed: int
    duration_s: float
    ttft_ms: dict[str, float] = field(default_factory=dict)
    tpot_ms: dict[str, float] = field(default_factory=dict)
    e2e_ms: dict[str, float] = field(default_factory=dict)
    throughput_rps: float = 0.0
    output_tok_s: float = 0.0
    max_send_lag_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    vals = sorted(v for v in values if v == v)
    if not vals:
        return math.nan
    pos = q / 100 * (len(vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


def summarize(results: Sequence[Result], duration_s: float) -> Summary:
    ok = [r for r in results if r.ok]

    def pcts(xs: list[float]) -> dict[str, float]:
        return {f"p{q}": percentile(xs, q) * 1000 for q in (50, 90, 99)} | {
            "mean": (sum(xs) / len(xs) * 1000) if xs else math.nan}

    errors = dict(Counter(r.error or f"HTTP {r.status}" for r in results if not r.ok))
    return Summary(
        requests=len(results), ok=len(ok), failed=len(results) - len(ok), duration_s=duration_s,
        ttft_ms=pcts([r.ttft_s for r in ok]),
        tpot_ms=pcts([r.tpot_s for r in ok if r.tpot_s == r.tpot_s]),
        e2e_ms=pcts([r.e2e_s for r in ok]),
        throughput_rps=len(ok) / duration_s if duration_s > 0 else 0.0,
        output_tok_s=sum(r.tokens for r in ok) / duration_s if duration_s > 0 else 0.0,
        max_send_lag_ms=max((r.lag_s for r in results), default=0.0) * 1000,
        errors=errors,
    )


async def _one(session: aiohttp.ClientSession, url: str, shot: Shot, model: str, chat: bool,
               lag: float, extra: Mapping[str, object]) -> Result:
    if chat:
        body = {"model": model, "messages": [{"role": "user", "content": shot.prompt}],
                "max_tokens": shot.max_tokens, "stream": True}
    else:
        body = {"model": model, "prompt": shot.prompt, "max_tokens": shot.max_tokens,
                "stream": True}
    if shot.session_id:
        body["user"] = shot.session_id
    body.update(extra)
    res = Result(at=shot.at, ok=False, lag_s=lag)
    t0 = time.perf_counter()
    first = last = math.nan
    tokens = 0
    done = False
    try:
        async with session.post(url, json=body) as resp:
            res.status = resp.status
            if resp.status != 200:
                await resp.read()
                res.error = f"HTTP {resp.status}"
                return res
            buf = b""
            async for chunk in resp.content.iter_any():
                now = time.perf_counter()
                buf += chunk
                # Complete SSE events only; a partial one waits for the next chunk.
                *events, buf = buf.split(b"\n\n")
                for ev in events:
                    if not ev.startswith(b"data:"):
                        continue
                    payload = ev[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                    elif payload.startswith(b'{"error"'):
                        res.error = "error event"
                    elif b'"text":"' in payload or b'"content":"' in payload:
                        if b'"content":""' in payload and b'"role"' in payload:
                            continue  # the chat role chunk carries no token
                        tokens += 1
                        if first != first:
                            first = now
                        last = now
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        res.error = type(e).__name__
        return res
    res.e2e_s = time.perf_counter() - t0
    res.tokens = tokens
    res.ttft_s = first - t0
    res.tpot_s = (last - first) / (tokens - 1) if tokens > 1 else math.nan
    res.ok = done and not res.error
    if not done and not res.error:
        res.error = "no [DONE]"
    return res


async def run_load(
    base_url: str | Sequence[str],
    shots: Sequence[Shot],
    *,
    model: str = "llama-3-8b",
    chat: bool = False,
    timeout_s: float = 60.0,
    session: aiohttp.ClientSession | None = None,
    extra_body: Mapping[str, object] | None = None,
) -> tuple[list[Result], float]:
    """Send ``shots`` open-loop; returns the results (in schedule order) and wall seconds.

    Several base URLs are used in turn (the "direct to engines" baseline of a
    router benchmark spreads its load that way). ``extra_body`` is merged into every
    request (e.g. vLLM's ``ignore_eos``, so a real engine generates the trace's length).
    """
    path = "/v1/chat/completions" if chat else "/v1/completions"
    bases = [base_url] if isinstance(base_url, str) else list(base_url)
    urls = [b.rstrip("/") + path for b in bases]
    own = session is None
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task] = []
    # The client must not add pauses of its own to what it times: everything alive
    # before the run (schedule, earlier results) is kept out of the collector's scans.
    gc.collect()
    gc.freeze()
    start = loop.time()
    try:
        for i, shot in enumerate(shots):
            url = urls[i % len(urls)]
            delay = start + shot.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = loop.time() - (start + shot.at)
            tasks.append(asyncio.create_task(
                _one(session, url, shot, model, chat, lag, extra_body or {})))
        results = list(await asyncio.gather(*tasks))
    finally:
        # Cancelled or failed part-way: no request outlives the run.
        for t in tasks:
            t.cancel()
        gc.unfreeze()
        if own:
            await session.close()
    return results, loop.time() - start


def poisson_shots(rate: float, duration_s: float, *, prompt_tokens: int = 64,
                  max_tokens: int = 16, seed: int = 0) -> list[Shot]:
    """Poisson arrivals at ``rate`` req/s for ``duration_s``; prompts unique per request."""
    import random

    from serving.prompt_tokens import synth_prompt

    rng = random.Random(seed)
    shots, t, i = [], 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return shots
        shots.append(Shot(t, synth_prompt(prompt_tokens, salt=seed * 1_000_003 + i), max_tokens))
        i += 1
