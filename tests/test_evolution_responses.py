"""Response extraction, diffs, duplicate hashing, PARAMS reading and baking."""

from __future__ import annotations

import pytest

from flows.evolution.responses import (
    ResponseError,
    apply_unified_diff,
    bake_params,
    extract_candidate,
    normalised_hash,
    unified_diff,
)
from flows.evolution.tuning import read_params
from serving.policy_loader import builtin_source, load_policy

PARENT = builtin_source("least_outstanding")


def test_fenced_module_among_prose_and_snippets():
    text = (
        "Sure! First a helper:\n```python\nx = 1\n```\nThe policy:\n"
        f"```python\n{PARENT}\n```\nHope it helps."
    )
    src, kind = extract_candidate(text, PARENT)
    assert kind == "module" and src.strip() == PARENT.strip()


def test_unfenced_module_with_leading_prose():
    src, kind = extract_candidate("Here you go:\n" + PARENT)
    assert kind == "module" and "def route" in src


def test_unclosed_fence_is_still_read():
    src, _ = extract_candidate(f"```python\n{PARENT}")
    assert "def route" in src


def test_unified_diff_against_parent_applies_even_with_wrong_line_numbers():
    child = PARENT.replace("kit.least_inflight(request, replicas)", "kit.uniform(replicas)")
    assert child != PARENT
    diff = unified_diff(PARENT, child).replace("@@ -1", "@@ -7")
    src, kind = extract_candidate(f"```diff\n{diff}```", PARENT)
    assert kind == "diff" and src.strip() == child.strip()
    assert load_policy(src).route is not None  # trusted here: it is our own baseline, edited


def test_diff_that_does_not_apply_is_a_clear_error():
    bad = "--- a/p.py\n+++ b/p.py\n@@ -1,2 +1,2 @@\n-nothing like this\n+x\n"
    with pytest.raises(ResponseError, match="does not apply"):
        extract_candidate(bad, PARENT)


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "empty"),
        (None, "empty"),
        ("I cannot help with that.", "no Python module"),
        ("```python\ndef route(request, replicas, now)\n    return 0\n```", "SyntaxError"),
        ("```python\nimport os\n```", "no Python module"),
        ("```python\n" + "def route(a, b, c):\n    return 0\n" + "#" * 50_000 + "\n```", "cap"),
        ("```python\nclass X:\n    def route(self, a, b, c):\n        pass\n```", "top level"),
    ],
)
def test_garbage_answers_raise_response_error(text, why):
    with pytest.raises(ResponseError, match=why):
        extract_candidate(text, PARENT)


def test_apply_diff_inserts_and_deletes():
    parent = "a\nb\nc\n"
    out = apply_unified_diff(parent, "@@ -1,3 +1,3 @@\n a\n-b\n+B\n+B2\n c\n")
    assert out == "a\nB\nB2\nc\n"


def test_normalised_hash_ignores_comments_docstrings_and_layout():
    a = 'def route(r, reps, now):\n    """doc"""\n    return 0  # comment\n'
    b = "def route(r, reps, now):\n\n    return 0\n"
    c = "def route(r, reps, now):\n    return 1\n"
    assert normalised_hash(a) == normalised_hash(b) != normalised_hash(c)
    assert normalised_hash("def (") == normalised_hash("def (")  # unparsable: raw text


def test_read_params_and_bake_round_trip():
    src = builtin_source("llmd_weighted")
    space = read_params(src)
    assert set(space) == {
        "QUEUE_WEIGHT",
        "KV_WEIGHT",
        "PREFIX_WEIGHT",
        "FILTER_MAX_WAITING",
        "FILTER_MAX_KV",
    }
    assert space["FILTER_MAX_WAITING"][0].integer and space["FILTER_MAX_WAITING"][1] == 5
    baked = bake_params(src, {"QUEUE_WEIGHT": 7.25, "FILTER_MAX_WAITING": 9})
    loaded = load_policy(baked)
    assert loaded.params["QUEUE_WEIGHT"] == 7.25 and loaded.params["FILTER_MAX_WAITING"] == 9
    assert read_params(baked)["QUEUE_WEIGHT"][1] == 7.25


def test_read_params_ignores_non_literal_entries():
    src = "from serving.contract import Param\nPARAMS = {'A': Param(0, f())}\nA = 1\n"
    assert read_params(src) == {}
    assert read_params("def (") == {}
