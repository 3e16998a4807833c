"""Unified diffs, duplicate hashing, PARAMS reading and baking (answers: test_evolution_drafts)."""

from __future__ import annotations

from flows.evolution.responses import apply_unified_diff, bake_params, normalised_hash
from flows.evolution.tuning import read_params
from serving.policy_loader import builtin_source, load_policy


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
