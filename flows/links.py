"""What ties a control-plane record to the others: MLflow run <-> Prefect flow run.

Every MLflow run the control plane opens carries who and what made it (user,
source, git commit, a description: MLflow's own ``mlflow.*`` tags, which its UI
shows) and, when it was made inside a Prefect flow run, that flow run's id, name
and URL. The flow run, in turn, gets a tag and a link artifact naming the MLflow
run. URLs are where a user opens the UIs: the Prefect UI of ``PREFECT_UI_URL``
(derived from ``PREFECT_API_URL``), else ``prefect server start``'s default; the
MLflow UI at the tracking URI when it is a server, else ``AUTOPOIESIS_MLFLOW_UI_URL``,
else ``mlflow ui``'s default.
"""

from __future__ import annotations

import functools
import getpass
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PREFECT_UI_DEFAULT = "http://127.0.0.1:4200"
MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"
NOTE = "mlflow.note.content"
"""The run description MLflow's UI shows (and edits) on a run's page."""


# --------------------------------------------------------------------------- MLflow side
def mlflow_ui_url(tracking_uri: str) -> str:
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return os.environ.get("AUTOPOIESIS_MLFLOW_UI_URL", MLFLOW_UI_DEFAULT).rstrip("/")


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{mlflow_ui_url(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_run_path(experiment_id: str, run_id: str) -> str:
    """A link inside MLflow's own UI (a model version's description), whatever its host."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit, when the code runs from one (not in the app image)."""
    if not (ROOT / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_tags(source: str, description: str | None = None) -> dict[str, str]:
    """MLflow's system tags for a run the control plane opens, plus its Prefect flow run.

    ``source``: what made the run, as a user would name it (``autopoiesis evolve``,
    ``prefect flow evolve``). ``mlflow.source.type`` is ``JOB`` inside a Prefect flow
    run, ``LOCAL`` otherwise.
    """
    flow_run = current_flow_run()
    tags = {
        "mlflow.user": _user(),
        "mlflow.source.name": source,
        "mlflow.source.type": "JOB" if flow_run else "LOCAL",
    }
    if commit := git_commit():
        tags["mlflow.source.git.commit"] = commit
    if description:
        tags[NOTE] = description
    if flow_run:
        tags |= {
            "prefect.flow_run_id": flow_run["id"],
            "prefect.flow_run_name": flow_run["name"],
            "prefect.flow_run_url": flow_run["url"],
        }
    return tags


def default_source() -> str:
    """What is running, as a user would name it: ``autopoiesis evolve``, ``prefect flow
    evolve (deployment evolve/evolve)``, or both when the CLI runs a flow."""
    from prefect.context import FlowRunContext

    parts = []
    if Path(sys.argv[0]).name == "autopoiesis" and len(sys.argv) > 1:
        parts.append(f"autopoiesis {sys.argv[1]}")
    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow is not None:
        flow = f"prefect flow {ctx.flow.name}"
        if ctx.flow_run is not None and ctx.flow_run.deployment_id is not None:
            from prefect.runtime import deployment

            flow += f" (deployment {ctx.flow.name}/{deployment.name})"
        parts.append(flow)
    return " via ".join(parts) or Path(sys.argv[0]).name


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return str(os.getuid())


# --------------------------------------------------------------------------- Prefect side
def prefect_ui_url() -> str:
    from prefect.settings import PREFECT_UI_URL

    return (PREFECT_UI_URL.value() or PREFECT_UI_DEFAULT).rstrip("/")


def current_flow_run() -> dict[str, str] | None:
    """The Prefect flow run this code runs in (id, name, UI URL), or None outside one."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None
    fr = ctx.flow_run
    return {"id": str(fr.id), "name": fr.name, "url": f"{prefect_ui_url()}/runs/flow-run/{fr.id}"}


def link_flow_run(tracking_uri: str, experiment_id: str, run_id: str, what: str) -> str | None:
    """Tag the current flow run with its MLflow run and add a link artifact to it.

    Returns the MLflow run's URL, or None outside a flow run. ``what`` names the run
    in the artifact (``evolution run``, ``promotion decision``).
    """
    from prefect.artifacts import create_link_artifact

    flow_run = current_flow_run()
    if flow_run is None:
        return None
    url = mlflow_run_url(tracking_uri, experiment_id, run_id)
    create_link_artifact(
        url,
        link_text=f"MLflow {what} {run_id[:8]}",
        key="mlflow-run",
        description=f"The MLflow {what} this flow run logged.",
    )
    add_flow_run_tags([f"mlflow-run:{run_id}"])
    return url


def add_flow_run_tags(tags: list[str]) -> None:
    """Add tags to the current flow run (Prefect's UI lists and filters runs by them)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(ctx.flow_run.id).tags or []
        client.update_flow_run(ctx.flow_run.id, tags=list(dict.fromkeys([*current, *tags])))


def markdown_artifact(key: str, markdown: str, description: str) -> None:
    """A markdown artifact on the current flow run (none outside one)."""
    from prefect.artifacts import create_markdown_artifact

    if current_flow_run() is not None:
        create_markdown_artifact(markdown, key=key, description=description)


def markdown_table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    for k, v in rows:
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        lines.append(f"| {k} | {text.replace('|', '/')} |")
    return "\n".join(lines)
