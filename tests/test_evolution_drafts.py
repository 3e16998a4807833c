"""An LLM answer made into a candidate, or the stage and one-line reason it is not.

Besides hand-written shapes, ``fixtures/qwen05b_answers.json`` (and ``qwen15b_``) hold
answers the real Qwen2.5-Coder models gave (``make llm``, ``autopoiesis evolve --llm
local``), each with a parent and what must come of it; reviewed by hand before use, so
that a usable one may be loaded here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.evolution.drafts import make_draft, source_from_answer
from flows.evolution.edits import EditError, mark
from flows.evolution.responses import normalised_hash, unified_diff
from serving.policy_loader import builtin_source, load_policy

LO = (Path(__file__).parent / "fixtures" / "hand_least_outstanding.py").read_text()
TA = builtin_source("threshold_autoscaler")
KEY = "key = (r.inflight_requests, r.inflight_tokens, r.id)"
FIXTURES = Path(__file__).parent / "fixtures"
REAL = [
    *json.loads((FIXTURES / "qwen05b_answers.json").read_text()),
    *json.loads((FIXTURES / "qwen15b_answers.json").read_text()),
]


def draft(text: str, parent: str = LO, known: frozenset[str] = frozenset()):
    return make_draft(text, mark(parent), parent, known)


def test_search_replace_answer_is_a_usable_child():
    d = draft(f"<<<<<<< SEARCH\n{KEY}\n=======\n{KEY.replace('r.id', '-r.id')}\n>>>>>>> REPLACE")
    assert (
        d.ok and d.kind == "search-replace" and d.reached() == ("parsed", "contract_ok", "unique")
    )
    assert load_policy(d.source).route is not None


def test_a_diff_that_does_not_apply_falls_back_to_code_in_the_same_answer():
    text = (
        "<<<<<<< SEARCH\nnot in the parent\n=======\nx = 1\n>>>>>>> REPLACE\n"
        "or, as a function:\n```python\ndef route(request, replicas, now):\n"
        "    return HOLD\n```\n"
    )
    d = draft(text)
    assert d.ok and d.kind == "functions" and "return HOLD" in d.source
    with pytest.raises(EditError, match="SEARCH block 1 not found"):
        source_from_answer(text.split("or,")[0], mark(LO))


def test_module_among_prose_and_snippets_and_unfenced_and_unclosed():
    child = LO.replace("r.inflight_tokens, r.id", "r.kv_blocks_used, r.id")
    prose = f"Sure! A helper:\n```python\nx = 1\n```\nThe policy:\n```python\n{child}\n```\nBye"
    for text in (prose, "Here you go:\n" + child, f"```python\n{child}"):
        src, kind = source_from_answer(text, mark(LO))
        assert kind == "module"
        assert normalised_hash(src) == normalised_hash(child), text[:40]


def test_unified_diff_with_wrong_line_numbers_still_applies():
    child = LO.replace("r.inflight_tokens, r.id", "r.kv_blocks_used, r.id")
    diff = unified_diff(LO, child).replace("@@ -1", "@@ -7")
    d = draft(f"```diff\n{diff}```")
    assert d.ok and d.kind == "diff" and normalised_hash(d.source) == normalised_hash(child)


@pytest.mark.parametrize(
    "text, stage, why",
    [
        ("", "parse", "empty"),
        ("I cannot help with that.", "parse", "no SEARCH/REPLACE block and no Python code"),
        ("```python\ndef route(request, replicas, now)\n    return 0\n```", "parse", "SyntaxError"),
        (
            "```python\ndef route(a, b, c):\n" + "    x = 1\n" * 5_000 + "    return 0\n```",
            "parse",
            "cap",
        ),
        (
            "```python\nimport os\n\ndef route(a, b, c):\n    return 0\n```",
            "contract",
            "import of 'os'",
        ),
        (
            "```python\ndef route(request, replicas, now):\n    return pick(replicas)\n```",
            "contract",
            "NameError: name 'pick'",
        ),
        (f"```python\n{LO}\n```", "copy", "copy of its parent"),
    ],
)
def test_unusable_answers_stop_at_a_named_stage(text, stage, why):
    d = draft(text)
    assert d.stage == stage and why in (d.error or ""), (d.stage, d.error)


def test_a_known_child_is_a_duplicate_and_unused_constants_make_a_copy():
    child = f"```python\n{LO.replace('r.inflight_tokens, r.id', 'r.waiting, r.id')}\n```"
    first = draft(child)
    assert first.ok
    assert draft(child, known=frozenset({normalised_hash(first.source)})).stage == "duplicate"
    unused = "```python\nPARAMS = {'SPARE': Param(0.0, 1.0)}\nSPARE = 0.5\n```"
    assert draft(unused).stage == "copy"


def test_constants_alone_are_merged_into_the_parent_keeping_its_own():
    answer = "```python\nPARAMS = {'UP_KV': Param(0.5, 0.95)}\nUP_KV = 0.9\n```"
    d = draft(answer, TA)
    assert d.ok and d.kind == "block"
    loaded = load_policy(d.source)
    assert loaded.params["UP_KV"] == 0.9 and loaded.params["DOWN_TICKS"] == 12
    assert loaded.reschedule is not None


@pytest.mark.parametrize("case", REAL, ids=lambda c: c["id"])
def test_real_answers_of_the_small_model(case):
    # Answers recorded against a hand-written parent name its fixture file.
    hand = FIXTURES / f"{case['parent']}.py"
    parent = hand.read_text() if hand.exists() else builtin_source(case["parent"])
    d = draft(case["answer"], parent)
    assert d.stage == case["stage"], (d.stage, d.error)
    for note in case.get("repairs", []):
        assert any(note in r for r in d.repairs), d.repairs
    if d.ok:
        assert load_policy(d.source).route is not None  # loads here only because ok
