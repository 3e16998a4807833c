"""The proposer against the scripted OpenAI-compatible server (real HTTP on loopback)."""

from __future__ import annotations

import random

import pytest
from llm_double import LLMDouble

from flows.evolution.config import Budget, LLMConfig, ModelChoice
from flows.evolution.proposer import (
    BudgetExhausted,
    BudgetTracker,
    LLMError,
    Proposer,
    pick_model,
)

MSG = [{"role": "user", "content": "x" * 400}]
MODEL = ModelChoice("m", usd_per_mtok_in=1.0, usd_per_mtok_out=2.0)


def proposer(url: str, **kw) -> tuple[Proposer, list[float]]:
    slept: list[float] = []
    cfg = LLMConfig(base_url=url, models=(MODEL,), **{"max_retries": 3, "timeout_s": 5, **kw})
    return Proposer(cfg, sleep=slept.append), slept


def test_answer_tokens_and_cost_are_accounted():
    with LLMDouble(lambda u: [{"content": "hello" * 40}]) as d:
        p, _ = proposer(d.url)
        r = p.complete(MSG, MODEL, seed=1, tag="g001-s000")
        p.close()
    assert r.text.startswith("hello") and r.attempts == 1
    assert (r.prompt_tokens, r.completion_tokens) == (100, 50)
    assert r.cost_usd == pytest.approx((100 * 1.0 + 50 * 2.0) / 1e6)
    assert d.calls[0]["user"] == "g001-s000" and d.calls[0]["seed"] == 1


def test_429_and_5xx_are_retried_with_backoff_honouring_retry_after():
    steps = [{"status": 429, "retry_after": 3}, {"status": 503}, {"content": "ok"}]
    with LLMDouble(lambda u: steps) as d:
        p, slept = proposer(d.url, backoff_s=0.5)
        r = p.complete(MSG, MODEL, seed=1)
        p.close()
    assert r.text == "ok" and r.attempts == 3
    assert slept == [3.0, 1.0]  # Retry-After wins over 0.5 s; then 0.5 * 2


def test_persistent_errors_end_in_a_clear_llm_error():
    with LLMDouble(lambda u: [{"status": 500}]) as d:
        p, slept = proposer(d.url)
        with pytest.raises(LLMError, match="InternalServerError after 4 attempts"):
            p.complete(MSG, MODEL, seed=1)
        p.close()
    assert len(slept) == 3


@pytest.mark.parametrize(
    "step, match",
    [
        ({"raw": "<html>bad gateway</html>"}, "garbage"),
        ({"json": {"unexpected": True}}, "garbage"),
        ({"json": {"choices": [{"message": {"content": None}}]}}, "garbage"),
        ({"status": 401}, "HTTP 401"),
    ],
)
def test_garbage_and_client_errors_are_not_crashes(step, match):
    with LLMDouble(lambda u: [step]) as d:
        p, _ = proposer(d.url)
        with pytest.raises(LLMError, match=match):
            p.complete(MSG, MODEL, seed=1)
        p.close()


def test_timeout_is_an_llm_error():
    with LLMDouble(lambda u: [{"content": "late", "delay": 2.0}]) as d:
        p, _ = proposer(d.url, timeout_s=0.3, max_retries=0)
        with pytest.raises(LLMError, match="Timeout"):
            p.complete(MSG, MODEL, seed=1)
        p.close()


def test_budget_caps():
    clock = [0.0]
    b = BudgetTracker(Budget(tokens=100, usd=1.0, wall_s=60), clock=lambda: clock[0])
    b.check()
    b.charge(99, 0.5)
    assert b.exhausted() is None
    b.charge(1, 0.0)
    with pytest.raises(BudgetExhausted, match="token budget"):
        b.check()
    b2 = BudgetTracker(Budget(wall_s=60), clock=lambda: clock[0])
    clock[0] = 61
    assert "wall-time" in (b2.exhausted() or "")
    b3 = BudgetTracker(Budget(usd=0.01))
    b3.charge(0, 0.02)
    assert "cost" in (b3.exhausted() or "")


def test_model_choice_follows_weights():
    models = (ModelChoice("a", 3.0), ModelChoice("b", 1.0), ModelChoice("z", 0.0))
    rng = random.Random(0)
    picks = [pick_model(models, rng).name for _ in range(2000)]
    assert "z" not in picks and 0.7 < picks.count("a") / 2000 < 0.8


def test_the_edit_grammar_is_sent_only_when_asked_for():
    from flows.evolution.edits import ANSWER_GRAMMAR

    with LLMDouble(lambda u: [{"content": "ok"}]) as d:
        for grammar in (False, True):
            p, _ = proposer(d.url, grammar=grammar)
            p.complete(MSG, MODEL, seed=1)
            p.close()
    assert "grammar" not in d.calls[0] and d.calls[1]["grammar"] == ANSWER_GRAMMAR
