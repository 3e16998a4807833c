"""Archive (MAP-Elites + islands), journal durability, diagnosis."""

from __future__ import annotations

import json
import random

from flows.evolution.archive import Archive, Candidate, cell_of, descriptors_of
from flows.evolution.diagnosis import diagnose, render
from flows.evolution.journal import Journal


def cand(cid: str, quick: float | None, cell=(0, 0, 0), island=0, rejection=None) -> Candidate:
    return Candidate(
        cid,
        "def route(a,b,c): return 0\n",
        "sha",
        cid,
        1,
        island,
        "tune",
        quick=quick,
        cell=cell,
        rejection=rejection,
    )


def test_cell_elite_replaced_only_by_a_clear_gain():
    a = Archive(islands=1, min_gain=1e-3)
    assert a.add(cand("a", 0.5))
    assert not a.add(cand("b", 0.5005))  # within min_gain: noise, the incumbent stays
    assert a.add(cand("c", 0.6))
    assert a.add(cand("d", 0.1, cell=(1, 0, 0)))  # a new cell always takes
    assert [c.id for c in a.elites()] == ["c", "d"]
    assert a.best().id == "c" and a.coverage() == 2
    assert not a.add(cand("e", None, rejection="static: import os"))
    assert [c.id for c in a.failures(5)] == ["e"]


def test_migration_moves_each_islands_best_along_the_ring():
    a = Archive(islands=2)
    a.add(cand("x", 0.7, island=0))
    a.add(cand("y", 0.4, cell=(1, 1, 1), island=1))
    moves = a.migrate()
    assert (0, 1, "x") in moves and (1, 0, "y") in moves
    assert a.best(1).id == "x"


def test_parent_sampling_is_reproducible():
    a = Archive(islands=1)
    for i in range(5):
        a.add(cand(f"c{i}", 0.1 * i, cell=(i, 0, 0)))
    picks = [a.sample_parent(random.Random("7/1/0"), 0).id for _ in range(3)]
    assert len(set(picks)) == 1


def test_descriptors_and_cells():
    s = {"e2e_mean_s": 10.0, "queue_mean_s": 2.0, "requests": 100.0, "preemptions": 3.0}
    d = descriptors_of([s], "def route(a, b, c):\n    return 0\n")
    assert d["queue_share"] == 0.2 and d["preemption_rate"] == 0.03
    assert cell_of(d) == (2, 1, 0)


def test_journal_survives_a_torn_last_line(tmp_path):
    j = Journal(tmp_path / "j.jsonl")
    j.put("a", {"v": 1})
    j.put("b", {"v": 2})
    j.close()
    with (tmp_path / "j.jsonl").open("a") as fh:
        fh.write('{"key": "c", "v"')  # killed mid-write
    j2 = Journal(tmp_path / "j.jsonl")
    assert j2.get("a")["v"] == 1 and j2.get("b")["v"] == 2 and j2.get("c") is None
    j2.put("c", {"v": 3})
    j2.close()
    lines = (tmp_path / "j.jsonl").read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "b", "c"]


def test_diagnosis_names_the_worst_scenario_and_the_dominant_phase():
    rows = [
        {
            "scenario": "busy",
            "seed": 0,
            "summary": {
                "slo_attainment": 0.4,
                "queue_mean_s": 8.0,
                "ttft_mean_s": 9.0,
                "e2e_mean_s": 12.0,
                "ttft_p50_s": 1.0,
                "ttft_p99_s": 40.0,
                "preemptions": 50.0,
                "requests": 100.0,
                "retries": 0.0,
                "objective": 0.4,
            },
        },
        {
            "scenario": "calm",
            "seed": 0,
            "summary": {
                "slo_attainment": 0.95,
                "queue_mean_s": 0.0,
                "ttft_mean_s": 0.2,
                "e2e_mean_s": 5.0,
                "ttft_p50_s": 0.2,
                "ttft_p99_s": 0.5,
                "preemptions": 0.0,
                "requests": 100.0,
                "retries": 0.0,
                "objective": 0.95,
            },
        },
    ]
    d = diagnose(rows)
    assert d["scenarios"][0]["scenario"] == "busy"
    assert d["scenarios"][0]["dominant"] == "queueing"
    assert d["scenarios"][1]["dominant"] == "decode"
    text = render(d)
    assert "busy: misses the SLO for 60.0%" in text and "preemptions" in text
