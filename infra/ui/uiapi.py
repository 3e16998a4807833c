"""The UI check's plumbing: the processes it starts and both servers' REST APIs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class CheckFailed(RuntimeError):
    pass


def say(msg: str) -> None:
    print(f"[ui-check] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def expect(ok: Any, what: str, detail: Any = "") -> None:
    if not ok:
        raise CheckFailed(f"{what}: {detail}" if detail != "" else what)
    say(f"ok  {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Services:
    """The processes this check started, each in its own process group, logs in ``work``."""

    def __init__(self, env: dict[str, str], work: Path, cwd: Path) -> None:
        self.env, self.work, self.cwd = env, work, cwd
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str]) -> None:
        log = (self.work / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            cmd,
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append((name, proc))

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop on SIGTERM: killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def alive(self, name: str) -> None:
        for n, proc in self.procs:
            if n == name and proc.poll() is not None:
                tail = (self.work / f"{name}.log").read_text(errors="replace")[-3000:]
                raise CheckFailed(f"{name} exited ({proc.returncode}):\n{tail}")


def wait_for(what: str, fn: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            got = fn()
        except (requests.RequestException, CheckFailed) as e:
            got, last = None, e
        if got:
            return got
        time.sleep(every_s)
    raise CheckFailed(f"{what}: not within {timeout_s:.0f} s ({last})")


# --------------------------------------------------------------------------- Prefect API
class PrefectAPI:
    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        r = requests.post(f"{self.url}{path}", json=body or {}, timeout=30)
        r.raise_for_status()
        return r.json()

    def get(self, path: str) -> Any:
        r = requests.get(f"{self.url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def deployments(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for d in self.post("/deployments/filter")}

    def run(self, deployment_id: str, parameters: dict[str, Any]) -> str:
        fr = self.post(f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters})
        return str(fr["id"])

    def wait(self, flow_run_id: str, timeout_s: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            fr = self.get(f"/flow_runs/{flow_run_id}")
            return fr if fr["state_type"] in TERMINAL else None

        return wait_for(f"flow run {flow_run_id}", done, timeout_s, 2.0)

    def logs(self, flow_run_id: str) -> str:
        rows = self.post(
            "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
        )
        return "\n".join(r["message"] for r in rows)

    def artifacts(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        rows = self.post(
            "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        )
        return {a["key"]: a for a in rows if a.get("key")}

    def flow_runs(self, flow_name: str) -> list[dict[str, Any]]:
        return self.post("/flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})


# --------------------------------------------------------------------------- MLflow API
class MlflowAPI:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> Any:
        r = requests.get(f"{self.url}/api/2.0/mlflow{path}", params=params, timeout=30)
        r.raise_for_status()
        return r.json()

    def run(self, run_id: str) -> dict[str, Any]:
        run = self.get("/runs/get", run_id=run_id)["run"]
        run["tags"] = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        return run

    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        rows = self.get("/metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])
        return [(int(m.get("step", 0)), float(m["value"])) for m in rows]

    def experiment(self, name: str) -> dict[str, Any]:
        exp = self.get("/experiments/get-by-name", experiment_name=name)["experiment"]
        exp["tags"] = {t["key"]: t["value"] for t in exp.get("tags", [])}
        return exp

    def children(self, experiment_id: str, parent: str) -> list[dict[str, Any]]:
        r = requests.post(
            f"{self.url}/api/2.0/mlflow/runs/search",
            timeout=30,
            json={
                "experiment_ids": [experiment_id],
                "max_results": 500,
                "filter": f"tags.`mlflow.parentRunId` = '{parent}'",
            },
        )
        r.raise_for_status()
        return r.json().get("runs", [])
