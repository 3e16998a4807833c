"""The Docker backend (``"docker"``): one-shot containers through the docker SDK."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from sandbox.isolation.base import Backend, Worker
from sandbox.isolation.environment import (
    CODE_HASH_LABEL,
    CODE_PACKAGES,
    CODE_ROOT,
    IMAGE,
    LABEL,
    WINDOWS_MOUNT,
    SandboxUnavailable,
    code_hash,
    find_shared_dir,
    sandbox_env,
)
from sandbox.isolation.outcome import RawRun
from sandbox.isolation.pipes import CappedBuffer, daemon_thread
from sandbox.protocol import Limits

log = logging.getLogger("autopoiesis.sandbox")

_HOST = socket.gethostname()
_OWNER = f"{_HOST}:{os.getpid()}"


class _DockerWorker(Worker):
    def __init__(
        self, backend: DockerBackend, limits: Limits, windows: str | None = None
    ) -> None:
        from docker.utils.socket import frames_iter

        self.backend = backend
        api = backend.client.api
        self.api = api
        self.marker = uuid.uuid4().hex
        self.out = CappedBuffer(limits.output_bytes)
        self.err = CappedBuffer(min(limits.output_bytes, 256 * 1024), tail=True)
        self.cid: str | None = None
        self._discarded = False
        config = backend.container_config(limits, self.marker, windows)
        self.cid = api.create_container(**config)["Id"]
        backend._live.add(self.cid)
        try:
            self.sock = api.attach_socket(
                self.cid, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            api.start(self.cid)
        except BaseException:
            self.discard()
            raise

        def pump() -> None:
            try:
                for stream, data in frames_iter(self.sock, tty=False):
                    (self.out if stream == 1 else self.err).feed(data)
            except Exception:
                pass
            finally:
                self.out.done.set()

        self._reader = daemon_thread(pump)

    def _raw_sock(self):
        return getattr(self.sock, "_sock", self.sock)

    def alive(self) -> bool:
        return not self.out.done.is_set()

    def run(self, line: bytes, limits: Limits) -> RawRun:
        raw = RawRun()

        def write() -> None:
            with contextlib.suppress(OSError):
                self._raw_sock().sendall(line)

        daemon_thread(write)
        if not self.out.done.wait(limits.wall_s):
            raw.timed_out = True
            with contextlib.suppress(Exception):
                self.api.kill(self.cid)
            self.out.done.wait(10)
        try:
            raw.returncode = int(self.api.wait(self.cid, timeout=10).get("StatusCode", -1))
        except Exception as e:
            raw.notes.append(f"wait failed: {e}")
            with contextlib.suppress(Exception):
                self.api.kill(self.cid)
        try:
            state = self.api.inspect_container(self.cid)["State"]
            raw.oom = bool(state.get("OOMKilled"))
        except Exception as e:
            raw.notes.append(f"inspect failed: {e}")
        raw.stdout, raw.stdout_overflow = self.out.value(), self.out.overflow
        raw.stderr = self.err.value()
        raw.ready = self.err.ready.is_set()
        return raw

    def discard(self) -> None:
        if self._discarded:
            return
        self._discarded = True
        with contextlib.suppress(Exception):
            self.sock.close()
        if self.cid:
            self.backend._live.discard(self.cid)
            self.backend._remove_later(self.cid)


class DockerBackend(Backend):
    """One-shot containers through the docker SDK; see the module docstring."""

    name = "docker"

    def __init__(
        self,
        image: str = IMAGE,
        *,
        prewarm: int = 2,
        client=None,
        mount_code: bool | None = None,
        user: str = "65534:65534",
        runtime: str | None = None,
        shared_dir: str | None = None,
    ) -> None:
        super().__init__(prewarm=prewarm)
        self.shared_dir = find_shared_dir(shared_dir)
        try:
            import docker
            from docker.errors import DockerException, ImageNotFound
        except ImportError as e:
            raise SandboxUnavailable(f"the docker SDK is not installed ({e})") from None
        try:
            self.client = client or docker.from_env(version="auto", timeout=60)
            self.client.ping()
        except DockerException as e:
            raise SandboxUnavailable(f"no Docker daemon answers: {_short(e)}") from None
        try:
            img = self.client.images.get(image)
        except ImageNotFound:
            raise SandboxUnavailable(
                f"sandbox image '{image}' not found: build it with "
                "infra/sandbox/build-local-base.sh (or infra/sandbox/Dockerfile)"
            ) from None
        except DockerException as e:
            raise SandboxUnavailable(f"cannot inspect image '{image}': {_short(e)}") from None
        self.image = image
        self.user = user
        self.runtime = runtime
        labels = img.labels or {}
        self.image_code_hash = labels.get(CODE_HASH_LABEL, "")
        local = all((CODE_ROOT / p).is_dir() for p in CODE_PACKAGES)
        if mount_code is None:
            mount_code = local and self.image_code_hash != code_hash()
            if mount_code:
                log.info(
                    "sandbox image %s holds other code than this tree: mounting the tree's "
                    "serving/ and sandbox/ read-only over it",
                    image,
                )
        self.mount_code = bool(mount_code and local)
        self.python = labels.get("autopoiesis.python", "/opt/venv/bin/python")
        self._removals: list[threading.Thread] = []
        self._rm_lock = threading.Lock()
        self.instance = uuid.uuid4().hex[:12]
        self._live: set[str] = set()  # created and not yet discarded (pooled or running)
        self._reap_orphans()

    def describe(self, limits: Limits | None = None) -> str:
        lim = limits or Limits()
        return (
            f"docker: image {self.image}, network none, read-only root, tmpfs /tmp, "
            f"{lim.memory_mb} MB memory, {lim.cpus:g} CPU, {lim.pids} pids, user {self.user}, "
            f"no capabilities, no host environment, killed at the {lim.wall_s:g} s deadline"
            + (", code mounted read-only from this tree" if self.mount_code else "")
        )

    def container_config(self, limits: Limits, marker: str, windows: str | None = None) -> dict:
        """``windows``: a host folder of window files, bound read-only at /windows."""
        from docker.types import Ulimit

        api = self.client.api
        env = sandbox_env(
            marker,
            pythonpath="/app",
            shared="/shared" if self.shared_dir else None,
            windows=WINDOWS_MOUNT if windows else None,
        )
        binds = {}
        if self.shared_dir:
            binds[self.shared_dir] = {"bind": "/shared", "mode": "ro"}
        if windows:
            binds[windows] = {"bind": WINDOWS_MOUNT, "mode": "ro"}
        if self.mount_code:
            for pkg in CODE_PACKAGES:
                binds[str(CODE_ROOT / pkg)] = {"bind": f"/app/{pkg}", "mode": "ro"}
        mem = (limits.memory_mb + 128) * 1024 * 1024
        host_config = api.create_host_config(
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={max(limits.file_bytes * 2, 1 << 20)}"},
            mem_limit=mem,
            memswap_limit=mem,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ulimits=[
                Ulimit(name="core", soft=0, hard=0),
                Ulimit(name="fsize", soft=limits.file_bytes, hard=limits.file_bytes),
                Ulimit(name="nofile", soft=256, hard=256),
            ],
            binds=binds or None,
            runtime=self.runtime,
            ipc_mode="private",
        )
        return {
            "image": self.image,
            "command": [self.python, "-B", "-s", "-m", "sandbox.harness"],
            "stdin_open": True,
            "tty": False,
            "user": self.user,
            "environment": env,
            "working_dir": "/tmp",
            "network_disabled": True,
            "hostname": "sandbox",
            "labels": {
                LABEL: marker,
                f"{LABEL}.backend": self.instance,
                f"{LABEL}.owner": _OWNER,
            },
            "host_config": host_config,
        }

    def _spawn(self, limits: Limits, windows: str | None = None) -> Worker:
        return _DockerWorker(self, limits, windows)

    def _remove_later(self, cid: str) -> None:
        def rm() -> None:
            for _ in range(3):
                try:
                    self.client.api.remove_container(cid, force=True)
                    return
                except Exception as e:
                    if "No such container" in str(e):
                        return
                    time.sleep(0.2)
            log.error("sandbox container %s could not be removed", cid[:12])

        with self._rm_lock:
            self._removals = [t for t in self._removals if t.is_alive()]
            self._removals.append(daemon_thread(rm))

    def flush(self) -> None:
        with self._rm_lock:
            pending = list(self._removals)
        for t in pending:
            t.join(timeout=30)

    def _reap_orphans(self) -> None:
        """Remove sandbox containers whose owning process on this host is gone (killed hard)."""
        try:
            found = self.client.api.containers(all=True, filters={"label": f"{LABEL}.owner"})
        except Exception:
            return
        for c in found:
            owner = (c.get("Labels") or {}).get(f"{LABEL}.owner", "")
            host, _, pid = owner.rpartition(":")
            if host == _HOST and pid.isdigit() and not Path(f"/proc/{pid}").exists():
                log.info("sandbox: removing orphaned container %s (owner %s)", c["Id"][:12], owner)
                self._remove_later(c["Id"])

    def leftover_containers(self) -> list[str]:
        """Containers of this backend's sandboxes still present (should be none when idle)."""
        self.flush()
        found = self.client.api.containers(
            all=True, filters={"label": f"{LABEL}.backend={self.instance}"}
        )
        live = set(self._live)
        return [c["Id"] for c in found if c["Id"] not in live]


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:300]
