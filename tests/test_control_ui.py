"""What Prefect and MLflow show a user: deployments, links, models, metric series.

The servers and a browser are exercised by ``infra/ui/check.py`` (run by
``.ci/run``); these are the same promises checked on Prefect's temporary API and
a sqlite MLflow store, fast enough for every test run.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from prefect_support import offline_prefect
from sandbox_support import process_backend

from flows.evolution.archive import Archive, Candidate
from flows.evolution.tracking import GENERATION_SERIES, MODEL_NAME, Tracker
from serving.policy_loader import builtin_source

ROOT = Path(__file__).resolve().parents[1]

# Module-level code that would leave a mark if the policy were ever executed on load.
MARKING = '''
import pathlib
pathlib.Path({path!r}).write_text("executed")

from serving.contract import HOLD


def route(request, replicas, now):
    return HOLD
'''


@pytest.fixture(scope="module", autouse=True)
def prefect_env(tmp_path_factory):
    with offline_prefect(tmp_path_factory.mktemp("prefect")):
        yield


def test_deployments_carry_prefect_yaml_tags_descriptions_and_parameter_docs(tmp_path: Path):
    from flows.deploy import SPECS, deployments

    deps = {d.name: d for d in deployments("tel", "state", 120)}
    for name, spec in SPECS.items():
        d = deps[name]
        assert d.tags == list(spec.tags) and d.description == spec.description
        props = d._parameter_openapi_schema.properties
        assert props and all(p.get("description") for p in props.values()), name
        for key in ("state_dir", "telemetry_dir"):
            if key in d.parameters:
                assert Path(d.parameters[key]).is_absolute()
    # prefect.yaml (the compose stack's Docker pool) says the same as `autopoiesis deploy`.
    in_yaml = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())
               ["deployments"]}
    assert {n: (d["description"], tuple(d["tags"])) for n, d in in_yaml.items()} == {
        n: (s.description, s.tags) for n, s in SPECS.items()}


def test_pull_completes_when_no_telemetry_exists_yet(tmp_path: Path):
    from flows.prefect_flows import pull_telemetry

    state = pull_telemetry(str(tmp_path / "never-written"), state_dir=str(tmp_path / "state"),
                           chain="none", return_state=True)
    assert state.is_completed()
    assert state.result() == {"requests": 0, "trigger": False, "reason": "no telemetry yet"}


def test_a_registry_version_is_a_pyfunc_model_whose_loading_never_runs_the_policy(tmp_path):
    import mlflow

    from flows.registry import CHAMPION, PolicyRegistry

    mark = tmp_path / "mark"
    source = MARKING.format(path=str(mark))
    reg = PolicyRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = reg.register_source(source, "marking", alias=CHAMPION)
    mv = reg.client.get_model_version(MODEL_NAME, version)
    assert mv.source.startswith("models:/") and "registered as it is" in mv.description
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    assert model.metadata.signature is not None
    assert reg.fetch(CHAMPION).source == source
    assert not mark.exists(), "loading the model executed the policy"
    exp = reg.client.get_experiment(reg.experiment_id())
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    run = reg.client.get_run(mv.run_id)
    assert {"mlflow.user", "mlflow.source.name", "mlflow.note.content"} <= set(run.data.tags)


def test_the_model_scores_the_policy_in_the_sandbox(tmp_path):
    import mlflow

    from flows.registry import PolicyRegistry

    process_backend().close()
    reg = PolicyRegistry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    v = reg.register_source(builtin_source("least_outstanding"), "least_outstanding")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{v}")
    out = model.predict({"scenario": ["sandbox-micro"], "seed": [0], "scale": [1.0]},
                        params={"backend": "process"})
    assert out.loc[0, "rejection"] is None and 0 <= out.loc[0, "objective"] <= 1


def test_generation_series_are_not_logged_again_at_step_zero(tmp_path):
    from evolution_support import config

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start(config(None), None, "r")
    for g, best in enumerate((0.5, 0.6, 0.6)):
        tracker.generation(g, best, best - 0.1, 3 + g, 10 * (g + 1))
    c = Candidate("g002-s000", builtin_source("least_outstanding"), "sha", "h", 2, 0, "tune",
                  quick=0.6, cell=(0, 0, 0), eval_s=2.5)
    tracker.candidate(c, None, {})
    archive = Archive(1)
    archive.add(c)
    summary = {"best_objective": 0.6, "archive_cells": 5, "sandbox_evaluations": 30,
               "seed_objective": 0.5, "seed_policy": "lo", "registered_version": None}
    tracker.finish(summary, archive, [{"generation": 0.0, "best": 0.5, "mean": 0.5}])
    for key in GENERATION_SERIES:
        steps = [m.step for m in tracker.client.get_metric_history(run_id, key)]
        assert steps == [0, 1, 2], key
    run = tracker.client.get_run(run_id)
    assert run.data.metrics["best_objective"] == 0.6
    assert "llm.models" not in run.data.params and run.data.params["llm.enabled"] == "False"
    assert "Result:" in run.data.tags["mlflow.note.content"]
    (child,) = tracker.client.search_runs([tracker.experiment_id],
                                          f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert "tokens" not in child.data.metrics
    assert math.isclose((child.info.end_time - child.info.start_time) / 1000, 2.5, abs_tol=0.01)
