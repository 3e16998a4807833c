"""Engine metrics: parse a ``/metrics`` page, normalise every engine's names, scrape.

The router reads vLLM, SGLang and llama.cpp engines, and vLLM under two
generations of names: V1 renamed its cache metrics (``vllm:gpu_cache_usage_perc``
became ``vllm:kv_cache_usage_perc``, ``vllm:gpu_prefix_cache_{queries,hits}``
became ``vllm:prefix_cache_{queries,hits}``), and engines of both generations
run in one fleet during an upgrade. This adapter is the one place that knows
all the spellings. What an engine does not expose stays 0 (llama.cpp reports no
KV-cache use; ``kv_blocks_total`` 0 lets the router assume its default).
A snapshot older than ``stale_after_s`` is reported as saturated: a replica
whose metrics stopped arriving is the last one a policy should pile requests onto.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from serving.prompt_tokens import BLOCK_TOKENS

# Normalised field -> where each engine reports it, newest spelling first. Each entry
# is a tuple of metric names added up; the first entry whose names are all present wins.
# Prefix-cache queries and hits count prompt tokens for every engine.
NAMES: dict[str, tuple[tuple[str, ...], ...]] = {
    "running": (
        ("vllm:num_requests_running",), ("sglang:num_running_reqs",),
        ("llamacpp:requests_processing",),
    ),
    "waiting": (
        ("vllm:num_requests_waiting",), ("sglang:num_queue_reqs",),
        ("llamacpp:requests_deferred",),
    ),
    "prefix_queries": (
        ("vllm:prefix_cache_queries_total",), ("vllm:gpu_prefix_cache_queries_total",),
        ("vllm:prefix_cache_queries",), ("vllm:gpu_prefix_cache_queries",),
        # SGLang counts every prompt token and the cached ones among them; llama.cpp
        # counts the prompt tokens it computed and, apart, the ones it reused.
        ("sglang:prompt_tokens_total",),
        ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"),
    ),
    "prefix_hits": (
        ("vllm:prefix_cache_hits_total",), ("vllm:gpu_prefix_cache_hits_total",),
        ("vllm:prefix_cache_hits",), ("vllm:gpu_prefix_cache_hits",),
        ("sglang:cached_tokens_total",), ("llamacpp:prompt_tokens_cached_total",),
    ),
    "preemptions": (
        ("vllm:num_preemptions_total",), ("vllm:num_preemptions",),
        ("sglang:num_retracted_requests_total",),  # SGLang's preemption is "retraction"
    ),
}
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")
"""Fraction of the KV cache in use (0..1); the fullest of several engines counts."""
SGLANG_KV_TOKENS = "sglang:max_total_num_tokens"
"""SGLang's KV pool in tokens; vLLM's is ``num_gpu_blocks`` on ``vllm:cache_config_info``."""

STALE_WAITING = 1024
"""Waiting requests reported for a replica whose metrics are stale."""


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    """Fraction of KV blocks in use, 0..1."""
    kv_blocks_total: int = 0
    """vLLM's ``num_gpu_blocks``, SGLang's token pool / 16; 0 when not exposed."""
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    preemptions: float = 0.0
    at: float = -math.inf
    """``time.monotonic()`` when scraped; -inf: never."""

    def age(self, now: float) -> float:
        return now - self.at

    def kv_blocks_used(self, default_total: int) -> int:
        total = self.kv_blocks_total or default_total
        return round(self.kv_usage * total)

    def saturated(self) -> EngineMetrics:
        """What a stale replica looks like to the policy: full cache, long queue."""
        return EngineMetrics(
            running=self.running, waiting=max(self.waiting, STALE_WAITING), kv_usage=1.0,
            kv_blocks_total=self.kv_blocks_total, prefix_queries=self.prefix_queries,
            prefix_hits=self.prefix_hits, preemptions=self.preemptions, at=self.at,
        )


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by metric name: a list of (labels, value). Comments are skipped."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        labels: dict[str, str] = {}
        brace = line.find("{")
        if brace >= 0:
            end = line.rfind("}")
            name = line[:brace]
            labels = _parse_labels(line[brace + 1 : end])
            rest = line[end + 1 :].split()
        else:
            name, *rest = line.split()
        if not rest:
            continue
        try:
            value = float(rest[0])  # a trailing timestamp, if any, is ignored
        except ValueError:
            continue
        out.setdefault(name, []).append((labels, value))
    return out


def _parse_labels(s: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    i, n = 0, len(s)
    while i < n:
        eq = s.find("=", i)
        if eq < 0:
            break
        key = s[i:eq].strip().lstrip(",").strip()
        j = eq + 1
        if j >= n or s[j] != '"':
            break
        j += 1
        buf = []
        while j < n and s[j] != '"':
            if s[j] == "\\" and j + 1 < n:
                nxt = s[j + 1]
                buf.append("\n" if nxt == "n" else nxt)
                j += 2
                continue
            buf.append(s[j])
            j += 1
        labels[key] = "".join(buf)
        i = j + 1
    return labels


def _first(samples: dict, alternatives: tuple[tuple[str, ...], ...]) -> float | None:
    for names in alternatives:
        if all(name in samples for name in names):
            # Several engines (data parallel) in one server: sum them up.
            return sum(v for name in names for _, v in samples[name])
    return None


def _kv_blocks_total(samples: dict) -> int:
    blocks = 0
    for labels, _ in samples.get("vllm:cache_config_info", ()):
        with contextlib.suppress(ValueError):
            blocks += int(labels.get("num_gpu_blocks", "0") or 0)
    # In the router's block size, the one its prefix index and the simulator use.
    blocks += sum(int(v) for _, v in samples.get(SGLANG_KV_TOKENS, ())) // BLOCK_TOKENS
    return blocks


def normalise(text: str, at: float | None = None) -> EngineMetrics:
    """One ``EngineMetrics`` from the text of a vLLM, SGLang or llama.cpp ``/metrics`` page."""
    samples = parse_prometheus(text)
    values = {k: _first(samples, names) for k, names in NAMES.items()}
    kv = next((samples[n] for n in KV_USAGE if n in samples), ())
    return EngineMetrics(
        running=int(values["running"] or 0),
        waiting=int(values["waiting"] or 0),
        kv_usage=float(max((v for _, v in kv), default=0.0)),
        kv_blocks_total=_kv_blocks_total(samples),
        prefix_queries=values["prefix_queries"] or 0.0,
        prefix_hits=values["prefix_hits"] or 0.0,
        preemptions=values["preemptions"] or 0.0,
        at=time.monotonic() if at is None else at,
    )


class Scraper:
    """Polls each engine's ``/metrics`` every ``interval_s``; keeps the latest snapshot.

    ``targets`` is called on every round, so engines added or removed by the fleet
    are picked up without restarting the scraper. ``on_round`` runs after each
    round (the router hooks its held-request drain and health bookkeeping there).
    """

    def __init__(
        self,
        targets: Callable[[], dict[int, str]],
        *,
        interval_s: float = 0.5,
        timeout_s: float = 1.0,
        stale_after_s: float = 3.0,
        on_round: Callable[[], None] | None = None,
    ) -> None:
        self.targets = targets
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.on_round = on_round
        self.latest: dict[int, EngineMetrics] = {}
        self.ok: dict[int, bool] = {}
        """Whether the last scrape of each target succeeded."""
        self.failures = 0
        self._task: asyncio.Task | None = None
        self._session: aiohttp.ClientSession | None = None

    def view(self, replica_id: int, now: float | None = None) -> tuple[EngineMetrics, float]:
        """The snapshot to show a policy (saturated when stale) and its age in seconds."""
        m = self.latest.get(replica_id)
        now = time.monotonic() if now is None else now
        if m is None:
            return EngineMetrics().saturated(), math.inf
        age = now - m.at
        return (m.saturated() if age > self.stale_after_s else m), age

    async def scrape_once(self) -> None:
        assert self._session is not None
        targets = self.targets()
        results = await asyncio.gather(
            *(self._scrape(rid, url) for rid, url in targets.items()), return_exceptions=True
        )
        for rid, res in zip(targets, results, strict=True):
            if isinstance(res, EngineMetrics):
                self.latest[rid] = res
                self.ok[rid] = True
            else:
                self.ok[rid] = False
                self.failures += 1
        for rid in list(self.latest):
            if rid not in targets:
                self.latest.pop(rid, None)
                self.ok.pop(rid, None)

    async def _scrape(self, rid: int, url: str) -> EngineMetrics:
        assert self._session is not None
        async with self._session.get(f"{url}/metrics") as resp:
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}")
            return normalise(await resp.text())

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.scrape_once()
            if self.on_round is not None:
                with contextlib.suppress(Exception):
                    self.on_round()
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
