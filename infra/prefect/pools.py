"""The work pool `autopoiesis-eval` from a base job template in this folder, with site defaults.

    python infra/prefect/pools.py check                      # every template is well formed
    python infra/prefect/pools.py render --template docker   # the template with site defaults
    python infra/prefect/pools.py apply --template docker    # create or update the pool

Templates: ``docker`` (docker-pool.json, prefect-docker worker) and ``kubernetes``
(kubernetes-pool.yaml, prefect-kubernetes worker). Site defaults come from the
environment (the compose stack sets them; see infra/compose/.env.example):

* ``AUTOPOIESIS_APP_IMAGE``, ``AUTOPOIESIS_SANDBOX_IMAGE``: the flow-run and sandbox images;
* ``AUTOPOIESIS_STATE_DIR``, ``AUTOPOIESIS_SHARED``: host folders mounted at the *same*
  paths in the flow-run container, because the sandbox containers it starts through
  the docker socket bind them by host path;
* ``MLFLOW_TRACKING_URI``; ``DOCKER_SOCKET`` (default /var/run/docker.sock);
* ``AUTOPOIESIS_GPUS``: ``all`` (default), ``none``, a count (``2``) or device ids
  (``0,1``) -- the flow run's Docker GPU device request.

Applying needs ``PREFECT_API_URL`` and the ``prefect`` CLI.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TEMPLATES = {"docker": HERE / "docker-pool.json", "kubernetes": HERE / "kubernetes-pool.yaml"}
POOL = "autopoiesis-eval"
PLACEHOLDER = re.compile(r"{{\s*([\w.]+)\s*}}")


def load(name: str) -> dict[str, Any]:
    path = TEMPLATES[name]
    if path.suffix == ".json":
        return json.loads(path.read_text())
    import yaml

    return yaml.safe_load(path.read_text())


def placeholders(node: Any) -> set[str]:
    if isinstance(node, str):
        return set(PLACEHOLDER.findall(node))
    if isinstance(node, dict):
        return set().union(*(placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(placeholders(v) for v in node)) if node else set()
    return set()


def device_requests(gpus: str) -> list[dict[str, Any]]:
    """``AUTOPOIESIS_GPUS`` as docker-py ``DeviceRequest`` keyword arguments."""
    gpus = gpus.strip().lower()
    if gpus in ("", "none", "0"):
        return []
    req: dict[str, Any] = {"driver": "nvidia", "capabilities": [["gpu"]]}
    if gpus == "all":
        req["count"] = -1
    elif gpus.isdigit():
        req["count"] = int(gpus)
    else:
        req["device_ids"] = [g.strip() for g in gpus.split(",") if g.strip()]
    return [req]


def with_site(name: str, template: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The template with its defaults set for this site (the Docker one; Kubernetes as is,
    apart from the image and tracking URI)."""
    t = copy.deepcopy(template)
    props = t["variables"]["properties"]

    def setenv(key: str, value: str | None) -> None:
        if value:
            props["env"]["default"][key] = value

    if env.get("AUTOPOIESIS_APP_IMAGE"):
        props["image"]["default"] = env["AUTOPOIESIS_APP_IMAGE"]
    setenv("MLFLOW_TRACKING_URI", env.get("MLFLOW_TRACKING_URI"))
    if name != "docker":
        return t
    state = env.get("AUTOPOIESIS_STATE_DIR", "/var/lib/autopoiesis")
    shared = env.get("AUTOPOIESIS_SHARED", f"{state}/shared")
    sock = env.get("DOCKER_SOCKET", "/var/run/docker.sock")
    props["volumes"]["default"] = [
        f"{sock}:/var/run/docker.sock",
        f"{state}:{state}",
        f"{shared}:{shared}:ro",
    ]
    setenv("AUTOPOIESIS_SHARED", shared)
    setenv("AUTOPOIESIS_SANDBOX_IMAGE", env.get("AUTOPOIESIS_SANDBOX_IMAGE"))
    setenv("AUTOPOIESIS_ADMIN_TOKEN_FILE", f"{state}/secrets/admin-token")
    if env.get("AUTOPOIESIS_IMAGE_PULL_POLICY"):
        props["image_pull_policy"]["default"] = env["AUTOPOIESIS_IMAGE_PULL_POLICY"]
    kwargs = dict(props["container_create_kwargs"]["default"] or {})
    reqs = device_requests(env.get("AUTOPOIESIS_GPUS", "all"))
    if reqs:
        kwargs["device_requests"] = reqs
    else:
        kwargs.pop("device_requests", None)
    props["container_create_kwargs"]["default"] = kwargs
    return t


def check(name: str, template: dict[str, Any]) -> list[str]:
    """What is wrong with a template (nothing: an empty list)."""
    problems = []
    if set(template) != {"job_configuration", "variables"}:
        problems.append(f"{name}: top-level keys {sorted(template)}")
        return problems
    declared = set(template["variables"].get("properties", {}))
    used = placeholders(template["job_configuration"])
    if missing := used - declared:
        problems.append(f"{name}: placeholders without a variable: {sorted(missing)}")
    if name == "docker":
        kw = template["variables"]["properties"]["container_create_kwargs"]["default"] or {}
        if not kw.get("device_requests"):
            problems.append("docker: no GPU device request in container_create_kwargs")
    if name == "kubernetes":
        job = template["job_configuration"]["job_manifest"]
        if job.get("kind") != "Job" or job.get("apiVersion") != "batch/v1":
            problems.append("kubernetes: job_manifest is not a batch/v1 Job")
        pod = job["spec"]["template"]["spec"]
        names = [c.get("name") for c in pod.get("containers", [])]
        if "prefect-job" not in names:
            problems.append("kubernetes: no container named prefect-job (the worker's)")
        limits = pod["containers"][names.index("prefect-job")]["resources"]["limits"] \
            if "prefect-job" in names else {}
        if limits.get("nvidia.com/gpu") != "{{ gpus }}":
            problems.append("kubernetes: no nvidia.com/gpu limit")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("check", "render", "apply"))
    p.add_argument("--template", choices=sorted(TEMPLATES), default="docker")
    p.add_argument("--pool", default=os.environ.get("AUTOPOIESIS_WORK_POOL", POOL))
    a = p.parse_args(argv)
    if a.action == "check":
        bad = [msg for name in TEMPLATES for msg in check(name, load(name))]
        bad += check("docker", with_site("docker", load("docker"), {}))
        for msg in bad:
            print(msg, file=sys.stderr)
        print("templates ok" if not bad else f"{len(bad)} problem(s)")
        return 1 if bad else 0
    t = with_site(a.template, load(a.template), dict(os.environ))
    if problems := [m for m in check(a.template, t) if "GPU device request" not in m]:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if a.action == "render":
        print(json.dumps(t, indent=2))
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(t, f)
    try:
        return subprocess.run(
            ["prefect", "--no-prompt", "work-pool", "create", a.pool, "--type", a.template,
             "--base-job-template", f.name, "--overwrite"], check=False,
        ).returncode
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    sys.exit(main())
