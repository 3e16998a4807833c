"""``bench evolution``: evolve on a train stretch, judge on test stretches against baselines."""

from __future__ import annotations

import json
import math

import pytest
from sandbox_support import process_backend
from test_scenarios import needs_traces

from flows.bench.evolution import EvolutionBench, bench_evolution, log_to_mlflow, plot
from sandbox.objectives import Objective


@pytest.fixture(scope="module")
def result():
    process_backend().close()
    bench = EvolutionBench(
        scenarios=("bursty-code",),
        objective=Objective("slo"),
        generations=1,
        population=1,
        tune_trials=2,
        structure_share=1.0,
        test_seeds=(0,),
        budget_wall_s=600.0,
    )
    return bench_evolution(bench)


@needs_traces
@pytest.mark.slow
def test_the_champion_is_judged_against_the_best_baseline_on_test(result) -> None:
    (row,) = result["scenarios"]
    assert row["best_baseline"] == max(row["baselines"].values())
    assert row["best_baseline_name"] in row["baselines"]
    assert row["ratio"] == pytest.approx(row["champion"] / row["best_baseline"])
    assert math.isfinite(row["capacity_ratio"])  # capacity measured too (objective slo)
    assert 0 < row["best_baseline_slo_attainment"] <= 1 and row["champion_gpu_share"] > 0
    assert result["mean_ratio"] == result["min_ratio"] == row["ratio"]
    assert "def route" in row["source"]
    assert result["proposers"]["structure"]["proposed"] == 1
    assert result["llm"]["proposed"] == result["llm_compose"]["proposed"] == 0  # no LLM here
    assert result["budget"]["evaluations"] > 0 and result["evaluations_per_hour"] > 0
    json.dumps(result)  # the --json output


@needs_traces
@pytest.mark.slow
def test_the_result_is_plotted_and_logged_to_mlflow(result, tmp_path) -> None:
    assert plot(result, tmp_path / "p.png").stat().st_size > 1000
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = MlflowClient(uri).get_run(log_to_mlflow(result, uri))
    assert run.data.metrics["mean_ratio"] == pytest.approx(result["mean_ratio"])
    assert "bursty-code.ratio" in run.data.metrics
