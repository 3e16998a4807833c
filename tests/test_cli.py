"""The command line: errors are one line naming the problem; the benches write their JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    return lines[0]


def test_malformed_trace_is_one_line_naming_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,12,3\n0.5,abc,4\n")
    line = error_line(run("simulate", "--trace", str(bad), "--policy", "round_robin"))
    assert "bad.csv" in line and "num_prefill_tokens" in line


def test_policy_without_route_is_one_line(tmp_path):
    policy = tmp_path / "norte.py"
    policy.write_text("def reschedule(cluster, now):\n    return None\n")
    line = error_line(run("simulate", "--scenario", "steady-conv", "--policy", str(policy)))
    assert "does not define route()" in line


@pytest.mark.parametrize(
    ("cluster", "message"),
    [("llama-3-8b@2xV100", "unknown GPU 'V100'"), ("llama-9b@2xH100", "unknown model 'llama-9b'")],
)
def test_unknown_hardware_is_one_line(tmp_path, cluster, message):
    trace = tmp_path / "t.csv"
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.0,12,3\n0.5,10,4\n")
    line = error_line(run("simulate", "--trace", str(trace), "--cluster", cluster,
                          "--policy", "round_robin"))
    assert message in line


def test_policy_fault_is_reported_not_scored(tmp_path):
    policy = tmp_path / "liar.py"
    policy.write_text("def route(request, replicas, now):\n    return 12345\n")
    line = error_line(run("simulate", "--scenario", "steady-conv", "--policy", str(policy)))
    assert "policy fault" in line and "no such replica" in line


def test_simulate_trace_writes_summary(tmp_path):
    trace = tmp_path / "t.csv"
    rows = "\n".join(f"{i * 0.2},{100 + i},{20 + i % 7}" for i in range(50))
    trace.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows + "\n")
    out = tmp_path / "sim.json"
    result = run("simulate", "--trace", str(trace), "--cluster", "llama-3-8b@2xH100",
                 "--policy", "least_outstanding", "--json", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())["summary"]
    assert summary["completed"] == 50 and summary["slo_attainment"] == 1.0


def test_bench_baselines_marks_the_best_and_plots(tmp_path):
    out, plot = tmp_path / "b.json", tmp_path / "b.png"
    result = run("bench", "baselines", "--scenarios", "mixed-pool", "--policies",
                 "round_robin,least_outstanding", "--scale", "0.2", "--json", str(out),
                 "--plot", str(plot))
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    best = [r["policy"] for r in rows if r["best"]]
    # Round robin ignores that A100s are slower: least outstanding must win.
    assert best == ["least_outstanding"]
    assert plot.stat().st_size > 10_000


def test_bench_fidelity_meets_its_target(tmp_path):
    out = tmp_path / "f.json"
    result = run("bench", "fidelity", "--json", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["mape"] <= 0.05
