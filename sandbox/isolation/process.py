"""The bubblewrap backend (``"process"``) and its unisolated variant (``"unsafe-process"``)."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sandbox.isolation.base import Backend, Worker
from sandbox.isolation.cgroup import Cgroup
from sandbox.isolation.environment import (
    CODE_PACKAGES,
    CODE_ROOT,
    WINDOWS_MOUNT,
    SandboxUnavailable,
    find_shared_dir,
    sandbox_env,
)
from sandbox.isolation.outcome import RawRun
from sandbox.isolation.pipes import CappedBuffer, daemon_thread, pump_fd
from sandbox.protocol import Limits

log = logging.getLogger("autopoiesis.sandbox")

_BWRAP_PROBE: dict[str, str | None] = {}
_SPAWNER: ThreadPoolExecutor | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawner() -> ThreadPoolExecutor:
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")
        return _SPAWNER


def _probe_bwrap(bwrap: str) -> str | None:
    """None when bubblewrap can build a sandbox here, else why not."""
    if bwrap not in _BWRAP_PROBE:
        cmd = [
            bwrap,
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--",
            "/bin/true",
        ]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=20, env={})
            _BWRAP_PROBE[bwrap] = (
                None if p.returncode == 0 else p.stderr.decode(errors="replace").strip()
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            _BWRAP_PROBE[bwrap] = str(e)
    return _BWRAP_PROBE[bwrap]


def _child_limits(limits: Limits, procs_files: list[str]) -> Callable[[], None]:
    """preexec_fn for the sandbox's first process: join the cgroup, set rlimits."""
    mem = limits.memory_mb * 1024 * 1024
    cpu = int(limits.wall_s * max(limits.cpus, 1.0)) + 5
    fsize = limits.file_bytes

    def setup() -> None:
        pid = str(os.getpid())
        for f in procs_files:
            with open(f, "w") as fh:
                fh.write(pid)
        for res, val in (
            (resource.RLIMIT_AS, mem),
            (resource.RLIMIT_CPU, cpu),
            (resource.RLIMIT_FSIZE, fsize),
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_NOFILE, 256),
            (resource.RLIMIT_NPROC, limits.pids),  # binds non-root users; root: the cgroup
        ):
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(res, (val, val))

    return setup


class _ProcessWorker(Worker):
    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        limits: Limits,
        marker: str,
        cwd: str,
        use_cgroup: bool,
    ) -> None:
        self.marker = marker
        self.cgroup = Cgroup.create(f"autopoiesis-{marker}", limits) if use_cgroup else None
        procs = self.cgroup.procs_files if self.cgroup else []
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_child_limits(limits, procs),
        )
        self.out = CappedBuffer(limits.output_bytes)
        self.err = CappedBuffer(min(limits.output_bytes, 256 * 1024), tail=True)
        self._readers = [
            daemon_thread(pump_fd, self.proc.stdout, self.out),
            daemon_thread(pump_fd, self.proc.stderr, self.err),
        ]
        self._discarded = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, line: bytes, limits: Limits) -> RawRun:
        raw = RawRun()

        def write() -> None:
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass

        daemon_thread(write)
        try:
            self.proc.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            raw.timed_out = True
        self._kill()
        for t in self._readers:
            t.join(timeout=5)
        raw.returncode = self.proc.returncode
        raw.stdout, raw.stdout_overflow = self.out.value(), self.out.overflow
        raw.stderr = self.err.value()
        raw.ready = self.err.ready.is_set()
        if self.cgroup:
            raw.oom = self.cgroup.oom_killed()
            raw.pids_exhausted = self.cgroup.pids_exhausted()
        return raw

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.cgroup:
            self.cgroup.kill_all()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("sandbox process %d did not die after SIGKILL", self.proc.pid)

    def discard(self) -> None:
        if self._discarded:
            return
        self._discarded = True
        self._kill()
        for s in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                s.close()
        if self.cgroup:
            self.cgroup.remove()


def _system_binds() -> list[str]:
    """The system's programs and libraries, read-only, as the host lays them out."""
    argv: list[str] = []
    for top in ("usr", "bin", "lib", "lib64", "lib32", "libx32", "sbin"):
        p = Path("/") / top
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            argv += ["--ro-bind", str(p), str(p)]
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        if os.path.exists(etc):
            argv += ["--ro-bind", etc, etc]
    return argv


