"""The LLM proposer: the ``openai`` client against any OpenAI-compatible endpoint.

Models are drawn by weight with the caller's RNG (deterministic per slot);
each call has a timeout; 429 and 5xx answers and dropped connections are
retried with exponential backoff (honouring ``Retry-After``); an answer that
is not a chat completion is a clear ``LLMError``, never a crash. Tokens and
cost are accounted per call, and ``BudgetTracker`` stops the run cleanly
when a cap on tokens, money or wall time is reached.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai

from flows.evolution.config import Budget, LLMConfig, ModelChoice
from flows.evolution.edits import ANSWER_GRAMMAR


class LLMError(RuntimeError):
    """A call that produced no usable answer; the message is one line."""


class BudgetExhausted(RuntimeError):
    """A budget cap was reached; the message names it."""


@dataclass
class Reply:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_s: float
    attempts: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class BudgetTracker:
    def __init__(self, budget: Budget, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.clock = clock
        self.started = clock()
        self.tokens = 0
        self.usd = 0.0
        self.calls = 0

    def charge(self, tokens: int, usd: float) -> None:
        self.tokens += tokens
        self.usd += usd
        self.calls += 1

    def elapsed(self) -> float:
        return self.clock() - self.started

    def exhausted(self) -> str | None:
        b = self.budget
        if b.tokens is not None and self.tokens >= b.tokens:
            return f"token budget reached ({self.tokens} >= {b.tokens})"
        if b.usd is not None and self.usd >= b.usd:
            return f"cost budget reached (${self.usd:.4f} >= ${b.usd:.4f})"
        if b.wall_s is not None and self.elapsed() >= b.wall_s:
            return f"wall-time budget reached ({self.elapsed():.0f} s >= {b.wall_s:.0f} s)"
        return None

    def check(self) -> None:
        why = self.exhausted()
        if why:
            raise BudgetExhausted(why)


def pick_model(models: tuple[ModelChoice, ...], rng: random.Random) -> ModelChoice:
    total = sum(max(m.weight, 0.0) for m in models)
    if total <= 0:
        return models[0]
    x = rng.random() * total
    for m in models:
        x -= max(m.weight, 0.0)
        if x < 0:
            return m
    return models[-1]


class Proposer:
    def __init__(self, cfg: LLMConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        if not cfg.enabled:
            raise ValueError("no LLM endpoint configured")
        self.cfg = cfg
        self.sleep = sleep
        # Retries are ours (we count and log them); the client's own are switched off.
        self.client = openai.OpenAI(
            base_url=cfg.base_url,
            api_key=cfg.api_key or "not-needed",
            timeout=cfg.timeout_s,
            max_retries=0,
        )

    def complete(
        self,
        messages: list[dict[str, str]],
        model: ModelChoice,
        seed: int,
        tag: str = "",
        response_format: dict[str, Any] | None = None,
    ) -> Reply:
        """One chat completion; ``tag`` (the candidate id) goes in ``user`` to correlate logs.

        ``response_format`` (a JSON schema the answer is held to) replaces the edit grammar:
        llama.cpp refuses a request that carries both."""
        attempt, t0 = 0, time.monotonic()
        held: dict[str, Any] = (
            {"response_format": response_format}
            if response_format is not None
            else {"extra_body": {"grammar": ANSWER_GRAMMAR}}
            if self.cfg.grammar
            else {}
        )
        while True:
            attempt += 1
            try:
                resp = self.client.chat.completions.create(
                    model=model.name,
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=self.cfg.max_tokens,
                    temperature=self.cfg.temperature,
                    seed=seed,
                    user=tag or "autopoiesis",
                    **held,
                )
                return self._reply(resp, model, time.monotonic() - t0, attempt)
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APIConnectionError,
            ) as e:  # APITimeoutError is a connection error
                if attempt > self.cfg.max_retries:
                    raise LLMError(
                        f"{type(e).__name__} after {attempt} attempts: {_short(e)}"
                    ) from None
                self.sleep(self._delay(e, attempt))
            except openai.APIStatusError as e:  # other 4xx: retrying will not help
                raise LLMError(f"HTTP {e.status_code}: {_short(e)}") from None
            except (openai.APIResponseValidationError, ValueError, TypeError, AttributeError) as e:
                raise LLMError(f"garbage answer from the endpoint: {_short(e)}") from None

    def _delay(self, exc: Exception, attempt: int) -> float:
        retry_after = None
        resp = getattr(exc, "response", None)
        if resp is not None:
            try:
                retry_after = float(resp.headers.get("retry-after", ""))
            except (TypeError, ValueError):
                retry_after = None
        base = self.cfg.backoff_s * 2 ** (attempt - 1)
        return min(30.0, max(base, retry_after or 0.0))

    def _reply(self, resp: object, model: ModelChoice, latency: float, attempts: int) -> Reply:
        choices = getattr(resp, "choices", None)
        if not choices:
            raise LLMError("garbage answer from the endpoint: no choices")
        text = getattr(getattr(choices[0], "message", None), "content", None)
        if not isinstance(text, str):
            raise LLMError("garbage answer from the endpoint: no message content")
        usage = getattr(resp, "usage", None)
        p = int(getattr(usage, "prompt_tokens", 0) or 0)
        c = int(getattr(usage, "completion_tokens", 0) or 0)
        if usage is None:  # some servers omit usage: estimate (~4 chars a token) rather than 0
            c = len(text) // 4
        cost = (p * model.usd_per_mtok_in + c * model.usd_per_mtok_out) / 1e6
        return Reply(text, model.name, p, c, cost, latency, attempts)

    def close(self) -> None:
        self.client.close()


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__
