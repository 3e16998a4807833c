"""LLM children and search children share a generation's slots; the LLM never holds the loop.

Real sandbox, real ``openai`` client against the scripted server on loopback.
"""

from __future__ import annotations

import json
import shutil

import pytest
from evolution_support import GOOD_B, HOSTILE, ROUTE_BY_TOKENS, config, request_of, run, stable
from llm_double import LLMDouble, fenced
from sandbox_support import process_backend

from flows.evolution.config import Suite


@pytest.fixture(scope="module", autouse=True)
def _sandbox():
    process_backend().close()  # skips (or fails, if required) without bubblewrap


def _slow(delay: float):
    """Every request answered with a new policy after ``delay`` seconds."""

    def steps(user: str) -> list[dict]:
        n, _ = request_of(user)
        # A new constant each time, read by route: a new policy, the same behaviour.
        kv = "kit.kv_use(request, replicas)"
        src = GOOD_B.replace(kv, f"[x + {n} * 0.0 for x in {kv}]")
        return [{"content": fenced(src), "delay": delay}]

    return steps


def _slots(run_dir) -> dict[str, dict]:
    out = {}
    for line in (run_dir / "journal.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "slot":
            out[rec["key"]] = rec
    return out


def test_a_slow_llm_never_holds_a_slot_and_a_resume_replays_its_decisions(tmp_path):
    kw = dict(generations=3, population=3, llm_wait_s=0.0)
    with LLMDouble(_slow(0.5)) as d:
        first, first_archive = run(config(d.url, **kw), tmp_path / "a")
    slots = _slots(tmp_path / "a")
    # The first slot asked and did not wait: search took it.
    assert slots["slot/g001-s000"]["consumed"] == [] and slots["slot/g001-s000"]["took"] is None
    assert first["proposers"]["tune"]["proposed"] >= 1
    assert first["llm"]["evaluated"] >= 1, first["llm"]  # answers filled later slots
    # Counts are a funnel: each stage at most the one before.
    counts = [
        first["llm"][s]
        for s in ("proposed", "parsed", "contract_ok", "unique", "evaluated", "improving")
    ]
    assert counts == sorted(counts, reverse=True), counts

    # The same folder again, with an LLM that now answers at once: a live run would give
    # it the first slot, but the journal's decisions are replayed, so nothing changes.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with LLMDouble(_slow(0.0)) as d:  # the endpoint's URL is not part of a run's identity
        again, again_archive = run(config(d.url, **kw), tmp_path / "b")
        asked = {c["user"] for c in d.calls}
    consumed = {k for rec in slots.values() for k in rec["consumed"]}
    assert consumed and not asked & consumed  # what slots took came from the journal
    assert again["resumed"] and again_archive == first_archive
    assert stable(again) == stable(first)


def test_repair_rounds_feed_the_error_back_before_and_after_the_sandbox(tmp_path):
    slack = f"```python\nTOKEN_SLACK = 0.5\n\n{ROUTE_BY_TOKENS}```"
    answers = {
        "q0000": fenced(ROUTE_BY_TOKENS),  # TOKEN_SLACK is not defined
        "q0000/repair": slack,
        "q0001": fenced(HOSTILE["bad_id"]),  # passes every check, fails in the sandbox
        "q0001r": fenced(GOOD_B),
        "q0002": fenced(ROUTE_BY_TOKENS),  # repaired before the sandbox, then fails in it:
        "q0002/repair": fenced(HOSTILE["bad_id"]),  # its one round is spent
    }
    with LLMDouble(lambda user: [{"content": answers.get(user, "no idea")}]) as d:
        # One answer per slot: q0000 (unusable: search fills the slot), its repair, q0001,
        # q0001r, q0002 (unusable), its repair.
        s, archive = run(config(d.url, generations=1, population=6, islands=1), tmp_path / "r")
        calls = {c["user"]: c for c in d.calls}
    assert "q0002r" not in calls
    pre = calls["q0000/repair"]["messages"]
    assert pre[-2] == {"role": "assistant", "content": answers["q0000"]}
    assert "NameError: name 'TOKEN_SLACK' is not defined" in pre[-1]["content"]
    post = calls["q0001r"]["messages"][-1]["content"]
    assert "in the sandbox" in post and "no such replica" in post
    cands = archive["candidates"]
    assert "NameError" in cands["g001-q0000"]["rejection"]
    assert cands["g001-q0000-repair"]["rejection"] is None
    assert "no such replica" in cands["g001-q0001"]["rejection"]
    assert cands["g001-q0001r"]["rejection"] is None
    assert "no such replica" in cands["g001-q0002-repair"]["rejection"]
    llm = s["llm"]
    assert (llm["proposed"], llm["contract_ok"], llm["evaluated"]) == (3, 3, 3)
    assert (llm["repair_rounds"], llm["sandbox_repairs"]) == (2, 1)


def test_a_dead_llm_leaves_the_optuna_only_run_as_it_was(tmp_path):
    # A suite where tuning changes scores, so that equal runs are a real comparison.
    suite = Suite(("bursty-code",), (0,), 1.0)
    kw = dict(generations=2, population=2, islands=1, quick=suite, tune_trials=6, eval_wall_s=30.0)
    alone, alone_archive = run(config(None, **kw), tmp_path / "alone")
    # The simulator charges measured decision time, so scores jitter with the machine's
    # load: the LLM run is given the sandbox's answers of the first run (its journal, not
    # its identity), so that the same code gets the same score and equal means equal.
    (tmp_path / "both").mkdir()
    shutil.copy(tmp_path / "alone" / "journal.jsonl", tmp_path / "both" / "journal.jsonl")
    with LLMDouble(lambda user: [{"status": 500}]) as d:
        # Each slot waits for its (failing) answer: the third in a row retires the LLM.
        both, both_archive = run(config(d.url, llm_wait_s=None, **kw), tmp_path / "both")
    assert "failed 3 requests in a row" in both["llm"]["retired"]
    assert both["llm"]["evaluated"] == 0 and both["proposers"]["tune"] == alone["proposers"]["tune"]
    assert alone["proposers"]["tune"]["unique"] >= 1  # tuning did find something here

    def searched(archive: dict) -> dict:
        return {k: v for k, v in archive["candidates"].items() if v["origin"] != "llm"}

    assert searched(both_archive) == searched(alone_archive)
    assert both["best_objective"] == alone["best_objective"]
    assert both["best_candidate"] == alone["best_candidate"]
