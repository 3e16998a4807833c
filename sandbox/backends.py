"""Isolation backends: where an untrusted candidate policy actually runs.

The code lives in ``sandbox/isolation/`` (one concern per module; its package docstring
describes the backends). This module is its public face: callers import
``from sandbox.backends import choose_backend`` and friends, not the internals.
"""

from __future__ import annotations

from sandbox.isolation.base import Backend
from sandbox.isolation.cgroup import Cgroup, leftover_processes
from sandbox.isolation.choose import BACKEND_NAMES, available_backends, choose_backend
from sandbox.isolation.docker import DockerBackend
from sandbox.isolation.environment import (
    CODE_HASH_LABEL,
    CODE_PACKAGES,
    CODE_ROOT,
    IMAGE,
    LABEL,
    MARKER_ENV,
    READY_LINE,
    SandboxUnavailable,
    code_hash,
    find_shared_dir,
    sandbox_env,
)
from sandbox.isolation.outcome import RawRun, interpret
from sandbox.isolation.process import ProcessBackend

__all__ = [
    "BACKEND_NAMES",
    "CODE_HASH_LABEL",
    "CODE_PACKAGES",
    "CODE_ROOT",
    "IMAGE",
    "LABEL",
    "MARKER_ENV",
    "READY_LINE",
    "Backend",
    "Cgroup",
    "DockerBackend",
    "ProcessBackend",
    "RawRun",
    "SandboxUnavailable",
    "available_backends",
    "choose_backend",
    "code_hash",
    "find_shared_dir",
    "interpret",
    "leftover_processes",
    "sandbox_env",
]
