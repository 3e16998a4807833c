"""The proposer's prompt: the kit reference comes from the kit, the examples are real policies,
and a whole prompt still fits a small local model's context."""

from __future__ import annotations

import inspect
import random

import pytest

from flows.evolution import prompts
from flows.evolution.archive import Archive, Candidate
from sandbox.static_checks import first_violation
from serving import kit
from serving.contract import ReplicaView, Request
from serving.policy_loader import BUILTIN_POLICIES, builtin_source, load_policy

PROMPT_BUDGET_CHARS = 24_000
"""System + user prompt with a full archive: ~6k tokens, so that an 8k-context local model
keeps room for the answer (max_tokens 2048)."""


def test_the_kit_reference_is_generated_from_every_piece():
    ref = prompts.kit_reference()
    for name in kit.__all__:
        summary = inspect.getdoc(getattr(kit, name)).splitlines()[0].replace("``", "")
        assert f"- kit.{name}(" in ref and summary in ref, name
    assert "kit.argmin(replicas, costs, *then):" in ref
    assert (
        "kit.trigger(state, hot, cold, now, up_ticks, down_ticks, cooldown_s, hold_up=False)" in ref
    )
    assert "``" not in ref
    assert ref.index("filters") < ref.index("scorers") < ref.index("pickers")


def test_the_system_prompt_carries_contract_kit_and_examples():
    system = prompts.system_prompt()
    assert "## The policy contract" in system and "## The policy kit" in system
    assert "from serving import kit" in system and "queued_prefill_tokens" in system
    assert "$" not in system.replace("$ ", "")  # every placeholder was filled
    for name in prompts.EXAMPLES:
        assert f"### {name}: " in system
    assert "kit.TriggerState()" in system and "kit.softmax(" in system


@pytest.mark.parametrize("name", prompts.EXAMPLES)
def test_each_example_is_a_valid_policy_that_routes(name):
    source = prompts.example_sources()[name]
    assert first_violation(source) is None
    policy = load_policy(source, name=name)
    assert len(source.splitlines()) <= 32, "examples stay short: a small model reads them"
    views = tuple(
        ReplicaView(i, "H100" if i else "A100", 1, "serving", i, 0, 10 * i, 100, i, 50 * i,
                    i, 0.1, 1.0, 20_000.0, 100.0 * i)
        for i in range(3)
    )  # fmt: skip
    random.seed(0)
    assert policy.route(Request(1, 0.0, 500, 20, tuple(range(30))), views, 0.0) in {0, 1, 2}
    assert policy.route(Request(2, 0.0, 500, 20), (), 0.0) is None


def test_a_whole_prompt_fits_a_small_model():
    archive = Archive(islands=1)
    seeds = [
        Candidate(n, builtin_source(n), "sha", n, 0, 0, f"seed:{n}", quick=0.5 + 0.01 * i,
                  cell=(i, 0, 0))
        for i, n in enumerate(BUILTIN_POLICIES)
    ]  # fmt: skip
    for c in seeds:
        archive.add(c)
    longest = max(seeds, key=lambda c: len(c.source))
    messages = prompts.build_messages(
        parent=longest, champion=seeds[0], archive=archive, diagnosis="x" * 600,
        workload=prompts.describe_workload(("bursty-code", "gpu-loss", "prefix-heavy")),
        rng=random.Random(1),
    )  # fmt: skip
    size = sum(len(m["content"]) for m in messages)
    assert size <= PROMPT_BUDGET_CHARS, size
