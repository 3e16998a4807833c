"""What every sandbox is built from: the code it runs, its environment, the data it reads.

Also ``SandboxUnavailable``, which every backend raises when its isolation cannot be had.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from serving.shared_data import shared_dir

CODE_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the ``serving`` and ``sandbox`` packages (the repo root)."""
CODE_PACKAGES = ("serving", "sandbox")
IMAGE = os.environ.get("AUTOPOIESIS_SANDBOX_IMAGE", "autopoiesis-sandbox:latest")
MARKER_ENV = "AUTOPOIESIS_SANDBOX_ID"
LABEL = "autopoiesis.sandbox"
READY_LINE = b"autopoiesis-harness: ready"
CODE_HASH_LABEL = "autopoiesis.code-hash"


class SandboxUnavailable(RuntimeError):
    """This isolation cannot be used here; the message says why and what to do."""


def code_hash(root: Path = CODE_ROOT) -> str:
    """Hash of the code a sandbox runs (``serving/``, ``sandbox/``): the image's cache key."""
    h = hashlib.sha256()
    for pkg in CODE_PACKAGES:
        base = root / pkg
        for p in sorted(base.rglob("*")):
            if (
                p.is_file()
                and "__pycache__" not in p.parts
                and p.suffix in (".py", ".json", ".csv", ".yaml", ".toml", ".txt")
            ):
                h.update(str(p.relative_to(root)).encode())
                h.update(b"\0")
                h.update(p.read_bytes())
                h.update(b"\0")
    return h.hexdigest()


def find_shared_dir(explicit: str | None = None) -> str | None:
    """The scenario data folder to mount read-only (``explicit``, else ``shared_dir()``),
    resolved; None when it is not a folder."""
    cand = Path(explicit) if explicit else shared_dir()
    return str(cand.resolve()) if cand.is_dir() else None


WINDOWS_MOUNT = "/windows"
"""Where a sandbox sees the request's windows folder (read-only)."""


def windows_source(path: str | None) -> str | None:
    """The host windows folder to mount, resolved; None when absent or not a folder."""
    if not path:
        return None
    p = Path(path).resolve()
    return str(p) if p.is_dir() else None


def sandbox_env(
    marker: str, *, pythonpath: str, shared: str | None, windows: str | None = None
) -> dict[str, str]:
    """The whole environment of a sandbox: built here, nothing inherited from the host."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": pythonpath,
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        MARKER_ENV: marker,
    }
    if shared:
        env["AUTOPOIESIS_SHARED"] = shared
    if windows:
        env["AUTOPOIESIS_WINDOWS"] = windows
    return env
