"""``autopoiesis evolve --trace``: a user's trace cut by time, evolved on, judged on the rest."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from prefect_support import offline_prefect
from sandbox_support import process_backend
from typer.testing import CliRunner

from flows.cli import app
from flows.evolution.rundir import EvolutionError, best_source
from flows.trace_holdout import UTILISATION, fleet_for, prepare
from sandbox.stretches import fleet_capacity
from sandbox.trace_formats.telemetry import workload_frame, workload_from_frame
from sandbox.traces import load_trace
from sandbox.transforms import scale_rate
from sandbox.window_scenarios import CLUSTER_KEY, build_window_scenario, window_names
from sandbox.workload import Workload
from serving.contract import ReplicaSpec

FIXTURES = Path(__file__).parent / "fixtures"
MOONCAKE = FIXTURES / "mooncake_head.jsonl"  # prefix hashes, 512-token blocks
AZURE_CODE = FIXTURES / "azure_code_head.csv"  # 200 requests, bursty


def same(a: Workload, b: Workload) -> None:
    for col in ("arrival_s", "prompt_tokens", "output_tokens", "max_tokens"):
        np.testing.assert_array_equal(getattr(a, col), getattr(b, col), err_msg=col)
    assert a.prefix_hashes == b.prefix_hashes
    assert a.prefix_block_tokens == b.prefix_block_tokens
    assert a.session_ids == b.session_ids


def test_a_workload_survives_the_telemetry_frame_and_back():
    mooncake = load_trace(MOONCAKE)
    assert mooncake.has_prefixes and mooncake.prefix_block_tokens == 512
    same(mooncake, workload_from_frame(workload_frame(mooncake), "frame", "frame"))
    n = 5
    sessions = Workload(
        arrival_s=np.array([0.0, 0.5, 0.5, 2.0, 3.25]),
        prompt_tokens=np.array([10, 200, 30, 4, 5]),
        output_tokens=np.array([1, 7, 30, 2, 9]),
        max_tokens=np.array([16, 7, 64, 2, 512]),  # a client's cap above what it generated
        session_ids=("a", "b", "a", "", "b"),
    )
    frame = workload_frame(sessions, start_unix_s=1.7e9)
    assert len(frame) == n and set(frame["status"]) == {"ok"}
    assert frame["arrival_unix_s"].iloc[0] == 1.7e9
    same(sessions, workload_from_frame(frame, "frame", "frame"))


def test_a_window_file_of_a_trace_replays_that_trace(tmp_path):
    from sandbox.window_scenarios import save_window

    azure = load_trace(AZURE_CODE)
    sha = save_window(workload_frame(azure), "llama-3-8b@2xH100", tmp_path)
    replay = build_window_scenario(window_names(sha)[0], directory=tmp_path).workload
    same(azure, replay)


def test_the_default_fleet_covers_the_trace_at_seventy_percent():
    azure = load_trace(AZURE_CODE)
    one = fleet_capacity(
        "llama-3-8b",
        (ReplicaSpec("H100", 1),),
        float(azure.prompt_tokens.mean()),
        float(azure.output_tokens.mean()),
    )
    # A trickle still gets two replicas: a router needs a choice.
    assert fleet_for(azure) == "llama-3-8b@2xH100"
    busy = scale_rate(azure, 60.0)
    rate = (len(busy) - 1) / busy.duration_s
    spec = fleet_for(busy)
    count = int(spec.split("@")[1].split("x")[0])
    assert count > 2
    assert rate <= UTILISATION * count * one  # covered
    assert rate > UTILISATION * (count - 1) * one  # by the fewest replicas that cover it


def test_the_trace_is_cut_by_time_into_two_content_addressed_windows(tmp_path):
    split = prepare(AZURE_CODE, tmp_path, holdout=0.25)
    again = prepare(AZURE_CODE, tmp_path, holdout=0.25)
    assert (again.train_sha, again.test_sha) == (split.train_sha, split.test_sha)
    files = sorted(tmp_path.glob("*.parquet"))
    assert len(files) == 2  # the same trace again writes nothing new
    for f in files:
        assert hashlib.sha256(f.read_bytes()).hexdigest() == f.stem
        assert pq.read_schema(f).metadata[CLUSTER_KEY].decode() == split.cluster
    train = pd.read_parquet(tmp_path / f"{split.train_sha}.parquet")
    test = pd.read_parquet(tmp_path / f"{split.test_sha}.parquet")
    assert split.train_requests + split.test_requests == len(load_trace(AZURE_CODE)) == 200
    assert (len(train), len(test)) == (split.train_requests, split.test_requests)
    # Disjoint and in time order: the test window is the later stretch, in trace time.
    assert train["arrival_unix_s"].max() < test["arrival_unix_s"].min()
    span = load_trace(AZURE_CODE).duration_s
    assert test["arrival_unix_s"].min() >= 0.75 * span > train["arrival_unix_s"].max()
    assert split.train_names == window_names(split.train_sha, split.cluster)
    assert split.quick_suite().scenarios == split.train_names
    assert split.quick_suite().windows_dir == str(tmp_path.resolve())


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--holdout", "1.5"], "holdout must be between 0 and 1"),
        (["--cluster", "llama-3-8b@4xH900"], "llama-3-8b@4xH900"),
        (["--cluster", "llama-3-8b@0xH100"], "no replicas"),
        (["--max-requests", "2"], "max requests must be at least 4"),
        (["--scenarios", "gpu-loss"], "drop --scenarios"),
    ],
)
def test_bad_options_fail_in_one_line(tmp_path, args, says):
    result = CliRunner().invoke(
        app, ["evolve", "--trace", str(AZURE_CODE), "--run-dir", str(tmp_path / "run"), *args]
    )
    assert result.exit_code != 0
    assert says in result.output and result.output.count("error:") == 1, result.output
    assert not (tmp_path / "run" / "run.json").exists()  # nothing started


def test_a_malformed_trace_fails_naming_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 5, "output_length": 3}\n{"timestamp": 1}\n')
    result = CliRunner().invoke(
        app, ["evolve", "--trace", str(bad), "--run-dir", str(tmp_path / "run")]
    )
    assert result.exit_code != 0
    assert "bad.jsonl" in result.output and "line 2" in result.output, result.output


def test_an_unfinished_run_has_no_best_source(tmp_path):
    with pytest.raises(EvolutionError, match="has not finished"):
        best_source(tmp_path)


def test_cluster_without_a_trace_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["evolve", "--cluster", "llama-3-8b@2xH100"])
    assert result.exit_code != 0 and "go with --trace" in result.output


@pytest.mark.slow
def test_a_tiny_evolution_on_a_trace_is_judged_on_its_held_out_part(tmp_path, monkeypatch):
    process_backend().close()
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    out, uri = tmp_path / "evo.json", f"sqlite:///{tmp_path / 'm.db'}"
    args = ["evolve", "--trace", str(MOONCAKE), "--cluster", "llama-3-8b@3xH100"]
    args += ["--generations", "1", "--population", "1", "--tune-trials", "2", "--islands", "1"]
    args += ["--run-dir", str(tmp_path / "run"), "--tracking-uri", uri, "--json", str(out)]
    with offline_prefect(tmp_path / "prefect"):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    hold = summary["holdout"]
    assert summary["quick_suite"] == list(window_names(hold["train_window"], hold["cluster"]))
    assert hold["cluster"] == "llama-3-8b@3xH100" and hold["holdout"] == 0.25
    assert hold["train_requests"] + hold["test_requests"] == len(load_trace(MOONCAKE))
    assert math.isfinite(hold["ratio"]) and hold["ratio"] > 0
    assert hold["best_baseline"] == max(hold["baselines"].values())
    assert hold["baselines"][hold["best_baseline_name"]] == hold["best_baseline"]
    assert hold["ratio"] == pytest.approx(hold["champion"] / hold["best_baseline"])
    tested = {s["name"] for s in hold["scenarios"]}
    assert tested == set(window_names(hold["test_window"], hold["cluster"]))
    assert "Held out" in result.output and hold["best_baseline_name"] in result.output
    assert json.loads((tmp_path / "run" / "holdout.json").read_text())["ratio"] == hold["ratio"]
    from mlflow import MlflowClient

    run = MlflowClient(uri).get_run(summary["mlflow_run_id"])
    assert run.data.metrics["holdout_ratio"] == pytest.approx(hold["ratio"])
    assert run.data.tags["holdout_best_baseline"] == hold["best_baseline_name"]
