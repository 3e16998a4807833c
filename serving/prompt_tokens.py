"""Deterministic prompt tokens and prefix block hashes, shared by router and simulated engine.

Neither the router nor the simulated engine loads a real tokenizer (no model
files on a CPU machine, and a tokenizer per request would cost more than the
whole routing decision). Both use the same byte tokenizer instead: one token
per ``BYTES_PER_TOKEN`` UTF-8 bytes, the usual ~4 characters per token of
English text under BPE. Prefix hashes chain over ``BLOCK_TOKENS``-token chunks,
as vLLM's block hashes do, so two prompts share leading hashes exactly when they
share a leading byte prefix of whole blocks; both sides compute the same ones,
which is what makes prefix-affinity routing hit the engine's prefix cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

BYTES_PER_TOKEN = 4
BLOCK_TOKENS = 16
BLOCK_BYTES = BYTES_PER_TOKEN * BLOCK_TOKENS


def count_tokens(data: bytes) -> int:
    """Tokens of a prompt under the byte tokenizer (at least 1: vLLM adds BOS)."""
    return max(1, -(-len(data) // BYTES_PER_TOKEN))


def prefix_hashes(data: bytes) -> tuple[int, ...]:
    """Chained hashes of the prompt's full 16-token blocks, as signed 64-bit ints.

    Chaining (each hash covers its block and every block before it) makes equal
    hashes mean equal prefixes, not merely equal chunks. Signed so the values fit
    the telemetry schema's int64 column.
    """
    out = []
    prev = b""
    for start in range(0, len(data) - BLOCK_BYTES + 1, BLOCK_BYTES):
        digest = hashlib.blake2b(prev + data[start : start + BLOCK_BYTES], digest_size=8).digest()
        out.append(int.from_bytes(digest, "little", signed=True))
        prev = digest
    return tuple(out)


def prompt_bytes(body: dict) -> bytes:
    """The text a request's prompt consists of, for token counting and hashing.

    ``/v1/completions`` uses ``prompt`` (a string, or a list whose first string
    is taken); ``/v1/chat/completions`` concatenates role and content of each
    message, so the same conversation prefix gives the same block hashes.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            if not isinstance(m, dict):
                continue
            content = m.get("content", "")
            if isinstance(content, list):  # OpenAI content parts: keep the text ones
                content = "".join(
                    p.get("text", "") for p in content if isinstance(p, dict)
                )
            parts.append(f"{m.get('role', '')}:{content}\n")
        return "".join(parts).encode("utf-8", "replace")
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        prompt = next((p for p in prompt if isinstance(p, str)), "")
    if not isinstance(prompt, str):
        return b""
    return prompt.encode("utf-8", "replace")


def synth_prompt(tokens: int, block_hashes: Sequence[int] = (), salt: int = 0) -> str:
    """A prompt of ``tokens`` tokens whose leading blocks follow ``block_hashes``.

    Used by the load generator to replay traces: equal trace hashes produce equal
    text blocks, hence equal block hashes on the router and the engine. The rest
    is filler unique to ``salt`` so unrelated requests share no prefix.
    """
    parts = []
    for h in block_hashes[: tokens // BLOCK_TOKENS]:
        parts.append((f"{h & 0xFFFFFFFFFFFFFFFF:016x}" * 4)[:BLOCK_BYTES])
    used = len(parts) * BLOCK_BYTES
    rest = tokens * BYTES_PER_TOKEN - used
    if rest > 0:
        filler = f"<{salt:x}>" + " lorem ipsum dolor sit amet" * (rest // 27 + 1)
        parts.append(filler[:rest])
    return "".join(parts)
