"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for evolution tests.

Real HTTP, real ``openai`` client on the other side. Each call is answered from a
script: a list of *steps* per request; successive calls for the same request
(retries) take successive steps. The request is the ``user`` field the proposer
sends (``q0007``, its repair round ``q0007/repair``, its repair after the sandbox
``q0007r``), so answers do not depend on call order and a resumed run is answered
exactly as an uninterrupted one.

A step is a dict:
    {"content": str, "delay": s}        a normal completion (usage ~ len/4 tokens)
    {"status": 429 | 500 | 503, "retry_after": s}
    {"raw": "text"}                      a 200 answer that is not JSON
    {"json": {...}}                      a 200 JSON answer of the wrong shape
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = dict[str, Any]


def fenced(source: str) -> str:
    return f"Here is an improved policy.\n\n```python\n{source}\n```\n"


class LLMDouble:
    def __init__(self, script: Callable[[str], list[Step]]) -> None:
        """``script(user) -> steps`` for that slot; the last step repeats."""
        self.script = script
        self.attempts: dict[str, int] = defaultdict(int)
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(n)
                if len(raw) < n:
                    # The client hung up mid-request (a run's end closes its client under
                    # a request still being sent): no request arrived, so none is recorded.
                    self.close_connection = True
                    return
                body = json.loads(raw or b"{}")
                user = str(body.get("user", ""))
                with double.lock:
                    k = double.attempts[user]
                    double.attempts[user] += 1
                    double.calls.append(body)
                steps = double.script(user) or [{"status": 500}]
                step = steps[min(k, len(steps) - 1)]
                double._answer(self, body, step)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _answer(self, h: BaseHTTPRequestHandler, body: dict[str, Any], step: Step) -> None:
        if step.get("delay"):
            time.sleep(step["delay"])
        if "status" in step:
            payload = json.dumps({"error": {"message": "scripted", "type": "x"}}).encode()
            h.send_response(step["status"])
            h.send_header("retry-after", str(step.get("retry_after", 0)))
        elif "raw" in step:
            payload = step["raw"].encode()
            h.send_response(200)
        else:
            if "json" in step:
                obj = step["json"]
            else:
                prompt = sum(len(m.get("content", "")) for m in body.get("messages", []))
                obj = {
                    "id": "chatcmpl-double",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", "double"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": step["content"]},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt // 4,
                        "completion_tokens": len(step["content"]) // 4,
                        "total_tokens": prompt // 4 + len(step["content"]) // 4,
                    },
                }
            payload = json.dumps(obj).encode()
            h.send_response(200)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def __enter__(self) -> LLMDouble:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:  # `python tests/llm_double.py`: a server for manual runs
    from serving.policy_loader import builtin_source

    seed = builtin_source("least_outstanding")
    good = fenced(seed.replace("kit.least_inflight(", "kit.least_inflight(  ", 1))
    with LLMDouble(lambda user: [{"content": good}]) as d:
        print(d.url, flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
