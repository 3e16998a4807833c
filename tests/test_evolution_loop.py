"""The evolution loop end to end, through the real sandbox and the scripted LLM server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from evolution_support import HOSTILE, config, run, script, stable
from llm_double import LLMDouble
from sandbox_support import process_backend

from flows.evolution.config import Budget
from flows.evolution.rundir import EvolutionError, best_source
from serving.policy_loader import builtin_source

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def _sandbox():
    process_backend().close()  # skips (or fails, if required) without bubblewrap


def test_scripted_runs_are_deterministic_and_survive_hostile_answers(tmp_path):
    with LLMDouble(script()) as d:
        s1, a1 = run(config(d.url), tmp_path / "a")
        s2, a2 = run(config(d.url), tmp_path / "b")
    assert stable(s1) == stable(s2) and a1 == a2
    cands = a1["candidates"]
    rejected = {cid: c["rejection"] for cid, c in cands.items() if c["rejection"]}
    # every kind of bad answer was caught somewhere, and the run still finished
    text = " ".join(rejected.values())
    for needle in (
        "import of 'os'",
        "garbage",
        "SyntaxError",
        "duplicate",
        "deadline",
        "no such replica",
        "RuntimeError",
        "InternalServerError",
    ):
        assert needle.lower() in text.lower(), (needle, rejected)
    assert any(c["origin"] == "llm" and not c["rejection"] for c in cands.values())
    assert s1["generations_done"] == 3 and s1["stopped"] is None
    assert s1["llm_tokens"] > 0 and s1["llm_cost_usd"] > 0


def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    with LLMDouble(script()) as d:
        whole, whole_archive = run(config(d.url), tmp_path / "whole")
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{HERE.parent}"}
    child = subprocess.Popen(
        [sys.executable, str(HERE / "evolution_support.py"), str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    journal = killed / "journal.jsonl"
    deadline = time.monotonic() + 60
    # Kill it mid-run: after generation 1's answers are journaled, before the end.
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count('"kind":"llm"') >= 5:
            break
        time.sleep(0.05)
    child.kill()
    child.wait()
    assert not (killed / "summary.json").exists(), "the child finished before it was killed"
    with LLMDouble(script()) as d:
        resumed, resumed_archive = run(config(d.url), killed)
    assert resumed["resumed"] and resumed["journal_hits"] > 0
    assert stable(resumed) == stable(whole)
    assert resumed_archive == whole_archive


def test_a_token_cap_retires_the_llm_and_search_finishes_the_run(tmp_path):
    with LLMDouble(script()) as d:
        s, _ = run(config(d.url, budget=Budget(tokens=3000)), tmp_path / "r")
        asked = len(d.calls)
    assert s["stopped"] is None and s["generations_done"] == 3
    assert "token budget" in s["llm"]["retired"] and asked < 12
    assert s["proposers"]["tune"]["proposed"] > 0  # search took the slots the LLM left


def test_wall_cap_stops_cleanly(tmp_path):
    s, _ = run(config(None, budget=Budget(wall_s=0.0)), tmp_path / "r")
    assert s["stopped"] and "wall-time budget" in s["stopped"]
    assert s["generations_done"] == 0 and s["seed_objective"] is not None
    # The run's best (here the seed champion) is kept beside its summary, as source.
    assert best_source(tmp_path / "r") == builtin_source(s["seed_policy"])


def test_a_config_change_is_not_resumed_silently(tmp_path):
    run(config(None, generations=1, population=1), tmp_path / "r")
    with pytest.raises(EvolutionError, match="another configuration"):
        run(config(None, generations=2, population=1, seed=5), tmp_path / "r")


def test_hostile_sources_are_judged_in_the_sandbox_not_here(tmp_path):
    from flows.evolution.cascade import Cascade
    from flows.evolution.journal import Journal

    cfg = config(None)
    c = Cascade(cfg, Journal(tmp_path / "j.jsonl"))
    try:
        outs = c.evaluate_many(list(HOSTILE.values()), cfg.quick)
    finally:
        c.close()
    stages = [o.stage for o in outs]
    assert all(o.objective is None for o in outs), stages
    assert stages[0] == "static" and stages[2] == "limit", stages
