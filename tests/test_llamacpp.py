"""Real llama.cpp engines behind the router: streaming, real token counts, an engine killed.

The engine tests run SmolLM2-135M on CPU through ``serving.llamacpp`` (``make engines``
installs it); they skip without it, and fail instead under AUTOPOIESIS_REQUIRE_LLAMACPP
(set by ``.ci/run``). The parsing tests use chunks captured from that server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from serving.llamacpp import SMOLLM_ALIAS, LlamaCppConfig, LlamaCppFleet
from serving.policy_loader import builtin_policy
from serving.policy_runtime import PolicyRuntime
from serving.relay import engine_token_counts
from serving.router import RouterConfig
from serving.serve import start_router
from serving.telemetry import read_telemetry

# The last chunks of streams from llama.cpp's server (xllamacpp 2026.10), trimmed.
CHAT_LAST = (
    b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],'
    b'"object":"chat.completion.chunk","timings":{"cache_n":0,"prompt_n":32,'
    b'"prompt_ms":486.9,"predicted_n":5,"predicted_ms":85.3}}\n\ndata: [DONE]\n\n'
)
TEXT_LAST = (
    b'data: {"choices":[{"text":"","index":0,"finish_reason":"length"}],'
    b'"object":"text_completion","usage":{"completion_tokens":5,"prompt_tokens":4,'
    b'"total_tokens":9,"prompt_tokens_details":{"cached_tokens":3}},'
    b'"timings":{"cache_n":3,"prompt_n":1,"predicted_n":5}}\n\ndata: [DONE]\n\n'
)


def test_token_counts_from_usage_or_llamacpp_timings():
    assert engine_token_counts(TEXT_LAST) == (4, 5)  # usage wins over timings
    assert engine_token_counts(CHAT_LAST) == (32, 5)  # prompt_n + cache_n, predicted_n
    content = b'data: {"choices":[{"delta":{"content":"\\"prompt_tokens\\": 7"}}]}\n\n'
    assert engine_token_counts(content) == (None, None)  # text that only looks like a count




async def _post(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, bytes]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.read()


def _events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


async def _through_the_router(tmp_path) -> dict:
    """Requests of every kind, then a stream whose engine is killed, then more requests."""
    fleet = LlamaCppFleet(2, LlamaCppConfig(slots=2, ctx_per_slot=1024), log_dir=tmp_path / "log")
    await fleet.start()
    running = await start_router(
        fleet,
        PolicyRuntime(builtin_policy("least_outstanding")),
        RouterConfig(
            telemetry_dir=tmp_path / "telemetry",
            model_name=SMOLLM_ALIAS,
            scrape_interval_s=0.2,
            monitor_interval_s=0.2,
        ),
    )
    out: dict = {"urls": [e.url for e in fleet.engines()]}
    chat = {
        "model": SMOLLM_ALIAS,
        "max_tokens": 12,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Name three colours."}],
    }
    text = {
        "model": SMOLLM_ALIAS,
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
    }
    try:
        async with aiohttp.ClientSession() as s:
            v1 = f"{running.url}/v1"
            out["whole"] = await _post(s, f"{v1}/completions", text)
            out["text_stream"] = await _post(s, f"{v1}/completions", {**text, "stream": True})
            out["chat_stream"] = await _post(s, f"{v1}/chat/completions", {**chat, "stream": True})
            out["scraped"] = dict(running.router.scraper.latest)
            out["killed"] = await _kill_mid_stream(s, v1, fleet, running.router)
            out["after"] = [await _post(s, f"{v1}/chat/completions", chat) for _ in range(3)]
            out["metrics"] = running.router.render_metrics()
    finally:
        await running.close()  # flushes the telemetry
        await fleet.close()
    out["rows"] = read_telemetry(tmp_path / "telemetry")
    return out


async def _kill_mid_stream(s: aiohttp.ClientSession, v1: str, fleet, router) -> dict:
    body = {
        "model": SMOLLM_ALIAS,
        "max_tokens": 400,
        "stream": True,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
    }
    got = b""
    async with s.post(f"{v1}/chat/completions", json=body) as resp:
        status = resp.status
        while got.count(b"data: ") < 4:  # a few tokens in: the engine is mid-stream
            got += await resp.content.readany()
        (victim,) = [
            e for e in fleet.engines() if router.accounting.ledger(e.id).inflight_requests == 1
        ]
        victim.ref.kill()  # SIGKILL: the engine dies as on a crash
        got += await asyncio.wait_for(resp.content.read(), 30)
    return {"status": status, "body": got, "url": victim.url}


@pytest.mark.llamacpp
@pytest.mark.usefixtures("engines_installed")
def test_router_in_front_of_two_llamacpp_engines(tmp_path):
    out = asyncio.run(_through_the_router(tmp_path))
    ordered = out["rows"].sort_values("arrival_unix_s").reset_index(drop=True)

    # Whole, streamed text and streamed chat completions go through, with the engine's counts.
    status, payload = out["whole"]
    usage = json.loads(payload)["usage"]
    assert status == 200 and json.loads(payload)["choices"][0]["text"]
    first = ordered.iloc[0]
    assert (first.prompt_tokens, first.output_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    status, raw = out["text_stream"]
    last = _events(raw)[-1]
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]")
    assert (ordered.iloc[1].prompt_tokens, ordered.iloc[1].output_tokens) == (
        last["usage"]["prompt_tokens"],
        last["usage"]["completion_tokens"],
    )
    status, raw = out["chat_stream"]
    timings = _events(raw)[-1]["timings"]  # llama.cpp's chat stream carries no usage
    assert status == 200 and "".join(
        e["choices"][0]["delta"].get("content") or "" for e in _events(raw)
    )
    assert (ordered.iloc[2].prompt_tokens, ordered.iloc[2].output_tokens) == (
        timings["prompt_n"] + timings["cache_n"],
        timings["predicted_n"],
    )
    assert ordered.iloc[2].prompt_tokens > 20  # the chat template's tokens, not the estimate

    # The router reads llama.cpp's own metric names.
    assert len(out["scraped"]) == 2
    assert sum(m.prefix_queries for m in out["scraped"].values()) > 0

    # The engine killed mid-stream: the client gets an error event and a closed stream...
    killed = out["killed"]
    assert killed["status"] == 200
    error = _events(killed["body"])[-1]
    assert error["error"]["type"] == "upstream_error" and b"[DONE]" not in killed["body"]
    # ...the telemetry a failed row on that engine, with the tokens it did stream...
    failed = ordered[ordered.status != "ok"]
    assert list(failed.status) == ["error"] and failed.iloc[0].replica == killed["url"]
    assert failed.iloc[0].output_tokens >= 3
    # ...and the other engine serves everything after it.
    (other,) = [u for u in out["urls"] if u != killed["url"]]
    assert [status for status, _ in out["after"]] == [200, 200, 200]
    assert list(ordered.replica.iloc[-3:]) == [other] * 3
    assert (ordered.output_tokens.iloc[-3:] > 0).all()
    up = {
        line.split('url="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in out["metrics"].splitlines()
        if line.startswith("autopoiesis_replica_up{")
    }
    assert up == {killed["url"]: 0.0, other: 1.0}
    assert len(ordered) == 7 and ordered.request_id.is_unique


FLEET_OF_ONE = """
import asyncio, os
from serving.llamacpp import LlamaCppFleet

async def main():
    fleet = LlamaCppFleet(1, log_dir=os.environ["LOGS"])
    await fleet.start()
    print(fleet.engines()[0].ref.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.llamacpp
@pytest.mark.usefixtures("engines_installed")
def test_an_engine_does_not_outlive_its_killed_fleet(tmp_path):
    fleet = subprocess.Popen(
        [sys.executable, "-c", FLEET_OF_ONE],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LOGS": str(tmp_path)},
    )
    try:
        engine = int(fleet.stdout.readline())
    finally:
        fleet.kill()  # no chance to stop its engine
        fleet.wait()
    deadline = time.monotonic() + 15
    while not _gone(engine) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(engine), f"engine {engine} outlived its fleet"
