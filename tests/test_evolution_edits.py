"""Evolvable regions, SEARCH/REPLACE diffs and whole-block rewrites (``flows.evolution.edits``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.evolution.edits import (
    END,
    START,
    EditError,
    apply_search_replace,
    blocks,
    mark,
    rewrite_block,
    search_replace_pairs,
)
from flows.evolution.responses import normalised_hash
from serving.policy_loader import builtin_source, load_policy

LO = (Path(__file__).parent / "fixtures" / "hand_least_outstanding.py").read_text()
KEY = "key = (r.inflight_requests, r.inflight_tokens, r.id)"


def test_mark_wraps_constants_and_the_policy_functions_without_changing_behaviour():
    src = builtin_source("threshold_autoscaler")
    marked = mark(src)
    regions = blocks(marked)
    assert len(regions) == 3  # constants, route body, reschedule body
    lines = marked.split("\n")
    assert lines[regions[0].start + 1].startswith("PARAMS")
    assert lines[regions[1].start - 1].startswith("def route")
    assert regions[1].indent == "    " and lines[regions[1].end] == "    " + END
    assert normalised_hash(marked) == normalised_hash(src)  # comments only
    assert mark(marked) == marked  # the author's regions are kept


def test_search_replace_forgives_indentation_trailing_space_and_blank_lines():
    marked = mark(LO)
    # The model dropped the indentation, added a blank line and trailing spaces.
    answer = (
        "Here:\n```\n<<<<<<< SEARCH\n" + KEY + "   \n\nif best is None or key < best:\n"
        "=======\nkey = (r.inflight_requests + r.waiting, r.inflight_tokens, r.id)\n"
        "if best is None or key < best:\n>>>>>>> REPLACE\n```\n"
    )
    pairs = search_replace_pairs(answer)
    assert len(pairs) == 1
    child = apply_search_replace(marked, pairs)
    assert "        key = (r.inflight_requests + r.waiting, r.inflight_tokens, r.id)" in child
    assert "        if best is None or key < best:" in child
    assert load_policy(child).route is not None  # our own baseline, edited: loadable here


def test_several_blocks_apply_in_turn_and_a_missing_one_is_named():
    pairs = [(KEY, KEY.replace("r.id", "-r.id")), ("best = key", "best = key  # kept")]
    child = apply_search_replace(LO, pairs)
    assert "-r.id)" in child and "# kept" in child
    with pytest.raises(EditError, match=r"SEARCH block 2 not found.*'nothing like this'"):
        apply_search_replace(LO, [pairs[0], ("nothing like this", "x")])
    with pytest.raises(EditError, match="no SEARCH/REPLACE block"):
        apply_search_replace(LO, [])


def test_a_whole_function_replaces_the_parents_and_keeps_the_rest():
    src = builtin_source("threshold_autoscaler")
    new_route = (
        "def route(request, replicas, now):\n"
        "    serving = [r for r in replicas if r.state == 'serving']\n"
        "    return min(serving, key=lambda r: r.waiting).id if serving else HOLD\n"
    )
    child = rewrite_block(mark(src), new_route)
    assert "lambda r: r.waiting" in child and "def reschedule" in child and "PARAMS" in child
    assert child.count("def route") == 1
    loaded = load_policy(child)
    assert loaded.reschedule is not None and loaded.params["UP_KV"] == 0.8


def test_a_whole_module_replaces_the_parent():
    module = (
        "from serving.contract import HOLD\nPARAMS = {}\n\ndef route(a, b, c):\n    return HOLD\n"
    )
    assert rewrite_block(LO, module) == module


def test_a_bare_block_needs_exactly_one_region():
    one = (
        "from serving.contract import HOLD\n\ndef route(request, replicas, now):\n"
        f"    {START}\n    return HOLD\n    {END}\n"
    )
    child = rewrite_block(
        one,
        "serving = [r for r in replicas if r.state == 'serving']\n"
        "return serving[0].id if serving else HOLD",
    )
    assert "    serving = [r" in child and f"    {END}" in child
    with pytest.raises(EditError, match="exactly one EVOLVE block"):
        rewrite_block(mark(LO), "return HOLD")
    with pytest.raises(EditError, match="no top-level def route"):
        rewrite_block(LO, "class X:\n    def route(self, a, b, c):\n        pass\n")
    with pytest.raises(EditError, match="SyntaxError"):
        rewrite_block(LO, "def route(a, b, c)\n    return 0\n")
