"""What Prefect and MLflow show a user, checked through their APIs and a headless browser.

    python infra/ui/check.py [--shots DIR] [--keep]

Starts a real ``prefect server start`` and ``mlflow server`` on loopback ports of
their own (state under ``mlruns/ui-check/``), registers a baseline champion,
runs ``autopoiesis deploy`` (work pool + worker), then as a user would: one run
of the pull-telemetry deployment on an empty state, one short run of the evolve
deployment (which chains promote) and one ``autopoiesis evolve`` from the CLI.
Then it checks, through the servers' REST APIs:

- pull completed on an empty state and said why it had nothing to do;
- the deployments sit on the work pool with their tags, descriptions and a
  description for every parameter;
- each evolve flow run (deployment and CLI) links to its MLflow run and back
  (tags, link artifact, summary artifact); promote logs and records its decision;
- the experiments open on runs, runs carry user, source and description;
- registry versions are MLflow models (MLmodel, signature) with descriptions
  and load without running the policy;
- the generation series are monotonic and never logged twice at a step;

and, in headless Chromium (``/usr/bin/chromium`` + chromedriver, driven by
selenium), that the pages render what those APIs promise. With ``--shots`` it
saves the README's screenshots there. Exits non-zero on the first failed check,
naming it; stops everything it started either way.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from browser import check_browser
from uiapi import (
    TERMINAL,
    CheckFailed,
    MlflowAPI,
    PrefectAPI,
    Services,
    expect,
    free_port,
    say,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORK = ROOT / "mlruns" / "ui-check"
SCENARIO = "mixed-pool"
SCALE = 0.05


# --------------------------------------------------------------------------- the steps
def start_services(svc: Services, prefect_port: int, mlflow_port: int) -> None:
    svc.start(
        "prefect-server",
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(prefect_port),
        ],
    )
    svc.start(
        "mlflow-server",
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--backend-store-uri",
            f"sqlite:///{WORK / 'mlflow.db'}",
            "--artifacts-destination",
            str(WORK / "artifacts"),
            "--workers",
            "1",
        ],
    )

    def healthy(name: str, url: str) -> bool:
        svc.alive(name)
        return requests.get(url, timeout=5).ok

    wait_for(
        "Prefect server",
        lambda: healthy("prefect-server", f"http://127.0.0.1:{prefect_port}/api/health"),
        180,
    )
    wait_for(
        "MLflow server",
        lambda: healthy("mlflow-server", f"http://127.0.0.1:{mlflow_port}/health"),
        180,
    )
    say("both servers up")


def seed_champion() -> str:
    from flows.registry import CHAMPION, PolicyRegistry
    from serving.policy_loader import builtin_source

    return PolicyRegistry().register_source(
        builtin_source("round_robin"), "round_robin", alias=CHAMPION
    )


def check_deployments(api: PrefectAPI) -> dict[str, dict[str, Any]]:
    from flows.deploy import SPECS, WORK_POOL

    deps = wait_for(
        "the three deployments",
        lambda: d if set(SPECS) <= set(d := api.deployments()) else None,
        120,
    )
    for name, spec in SPECS.items():
        d = deps[name]
        expect(
            set(spec.tags) <= set(d["tags"]), f"deployment {name} has tags {spec.tags}", d["tags"]
        )
        expect(
            d["description"] == spec.description,
            f"deployment {name} has its description",
            d["description"],
        )
        expect(
            d["work_pool_name"] == WORK_POOL,
            f"deployment {name} is on work pool {WORK_POOL}",
            d["work_pool_name"],
        )
        props = d["parameter_openapi_schema"]["properties"]
        undocumented = [k for k, v in props.items() if not v.get("description")]
        expect(
            not undocumented, f"deployment {name}: every parameter has a description", undocumented
        )
        untyped = [k for k, v in props.items() if not ({"type", "anyOf", "allOf", "$ref"} & set(v))]
        expect(not untyped, f"deployment {name}: every parameter has a type", untyped)
        for key in ("state_dir", "telemetry_dir"):
            if key in d["parameters"]:
                expect(
                    Path(d["parameters"][key]).is_absolute(),
                    f"deployment {name}: {key} is absolute",
                    d["parameters"][key],
                )
    pools = {p["name"] for p in api.post("/work_pools/filter")}
    expect(WORK_POOL in pools, f"work pool {WORK_POOL} is listed", pools)
    return deps


def check_pull(api: PrefectAPI, deps: dict[str, dict[str, Any]]) -> None:
    fr = api.wait(api.run(deps["pull-telemetry"]["id"], {}), 180)
    expect(
        fr["state_type"] == "COMPLETED",
        "pull-telemetry completes on an empty state",
        f"{fr['state_type']}: {api.logs(fr['id'])[-2000:]}",
    )
    # Logs reach the API in batches, possibly after the run's final state.
    wait_for("pull-telemetry's log line", lambda: "no telemetry yet" in api.logs(fr["id"]), 30)
    expect(True, "pull-telemetry logs that there is no telemetry yet")


def linked_evolution(api: PrefectAPI, ml: MlflowAPI, fr: dict[str, Any], how: str) -> str:
    """The evolve flow run ``fr`` and its MLflow run point at each other; the run id."""
    arts = api.artifacts(fr["id"])
    expect(
        {"mlflow-run", "evolution-summary"} <= set(arts),
        f"{how} evolve run has the MLflow link and summary artifacts",
        sorted(arts),
    )
    tag = next((t for t in fr["tags"] if t.startswith("mlflow-run:")), "")
    run_id = tag.removeprefix("mlflow-run:")
    expect(
        run_id and run_id in arts["mlflow-run"]["data"],
        f"{how} evolve run is tagged with its MLflow run and links to it",
        fr["tags"],
    )
    run = ml.run(run_id)
    expect(
        run["tags"].get("prefect.flow_run_id") == fr["id"],
        f"{how} evolution's MLflow run names its Prefect flow run",
        run["tags"],
    )
    expect(
        run["tags"].get("prefect.flow_run_url", "").endswith(f"/runs/flow-run/{fr['id']}"),
        f"{how} evolution's MLflow run links to the flow run page",
    )
    for key in ("mlflow.user", "mlflow.source.name", "mlflow.note.content"):
        expect(run["tags"].get(key), f"{how} evolution run has {key}")
    return run_id


def check_evolution_metrics(ml: MlflowAPI, run_id: str, exp_id: str) -> list[str]:
    from flows.evolution.tracking import GENERATION_SERIES

    for key in GENERATION_SERIES:
        hist = ml.history(run_id, key)
        steps = [s for s, _ in hist]
        expect(
            steps == sorted(set(steps)) and steps[:1] == [0],
            f"{key} is logged once per generation, steps 0..n",
            steps,
        )
    best = [v for _, v in ml.history(run_id, "archive_best_objective")]
    expect(
        all(a <= b for a, b in itertools.pairwise(best)),
        "archive_best_objective never decreases",
        best,
    )
    children = ml.children(exp_id, run_id)
    expect(children, "the evolution has candidate runs")
    ids = []
    for c in children:
        metrics = {m["key"] for m in c["data"].get("metrics", [])}
        tags = {t["key"]: t["value"] for t in c["data"].get("tags", [])}
        expect(
            "tokens" not in metrics,
            f"candidate {tags.get('candidate_id')}: no LLM tokens metric in an Optuna-only run",
            sorted(metrics),
        )
        expect(
            tags.get(key := "mlflow.note.content"),
            f"candidate {tags.get('candidate_id')} has a description ({key})",
        )
        ids.append(c["info"]["run_id"])
    return ids


def check_registry(ml: MlflowAPI) -> list[dict[str, Any]]:
    import mlflow

    from flows.evolution.tracking import MODEL_NAME

    versions = ml.get("/model-versions/search", filter=f"name='{MODEL_NAME}'")["model_versions"]
    expect(
        len(versions) >= 2,
        "the registry holds the champion and a challenger",
        [v["version"] for v in versions],
    )
    for v in versions:
        expect(v.get("description"), f"version {v['version']} has a description")
        expect(
            v["source"].startswith("models:/"),
            f"version {v['version']} is an MLflow model",
            v["source"],
        )
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{v['version']}")
        expect(
            model.metadata.signature is not None,
            f"version {v['version']} loads as a pyfunc with a signature",
        )
        tags = {t["key"]: t["value"] for t in v.get("tags", [])}
        if "evolution_run" in tags:
            expect(
                tags["evolution_run"] in v["description"],
                f"version {v['version']}'s description links its evolution run",
            )
    return versions


def run_evolve_command(env: dict[str, str]) -> None:
    cmd = [
        str(BIN / "autopoiesis"),
        "evolve",
        "--scenarios",
        SCENARIO,
        "--scale",
        str(SCALE),
        "--full-scenarios",
        "none",
        "--generations",
        "1",
        "--population",
        "2",
        "--tune-trials",
        "2",
        "--islands",
        "1",
        "--run-dir",
        str(WORK / "cli-evolve"),
        "--fresh",
    ]
    with (WORK / "cli-evolve.log").open("wb") as log:
        rc = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600
        ).returncode
    expect(
        rc == 0,
        "autopoiesis evolve (CLI) exits 0",
        (WORK / "cli-evolve.log").read_text(errors="replace")[-3000:],
    )


def _service_env(urls: dict[str, str]) -> dict[str, str]:
    """This process's environment pointed at the check's own Prefect and MLflow servers."""
    return dict(
        os.environ,
        PREFECT_HOME=str(WORK / "prefect"),
        PREFECT_API_URL=f"{urls['prefect']}/api",
        PREFECT_UI_URL=urls["prefect"],
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        MLFLOW_TRACKING_URI=urls["mlflow"],
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        AUTOPOIESIS_SHARED=os.environ.get("AUTOPOIESIS_SHARED", str(ROOT.parent / "shared")),
    )


def _check_deployment_chain(
    api: PrefectAPI, ml: MlflowAPI, deps: dict[str, Any], svc: Services
) -> tuple[dict[str, Any], str]:
    """Run the evolve deployment; it completes, links its MLflow run and chains a promote
    run that completes and records its decision. (the flow run, its MLflow run id)"""
    params = {
        "scenarios": [SCENARIO],
        "generations": 1,
        "population": 2,
        "tune_trials": 2,
        "scale": SCALE,
        "seeds_policies": ["least_kv", "llmd_weighted"],
        "promote_params": {"scale": SCALE, "dwell_s": 0.0},
    }
    evo = api.wait(api.run(deps["evolve"]["id"], params), 600)
    svc.alive("deploy")
    expect(
        evo["state_type"] == "COMPLETED",
        "the evolve deployment run completes",
        f"{evo['state_type']}: {api.logs(evo['id'])[-3000:]}",
    )
    evo = api.get(f"/flow_runs/{evo['id']}")
    evo_run = linked_evolution(api, ml, evo, "deployment")
    promote = wait_for(
        "the promote run evolve chained",
        lambda: [r for r in api.flow_runs("promote") if r["state_type"] in TERMINAL],
        300,
        2.0,
    )[0]
    expect(
        promote["state_type"] == "COMPLETED",
        "the chained promote run completes",
        api.logs(promote["id"])[-3000:],
    )
    expect(
        "promotion-decision" in api.artifacts(promote["id"])
        or "no champion yet" in api.logs(promote["id"]),
        "promote records its decision as an artifact",
    )
    wait_for(
        "promote's decision in its log",
        lambda: any(w in api.logs(promote["id"]) for w in ("PROMOTED", "not promoted")),
        30,
    )
    expect(True, "promote logs its decision")
    return evo, evo_run


# --------------------------------------------------------------------------- main
# Long for a reason: the checks in the order a user meets them, each a named function.
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shots", type=Path, help="save the README screenshots here")
    ap.add_argument("--no-browser", action="store_true", help="APIs only")
    args = ap.parse_args()
    t0 = time.monotonic()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    pp, mp = free_port(), free_port()
    urls = {"prefect": f"http://127.0.0.1:{pp}", "mlflow": f"http://127.0.0.1:{mp}"}
    env = _service_env(urls)
    if not Path(env["AUTOPOIESIS_SHARED"], "traces").is_dir():
        say(f"shared data not found at {env['AUTOPOIESIS_SHARED']} (set AUTOPOIESIS_SHARED)")
        return 1
    os.environ.update(env)
    svc = Services(env, WORK, ROOT)
    try:
        start_services(svc, pp, mp)
        say(f"champion v{seed_champion()} registered")
        svc.start(
            "deploy",
            [
                str(BIN / "autopoiesis"),
                "deploy",
                "--telemetry-dir",
                str(WORK / "telemetry"),
                "--state-dir",
                str(WORK / "state"),
            ],
        )
        api, ml = PrefectAPI(f"{urls['prefect']}/api"), MlflowAPI(urls["mlflow"])
        deps = check_deployments(api)
        check_pull(api, deps)
        evo, evo_run = _check_deployment_chain(api, ml, deps, svc)
        run_evolve_command(env)
        cli = [r for r in api.flow_runs("evolve") if r["name"] == "cli-evolve"]
        expect(cli, "the CLI's evolve appears in Prefect as a flow run of flow evolve")
        linked_evolution(api, ml, cli[0], "CLI")
        exp = ml.experiment("autopoiesis-evolution")
        expect(
            exp["tags"].get("mlflow.experimentKind") == "custom_model_development",
            "the evolution experiment opens on its runs (kind: model development)",
        )
        candidates = check_evolution_metrics(ml, evo_run, exp["experiment_id"])
        versions = check_registry(ml)
        if not args.no_browser:
            check_browser(
                urls,
                deps["evolve"],
                evo,
                exp["experiment_id"],
                evo_run,
                candidates,
                max(versions, key=lambda v: int(v["version"]))["version"],
                WORK,
                args.shots,
            )
    except CheckFailed as e:
        say(f"FAILED {e}")
        return 1
    finally:
        svc.stop()
    say(f"all UI checks passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
