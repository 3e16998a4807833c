"""The CPU stack smoke test's client side, run in the app image beside the stack.

    python drive.py seed       # a baseline made the registered champion (MLflow server)
    python drive.py evolve     # run the evolve deployment on the worker; wait for it and
                               # for the promote run it chains; print both states as JSON
    python drive.py check      # MLflow registry, runs and the router's live policy

Talks to the servers through PREFECT_API_URL, MLFLOW_TRACKING_URI and the router's
admin API (ADMIN_URL, token from AUTOPOIESIS_ADMIN_TOKEN_FILE). Every step prints one
JSON line; a failed expectation exits non-zero with the reason.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SEED_CHAMPION = os.environ.get("SMOKE_CHAMPION", "round_robin")


def fail(msg: str) -> None:
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


def seed() -> dict[str, Any]:
    from flows.registry import CHAMPION, PolicyRegistry
    from serving.policy_loader import builtin_source

    reg = PolicyRegistry()
    if reg.version_of(CHAMPION) is not None:
        return {"champion": reg.version_of(CHAMPION), "seeded": False}
    v = reg.register_source(builtin_source(SEED_CHAMPION), SEED_CHAMPION, alias=CHAMPION)
    return {"champion": v, "policy": SEED_CHAMPION, "seeded": True}


def _wait(client: Any, flow_run_id: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        fr = client.read_flow_run(flow_run_id)
        if fr.state is not None and fr.state.type.value in TERMINAL:
            return fr
        if time.monotonic() > deadline:
            fail(f"flow run {fr.name} ({flow_run_id}) still {fr.state.type.value} "
                 f"after {timeout_s:.0f} s")
        time.sleep(2)


def _logs(client: Any, flow_run_id: Any, last: int = 40) -> list[str]:
    """The flow run's last log lines (from the Prefect API): why a run failed."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [f"{log.level} {log.message}"[:2000] for log in logs[-last:]]


def _promote_run(client: Any, after: Any, timeout_s: float) -> Any:
    """The promote flow run that evolve chained (``run_deployment``), once it exists."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["promote"])),
        )
        runs = [r for r in runs if r.created and r.created >= after]
        if runs:
            return runs[0]
        time.sleep(2)
    fail("evolve completed but no promote flow run appeared")
    return None


def evolve() -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    scenarios = os.environ.get("SMOKE_SCENARIOS", "mixed-pool").split(",")
    params = {
        "scenarios": scenarios,
        "generations": 1,
        "population": 2,
        "tune_trials": 2,
        "scale": float(os.environ.get("SMOKE_SCALE", "0.05")),
        "seeds_policies": ["llmd_weighted", "least_kv", "prefix_affinity"],
        "backend": "docker",
        "parallel": 2,
        "chain": "deployment",
        "promote_params": {"scale": float(os.environ.get("SMOKE_SCALE", "0.05")),
                           "dwell_s": 0.0},
    }
    t0 = time.time()
    fr = run_deployment("evolve/evolve", parameters=params, timeout=0)
    with get_client(sync_client=True) as client:
        created = client.read_flow_run(fr.id).created
        evo = _wait(client, fr.id, float(os.environ.get("SMOKE_EVOLVE_TIMEOUT_S", "600")))
        t_evo = time.time()
        out: dict[str, Any] = {
            "evolve": {"id": str(evo.id), "name": evo.name, "state": evo.state.type.value,
                       "seconds": round(t_evo - t0, 1)},
        }
        if evo.state.type.value != "COMPLETED":
            out["ok"] = False
            out["evolve"]["logs"] = _logs(client, evo.id)
            return out
        pr = _promote_run(client, created, 60)
        pr = _wait(client, pr.id, float(os.environ.get("SMOKE_PROMOTE_TIMEOUT_S", "300")))
        out["promote"] = {"id": str(pr.id), "name": pr.name, "state": pr.state.type.value,
                          "seconds": round(time.time() - t_evo, 1)}
        if pr.state.type.value != "COMPLETED":
            out["promote"]["logs"] = _logs(client, pr.id)
    out["ok"] = out["promote"]["state"] == "COMPLETED"
    return out


def check() -> dict[str, Any]:
    from flows.live import AdminClient, admin_token_from_env
    from flows.registry import CHALLENGER, CHAMPION, PolicyRegistry

    reg = PolicyRegistry()
    versions = reg.versions()
    champion, challenger = reg.version_of(CHAMPION), reg.version_of(CHALLENGER)
    runs = reg.client.search_runs(
        [e.experiment_id for e in reg.client.search_experiments()], max_results=1000
    )
    kinds: dict[str, int] = {}
    for r in runs:
        k = r.data.tags.get("kind", "candidate")
        kinds[k] = kinds.get(k, 0) + 1
    promotions = [r for r in runs if r.data.tags.get("kind") == "promotion"]
    token = admin_token_from_env()
    live = AdminClient(os.environ["ADMIN_URL"], token or "").policy()["current"]
    out = {
        "versions": [v["version"] for v in versions],
        "champion": champion,
        "challenger": challenger,
        "runs_by_kind": kinds,
        "promotion_runs": len(promotions),
        "promoted": champion == challenger,
        "router_version": live["version"],
        "router_policy": live["name"],
    }
    if len(versions) < 2 or challenger is None:
        fail(f"expected the seeded champion and a registered challenger: {out}")
    if not promotions:
        fail(f"no promotion decision in MLflow: {out}")
    if out["promoted"] and live["version"] != champion:
        fail(f"promoted v{champion} but the router runs {live['version']}: {out}")
    out["ok"] = True
    return out


def main() -> None:
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    steps = {"seed": seed, "evolve": evolve, "check": check}
    if step not in steps:
        fail(f"usage: drive.py {'|'.join(steps)}")
    out = steps[step]()
    print(json.dumps(out, default=str))
    if out.get("ok") is False:
        sys.exit(1)


if __name__ == "__main__":
    main()