class ProcessBackend(Backend):
    """bubblewrap + rlimits (+ cgroup where available); see the module docstring."""

    def __init__(
        self,
        *,
        unsafe: bool = False,
        prewarm: int = 0,
        python: str | None = None,
        code_root: Path | None = None,
        shared_dir: str | None = None,
        use_cgroup: bool = True,
    ) -> None:
        super().__init__(prewarm=prewarm)
        self.unsafe = unsafe
        self.name = "unsafe-process" if unsafe else "process"
        self.python = python or sys.executable
        self.code_root = Path(code_root or CODE_ROOT)
        self.shared_dir = find_shared_dir(shared_dir)
        self.use_cgroup = use_cgroup
        self.bwrap = None
        if not unsafe:
            self.bwrap = shutil.which("bwrap")
            if not self.bwrap:
                raise SandboxUnavailable(
                    "bubblewrap (bwrap) is not installed: install it (apt-get install "
                    "bubblewrap), use the docker backend, or ask for backend='unsafe-process' "
                    "to run candidates WITHOUT isolation"
                )
            why = _probe_bwrap(self.bwrap)
            if why:
                raise SandboxUnavailable(
                    f"bubblewrap cannot create a sandbox on this machine ({why}); use the docker "
                    "backend, or ask for backend='unsafe-process' to run WITHOUT isolation"
                )
        probe = Cgroup.create(f"autopoiesis-probe-{uuid.uuid4().hex[:8]}", Limits())
        self.cgroup_controllers = probe.controllers if (probe and use_cgroup) else []
        if probe:
            probe.remove()

    def describe(self, limits: Limits | None = None) -> str:
        lim = limits or Limits()
        cg = (
            f"cgroup ({', '.join(self.cgroup_controllers)})"
            if self.cgroup_controllers
            else "no cgroup (pids limited by RLIMIT_NPROC only, which does not bind root)"
        )
        base = (
            "UNSAFE process: NO namespaces, host filesystem and network reachable"
            if self.unsafe
            else "bubblewrap: all namespaces unshared (no network), read-only runtime and code, "
            "private /tmp"
        )
        return (
            f"{base}; rlimits (address space {lim.memory_mb} MB, CPU, file size); {cg}; "
            f"scrubbed environment; process group killed at the {lim.wall_s:g} s deadline"
        )

    def _before_run(self) -> None:
        if self.unsafe:
            log.warning(
                "sandbox: UNSAFE evaluation: the candidate runs WITHOUT isolation "
                "(no namespaces; rlimits and a scrubbed environment only)"
            )

    def _argv(
        self, marker: str, windows: str | None = None
    ) -> tuple[list[str], dict[str, str], str]:
        harness = ["-B", "-s", "-m", "sandbox.harness"]
        if self.unsafe:
            env = sandbox_env(
                marker, pythonpath=str(self.code_root), shared=self.shared_dir, windows=windows
            )
            return [self.python, *harness], env, "/tmp"
        shared_in = "/shared" if self.shared_dir else None
        env = sandbox_env(
            marker, pythonpath="/app", shared=shared_in, windows=WINDOWS_MOUNT if windows else None
        )
        argv = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--hostname",
            "sandbox",
            "--clearenv",
        ]
        for k, v in env.items():
            argv += ["--setenv", k, v]
        # The private /tmp, /proc and /dev first: a bind made before them would be hidden
        # by them, and a runtime or checkout under /tmp is an ordinary place to be.
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        argv += _system_binds() + self._runtime_binds()
        for pkg in CODE_PACKAGES:
            argv += ["--ro-bind", str(self.code_root / pkg), f"/app/{pkg}"]
        if self.shared_dir:
            argv += ["--ro-bind", self.shared_dir, "/shared"]
        if windows:
            argv += ["--ro-bind", windows, WINDOWS_MOUNT]
        argv += [
            "--chdir",
            "/tmp",
            "--remount-ro",
            "/",
            "--",
            self.python,
            *harness,
        ]
        return argv, env, "/"

    def _runtime_binds(self) -> list[str]:
        """The Python runtime, read-only: the venv and the interpreter it was made from."""
        argv: list[str] = []
        prefixes = {
            Path(sys.prefix).resolve(),
            Path(sys.base_prefix).resolve(),
            Path(self.python).absolute().parent.parent,  # its venv (pyvenv.cfg, site-packages)
            Path(self.python).resolve().parent.parent,
        }
        for pre in sorted(prefixes):
            if not str(pre).startswith("/usr") and pre.is_dir():
                argv += ["--ro-bind", str(pre), str(pre)]
        if Path(sys.prefix) != Path(sys.prefix).resolve():
            argv += ["--symlink", str(Path(sys.prefix).resolve()), sys.prefix]
        return argv

    def _spawn(self, limits: Limits, windows: str | None = None) -> Worker:
        marker = uuid.uuid4().hex
        argv, env, cwd = self._argv(marker, windows)
        # bwrap's --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread* that
        # forked it exits: fork from one long-lived thread, never from a short one.
        return (
            _spawner()
            .submit(_ProcessWorker, argv, env, limits, marker, cwd, self.use_cgroup)
            .result()
        )
