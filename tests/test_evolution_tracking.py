"""MLflow lineage: nested candidate runs, plots, the registered challenger (tmp sqlite store)."""

from __future__ import annotations

import pytest
from evolution_support import config
from prefect_support import offline_prefect
from sandbox_support import process_backend

from flows.evolution.archive import Archive, Candidate
from flows.evolution.run import open_evolution
from flows.evolution.tracking import MODEL_NAME, Tracker
from serving.policy_loader import builtin_source


@pytest.fixture
def tracker(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_run_candidates_plots_and_registry(tmp_path, tracker):
    process_backend().close()
    cfg = config(None, generations=1, population=2)
    evo = open_evolution(cfg, tmp_path / "run", tracker=tracker)
    try:
        summary = evo.run()
    finally:
        evo.close()
    client, run_id = tracker.client, summary["mlflow_run_id"]
    parent = client.get_run(run_id)
    assert parent.data.tags["scenario_set"] == cfg.quick.digest
    assert parent.data.params["seed"] == "0" and "quick.hash" in parent.data.params
    assert "best_objective" in parent.data.metrics
    children = client.search_runs(
        [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    assert len(children) == len(evo.archive.candidates)
    child = children[0]
    assert {"generation", "island", "parent_ids", "model"} <= set(child.data.params)
    arts = {a.path for a in client.list_artifacts(child.info.run_id, "policy")}
    assert "policy/policy.py" in arts
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/objective_per_generation.png", "plots/archive_map.png",
            "plots/proposals_per_generation.png"} <= plots
    assert "proposals.tune.proposed" in parent.data.metrics  # the generation report

    # Registration: a version with the tags and the alias, whose artifact is the source.
    c = evo.archive.best()
    version = tracker.register(c, cfg.quick.digest)
    mv = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    assert str(mv.version) == version and mv.tags["source_sha256"] == c.sha256
    assert mv.tags["scenario_set"] == cfg.quick.digest
    assert tracker.registered_source(version) == c.source


def test_resumed_tracking_does_not_duplicate_candidates(tmp_path, tracker):
    cfg = config(None, generations=1, population=1)
    run_id = tracker.start(cfg, None, "r")
    c = Candidate(
        "g000-s000",
        builtin_source("least_outstanding"),
        "sha",
        "h",
        0,
        0,
        "seed:least_outstanding",
        quick=0.5,
        cell=(0, 0, 0),
    )
    tracker.candidate(c, None, {})
    again = Tracker(tracker.uri)
    again.start(cfg, run_id, "r")
    again.candidate(c, None, {})
    runs = again.client.search_runs(
        [again.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    assert len(runs) == 1
    a = Archive(1)
    a.add(c)
    again.finish({"best_objective": 0.5}, a, [{"generation": 0.0, "best": 0.5, "mean": 0.5}])


def test_a_confirmation_lands_on_the_candidates_run(tmp_path, tracker):
    run_id = tracker.start(config(None), None, "r")
    c = Candidate("g001-s000", builtin_source("least_outstanding"), "sha", "h", 1, 0, "tune",
                  quick=0.9, cell=(0, 0, 0))
    tracker.candidate(c, None, {})
    c.confirmed = 0.88
    c.confirmation = {"verdict": "confirmed", "replay": {
        "summary": {"objective": 0.88, "ttft_mean_s": 0.3, "queue_mean_s": float("nan")},
        "simulated": {"objective": 0.9}, "agreement": {"ttft_mean_s_rel": 0.05},
        "fallbacks": {"exception": 0}, "failures": 0, "wall_s": 4.0}}
    tracker.confirmation(c)
    (run,) = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    m = run.data.metrics
    assert m["confirmed_objective"] == 0.88 and m["confirm.ttft_mean_s"] == 0.3
    assert m["confirm.sim.objective"] == 0.9 and m["confirm.agreement.ttft_mean_s_rel"] == 0.05
    assert "confirm.queue_mean_s" not in m  # NaN is not logged
    assert run.data.tags["confirm"] == "confirmed"
    arts = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    assert "confirmation.json" in arts


def test_evolve_command_writes_the_summary_json(tmp_path, monkeypatch):
    import json

    from flows.cli import app

    process_backend().close()
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    out = tmp_path / "evo.json"
    with offline_prefect(tmp_path / "prefect"):  # the CLI's evolve runs as a Prefect flow
        result = _invoke_evolve(app, tmp_path, out)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    for key in (
        "seed_objective",
        "best_objective",
        "improvement",
        "candidates",
        "evaluations_per_hour",
        "llm_tokens",
        "registered_version",
    ):
        assert key in summary
    assert summary["llm_tokens"] == 0 and summary["evaluations_per_hour"] > 0


def _invoke_evolve(app, tmp_path, out):
    from typer.testing import CliRunner

    return CliRunner().invoke(
        app,
        [
            "evolve",
            "--scenarios",
            "sandbox-micro",
            "--scale",
            "1.0",
            "--full-scenarios",
            "none",
            "--generations",
            "1",
            "--population",
            "1",
            "--tune-trials",
            "2",
            "--islands",
            "1",
            "--run-dir",
            str(tmp_path / "run"),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'm.db'}",
            "--json",
            str(out),
        ],
    )
