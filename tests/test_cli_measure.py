"""``autopoiesis bench compare``, ``bench capacity`` and ``bench headroom`` end to end."""

from __future__ import annotations

import json

from test_cli import run
from test_scenarios import needs_traces

from serving.policy_loader import builtin_source

QUICK = ("--scale", "0.5", "--seeds", "0")  # prefix-heavy on 2 replicas: ~440 requests


@needs_traces
def test_bench_compare_reports_ratios_to_the_best_baseline(tmp_path):
    policy = tmp_path / "rr.py"
    policy.write_text(builtin_source("round_robin"))
    out = tmp_path / "c.json"
    result = run(
        "bench", "compare", "--policy", str(policy), "--scenarios", "mixed-pool", "--seeds", "0",
        "--baselines", "round_robin,least_outstanding,random_choice", "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    c = json.loads(out.read_text())
    (row,) = c["scenarios"]
    # Round robin overloads the A100 (a third of the H100's speed): least_outstanding wins.
    assert row["best_baseline_name"] == "least_outstanding"
    assert set(row["baselines"]) == {"round_robin", "least_outstanding", "random_choice"}
    assert row["ratio"] < 0.8 and c["min_ratio"] == row["ratio"] and c["split"] == "test"


@needs_traces
def test_bench_capacity_and_headroom(tmp_path):
    cap, head = tmp_path / "cap.json", tmp_path / "head.json"
    result = run(
        "bench",
        "capacity",
        "--policy",
        "prefix_affinity",
        "--scenario",
        "prefix-heavy",
        *QUICK,
        "--baselines",
        "round_robin",
        "--json",
        str(cap),
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(cap.read_text())["scenarios"]
    assert row["champion"]["capacity_rps"] > 0 and row["champion"]["capacity_scale"] > 0
    result = run(
        "bench",
        "headroom",
        "--scenarios",
        "prefix-heavy",
        *QUICK,
        "--no-capacity",
        "--json",
        str(head),
    )
    assert result.exit_code == 0, result.output
    (h,) = json.loads(head.read_text())["scenarios"]
    assert h["best_baseline"]["value"] <= h["no_contention"]


def test_bad_split_and_policy_are_one_line_errors(tmp_path):
    result = run("bench", "compare", "--policy", "nope", "--scenarios", "prefix-heavy")
    assert result.exit_code == 2 and "neither a baseline" in result.output
    result = run("bench", "headroom", "--scenarios", "prefix-heavy", "--split", "dev")
    assert result.exit_code == 2 and "unknown split 'dev'" in result.output
