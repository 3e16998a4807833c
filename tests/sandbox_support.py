"""Shared helpers for the sandbox tests: get a real backend, or skip/fail with a clear reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from shared_support import required

from sandbox.backends import IMAGE, DockerBackend, ProcessBackend, SandboxUnavailable

ROOT = Path(__file__).resolve().parents[1]


def process_backend(**kw) -> ProcessBackend:
    try:
        return ProcessBackend(**kw)
    except SandboxUnavailable as e:
        if required("AUTOPOIESIS_REQUIRE_BWRAP"):
            pytest.fail(
                f"AUTOPOIESIS_REQUIRE_BWRAP is set but the process sandbox is unusable: {e}"
            )
        pytest.skip(f"process sandbox unavailable here: {e}")


def docker_backend(**kw) -> DockerBackend:
    """A DockerBackend; builds the image when a daemon answers but the image is missing."""
    try:
        return DockerBackend(**kw)
    except SandboxUnavailable as e:
        msg = str(e)
        if "not found" in msg and "image" in msg:
            build = subprocess.run(
                ["bash", str(ROOT / "infra/sandbox/build-local-base.sh")],
                capture_output=True,
                text=True,
                timeout=900,
            )
            if build.returncode == 0:
                return DockerBackend(**kw)
            msg = f"building {IMAGE} failed: {build.stderr[-2000:]}"
        if required("AUTOPOIESIS_REQUIRE_DOCKER"):
            pytest.fail(
                f"AUTOPOIESIS_REQUIRE_DOCKER is set but the docker sandbox is unusable: {msg}"
            )
        pytest.skip(f"docker sandbox unavailable here (no daemon reachable?): {msg}")
