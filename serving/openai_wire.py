"""The OpenAI wire format the simulated engine writes, as vLLM writes it.

Completion and chat-completion chunks, SSE framing, usage and vLLM's error body.
Token text is deterministic (`` t1 t2 ...``), so byte-for-byte passthrough checks have
something to compare.
"""

from __future__ import annotations

import json

from aiohttp import web


def token_text(i: int) -> str:
    return f" t{i}"


def token_usage(prompt: int, output: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish: str | None = None) -> dict:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def chunk(rid: str, created: int, model: str, chat: bool, i: int, finish: str | None) -> dict:
    if chat:
        return chat_chunk(rid, created, model, {"content": token_text(i)}, finish)
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": token_text(i), "logprobs": None, "finish_reason": finish}],
    }


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def error_response(status: int, message: str, kind: str) -> web.Response:
    # vLLM's error body shape (ErrorResponse).
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": status}}, status=status
    )
