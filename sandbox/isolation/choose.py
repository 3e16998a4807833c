"""Picking an isolation backend by name, and listing which ones work on this machine."""

from __future__ import annotations

import logging

from sandbox.isolation.base import Backend
from sandbox.isolation.docker import DockerBackend
from sandbox.isolation.environment import SandboxUnavailable
from sandbox.isolation.process import ProcessBackend

log = logging.getLogger("autopoiesis.sandbox")

BACKEND_NAMES = ("auto", "docker", "process", "unsafe-process")


def choose_backend(name: str = "auto", **kwargs) -> Backend:
    """The named backend; ``auto``: Docker if it works here, else bubblewrap. Never none.

    Raises ``SandboxUnavailable`` when the requested isolation cannot be had.
    Logs, at warning level, which isolation is in force.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown sandbox backend '{name}' (known: {', '.join(BACKEND_NAMES)})")
    docker_kw = {
        k: v
        for k, v in kwargs.items()
        if k in ("image", "prewarm", "client", "mount_code", "user", "runtime", "shared_dir")
    }
    proc_kw = {
        k: v
        for k, v in kwargs.items()
        if k in ("prewarm", "python", "code_root", "shared_dir", "use_cgroup")
    }
    backend: Backend
    if name == "docker":
        backend = DockerBackend(**docker_kw)
    elif name == "process":
        backend = ProcessBackend(**proc_kw)
    elif name == "unsafe-process":
        backend = ProcessBackend(unsafe=True, **proc_kw)
    else:
        reasons = []
        try:
            backend = DockerBackend(**docker_kw)
        except SandboxUnavailable as e:
            reasons.append(f"docker: {e}")
            try:
                backend = ProcessBackend(**proc_kw)
            except SandboxUnavailable as e2:
                reasons.append(f"process: {e2}")
                raise SandboxUnavailable(
                    "no isolation available: "
                    + "; ".join(reasons)
                    + ". Ask for backend='unsafe-process' to run candidates WITHOUT isolation."
                ) from None
            log.warning("sandbox: Docker not used (%s)", reasons[0])
    log.warning("sandbox: isolation in force: %s", backend.describe())
    return backend


def available_backends() -> dict[str, str | None]:
    """For each real backend: None when usable here, else why not (for tests and the CLI)."""
    out: dict[str, str | None] = {}
    for name in ("docker", "process"):
        try:
            b = DockerBackend(prewarm=0) if name == "docker" else ProcessBackend()
            b.close()
            out[name] = None
        except SandboxUnavailable as e:
            out[name] = str(e)
    return out
