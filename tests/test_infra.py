"""The deployment's definitions, checked as data (no Docker, no cluster, no GPU).

prefect.yaml against the flows it deploys, the work-pool templates, and the compose
files' rules: health checks, gated start-up, no secret in a file. The stack itself is
run by infra/smoke/cpu-stack.sh (in .ci/run).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "infra" / "compose"


def _pools():
    spec = importlib.util.spec_from_file_location("pools", ROOT / "infra/prefect/pools.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_work_pool_templates_are_well_formed():
    pools = _pools()
    for name in pools.TEMPLATES:
        assert pools.check(name, pools.load(name)) == [], name
    k8s = pools.load("kubernetes")["job_configuration"]["job_manifest"]
    limits = k8s["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "{{ gpus }}"


def test_docker_pool_site_defaults_and_gpu_requests():
    pools = _pools()
    assert pools.device_requests("all") == [
        {"driver": "nvidia", "capabilities": [["gpu"]], "count": -1}]
    assert pools.device_requests("2")[0]["count"] == 2
    assert pools.device_requests("0, 1")[0]["device_ids"] == ["0", "1"]
    assert pools.device_requests("none") == []
    env = {"AUTOPOIESIS_STATE_DIR": "/srv/ap", "AUTOPOIESIS_SHARED": "/srv/shared",
           "AUTOPOIESIS_GPUS": "none", "AUTOPOIESIS_APP_IMAGE": "app:1"}
    t = pools.with_site("docker", pools.load("docker"), env)
    props = t["variables"]["properties"]
    # Host paths at the same path inside: sandbox containers bind them by host path.
    assert "/srv/ap:/srv/ap" in props["volumes"]["default"]
    assert "/srv/shared:/srv/shared:ro" in props["volumes"]["default"]
    assert "device_requests" not in props["container_create_kwargs"]["default"]
    assert props["image"]["default"] == "app:1"
    assert props["env"]["default"]["AUTOPOIESIS_ADMIN_TOKEN_FILE"] == "/srv/ap/secrets/admin-token"


def test_prefect_yaml_matches_the_flows():
    from flows import prefect_flows

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deps = {d["name"]: d for d in doc["deployments"]}
    # The flows chain to "<flow>/<deployment>" by these names.
    assert set(deps) == {"pull-telemetry", "evolve", "promote"}
    for name, dep in deps.items():
        path, func = dep["entrypoint"].split(":")
        assert (ROOT / path).is_file()
        flow = getattr(prefect_flows, func)
        assert flow.name == name
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(dep.get("parameters", {})) <= accepted, (name, dep["parameters"])
        assert dep["work_pool"]["name"] == "autopoiesis-eval"
        # Secrets never travel as parameters.
        assert not any("token" in k or "password" in k for k in dep.get("parameters", {}))


def _compose(*files: str) -> dict:
    merged: dict = {"services": {}}
    for f in files:
        doc = yaml.safe_load((COMPOSE / f).read_text())
        for svc, spec in doc.get("services", {}).items():
            merged["services"].setdefault(svc, {}).update(spec)
    return merged


@pytest.mark.parametrize("variant", ["compose.cpu.yaml", "compose.gpu.yaml"])
def test_compose_services_are_healthchecked_and_gated(variant):
    services = _compose("compose.yaml", variant)["services"]
    for name, svc in services.items():
        one_shot = svc.get("restart") == "no"
        hc = svc.get("healthcheck") or {}
        assert one_shot or (hc.get("test") and not hc.get("disable")), name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            assert cond["condition"] in ("service_healthy", "service_completed_successfully")
        # Host networking only (or none): the stack binds loopback.
        assert svc.get("network_mode") in ("host", "none"), name
    if variant == "compose.gpu.yaml":
        for i in range(4):
            devices = services[f"vllm-{i}"]["deploy"]["resources"]["reservations"]["devices"]
            assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        assert re.match(r"\$\{VLLM_IMAGE:-vllm/vllm-openai:v\d", services["vllm-0"]["image"])


def test_no_secret_in_a_tracked_file():
    texts = {p: p.read_text() for p in COMPOSE.glob("*.yaml")}
    texts[COMPOSE / ".env.example"] = (COMPOSE / ".env.example").read_text()
    for path, text in texts.items():
        for m in re.finditer(r"(PASSWORD|TOKEN)[A-Z_]*[ \t]*[:=][ \t]*(\S*)", text):
            value = m.group(2).strip('"')
            assert value.startswith(("${", "$$")) or value == "", (path, m[0])
    example = (COMPOSE / ".env.example").read_text()
    for key in ("POSTGRES_PASSWORD", "PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD",
                "AUTOPOIESIS_ADMIN_TOKEN"):
        assert re.search(rf"^{key}=$", example, re.M), key
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored
