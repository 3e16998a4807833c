"""Isolation backends: where an untrusted candidate policy actually runs.

Every backend runs ``python -m sandbox.harness`` (see ``sandbox/harness.py``)
in an isolated place, sends it one request line and reads one response line:

``DockerBackend`` (``"docker"``)
    A container per evaluation, through the ``docker`` SDK: no network
    (``network_mode=none``), read-only root, a small ``noexec`` tmpfs at /tmp,
    memory/CPU/pids limits, user ``nobody``, all capabilities dropped,
    ``no-new-privileges``, an environment built here (nothing from the host),
    killed at the deadline and removed afterwards. Containers are used once;
    a small pool of pre-started ones (harness already imported, waiting on
    stdin) keeps the start cost off the evaluation's critical path.

``ProcessBackend`` (``"process"``)
    A bubblewrap sandbox per evaluation: every namespace unshared (network
    included), only the Python runtime and the project's code bound read-only,
    a private tmpfs /tmp, ``--die-with-parent``, a new session; rlimits (address
    space, CPU, file size, open files) and, where the machine allows it, a
    cgroup with memory and pids limits; the host environment scrubbed; the
    whole process group (and cgroup) killed at the deadline.

``"unsafe-process"``
    The same harness in a plain child process with rlimits and a scrubbed
    environment but *no* namespaces. Only when asked for by name; it warns
    on every evaluation. Nothing ever falls back to it silently.

``choose_backend("auto")`` takes Docker when a daemon answers and the image
exists, else bubblewrap, and says loudly which isolation is in force.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from sandbox.protocol import EvalRequest, EvalResponse, Limits, ProtocolError
from sandbox.static_checks import first_violation

log = logging.getLogger("autopoiesis.sandbox")

CODE_ROOT = Path(__file__).resolve().parents[1]
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
    """The scenario data folder to mount read-only (as ``sandbox.traces.shared_dir``)."""
    cand = explicit or os.environ.get("AUTOPOIESIS_SHARED") or str(CODE_ROOT.parent / "shared")
    return str(Path(cand).resolve()) if Path(cand).is_dir() else None


def sandbox_env(marker: str, *, pythonpath: str, shared: str | None) -> dict[str, str]:
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
    return env


# --- what came back from a sandbox, and what it means ------------------------------


@dataclass
class RawRun:
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_overflow: bool = False
    returncode: int | None = None
    timed_out: bool = False
    oom: bool = False
    pids_exhausted: bool = False
    ready: bool = True
    """The harness announced it had imported everything (False: it died before that)."""
    notes: list[str] = field(default_factory=list)

    @property
    def signal(self) -> int | None:
        rc = self.returncode
        if rc is None:
            return None
        if rc < 0:
            return -rc
        if 128 < rc < 128 + 65:  # shells, bwrap and Docker report death by signal as 128+N
            return rc - 128
        return None


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def interpret(req: EvalRequest, raw: RawRun) -> EvalResponse:
    """Turn what a sandbox produced into a response, trusting nothing it says blindly."""
    lim = req.limits
    tail = raw.stderr.replace(READY_LINE + b"\n", b"")[-3000:].decode("utf-8", "replace")

    def reject(stage: str, reason: str) -> EvalResponse:
        return EvalResponse.reject(req, stage, reason, detail=tail)

    if raw.timed_out:
        extra = ""
        if raw.pids_exhausted:
            extra = f"; the process limit of {lim.pids} was hit (fork bomb?)"
        elif raw.oom:
            extra = f"; the memory limit of {lim.memory_mb} MB was hit"
        return reject("limit", f"wall-clock deadline of {lim.wall_s:g} s exceeded{extra}")
    if raw.stdout_overflow:
        return reject(
            "limit", f"sandbox wrote more than {lim.output_bytes} bytes on the protocol channel"
        )
    lines = [ln for ln in raw.stdout.splitlines() if ln.strip()]
    if len(lines) > 1:
        return reject(
            "integrity",
            f"protocol channel corrupted: {len(lines)} lines where one response was expected",
        )
    if lines:
        try:
            resp = EvalResponse.from_json(lines[0])
        except ProtocolError as e:
            return reject("integrity", f"corrupt response from the sandbox: {e}")
        if resp.nonce != req.nonce or resp.key != req.key:
            return reject(
                "integrity", "response does not answer this request (nonce or key mismatch)"
            )
        if resp.ok:
            bad = _check_results(req, resp)
            if bad:
                return reject("integrity", bad)
        return resp
    # No response at all: say why the sandbox died.
    sig = raw.signal
    if not raw.ready:
        last = tail.strip().splitlines()[-1:] or [f"exit status {raw.returncode}"]
        return reject("internal", f"the sandbox failed before the harness was ready: {last[0]}")
    if raw.oom:
        return reject(
            "limit", f"memory limit of {lim.memory_mb} MB exceeded (killed by the OOM killer)"
        )
    if "MemoryError" in tail:
        return reject("limit", f"memory limit of {lim.memory_mb} MB exceeded (MemoryError)")
    if sig == signal.SIGXCPU:
        return reject("limit", "CPU time limit exceeded (SIGXCPU)")
    if sig == signal.SIGXFSZ:
        return reject("limit", f"file size limit of {lim.file_bytes} bytes exceeded (SIGXFSZ)")
    if raw.pids_exhausted:
        return reject("limit", f"process limit of {lim.pids} reached (fork bomb?)")
    if sig == signal.SIGKILL:
        return reject("limit", "sandbox was killed (SIGKILL): a memory or process limit")
    if sig is not None:
        return reject("runtime", f"sandbox crashed with {_signame(sig)}")
    return reject(
        "runtime",
        f"sandbox exited with status {raw.returncode} without answering "
        "(the candidate ended the process or closed the protocol channel)",
    )


def _check_results(req: EvalRequest, resp: EvalResponse) -> str | None:
    import math

    want = {(s, seed) for s in req.scenarios for seed in req.seeds}
    got = [(r.scenario, r.seed) for r in resp.results]
    if len(got) != len(set(got)) or set(got) != want:
        return f"response covers {sorted(set(got))}, not the requested {sorted(want)}"
    for r in resp.results:
        for label, d in (("metric", r.summary), ("decision stat", r.decision_stats)):
            for k, v in d.items():
                if not math.isfinite(v):
                    return f"{label} '{k}' is {v} in {r.scenario} seed {r.seed}"
    return None


# --- capped pipe readers -----------------------------------------------------------


class _Capped:
    """Collects a byte stream up to ``cap`` (head) or keeping the last ``cap`` bytes (tail)."""

    def __init__(self, cap: int, *, tail: bool = False) -> None:
        self.cap = cap
        self.tail = tail
        self.buf = bytearray()
        self.total = 0
        self.done = threading.Event()
        self.ready = threading.Event()
        """Set once the harness announced it is ready (stderr only)."""

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self.tail:
            self.buf += data
            if len(self.buf) > 2 * self.cap:
                del self.buf[: len(self.buf) - self.cap]
        elif len(self.buf) < self.cap:
            self.buf += data[: self.cap - len(self.buf)]
        if not self.ready.is_set() and READY_LINE in self.buf:
            self.ready.set()

    @property
    def overflow(self) -> bool:
        return self.total > self.cap

    def value(self) -> bytes:
        return bytes(self.buf[-self.cap :] if self.tail else self.buf)


def _pump_fd(stream, sink: _Capped) -> None:
    fd = stream.fileno()
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            sink.feed(data)
    except OSError:
        pass
    finally:
        sink.done.set()


def _thread(target: Callable, *args) -> threading.Thread:
    t = threading.Thread(target=target, args=args, daemon=True)
    t.start()
    return t


# --- cgroups -------------------------------------------------------------------------


class Cgroup:
    """A throw-away cgroup (v2, or v1 pids+memory) for one sandbox, when the machine allows.

    Gives a pids limit that works even for root (RLIMIT_NPROC does not bind root),
    a memory limit over all the sandbox's processes, OOM and pids-limit evidence
    for the rejection reason, and a way to kill every process in it.
    """

    def __init__(self, dirs: dict[str, Path], version: int) -> None:
        self.dirs = dirs  # controller -> directory ("unified" for v2)
        self.version = version

    @classmethod
    def create(cls, name: str, limits: Limits) -> Cgroup | None:
        try:
            own = _own_cgroups()
        except OSError:
            return None
        mem = (limits.memory_mb + 128) * 1024 * 1024
        # v2: the unified hierarchy at /sys/fs/cgroup with both controllers delegated.
        root2 = Path("/sys/fs/cgroup")
        if (root2 / "cgroup.controllers").exists() and "" in own:
            parent = root2 / own[""].lstrip("/")
            try:
                ctl = (parent / "cgroup.subtree_control").read_text().split()
                if "pids" in ctl and "memory" in ctl:
                    d = parent / name
                    d.mkdir()
                    (d / "pids.max").write_text(str(limits.pids))
                    (d / "memory.max").write_text(str(mem))
                    with contextlib.suppress(OSError):
                        (d / "memory.swap.max").write_text("0")
                    return cls({"unified": d}, 2)
            except OSError:
                pass
        # v1: separate hierarchies.
        dirs: dict[str, Path] = {}
        try:
            for ctrl in ("pids", "memory"):
                base = Path("/sys/fs/cgroup") / ctrl
                if ctrl not in own or not (base / "cgroup.procs").exists():
                    continue
                parent = base / own[ctrl].lstrip("/")
                if not parent.is_dir():
                    continue
                d = parent / name
                d.mkdir()
                dirs[ctrl] = d
                if ctrl == "pids":
                    (d / "pids.max").write_text(str(limits.pids))
                else:
                    (d / "memory.limit_in_bytes").write_text(str(mem))
                    with contextlib.suppress(OSError):
                        (d / "memory.memsw.limit_in_bytes").write_text(str(mem))
        except OSError:
            cg = cls(dirs, 1)
            cg.remove()
            return None
        return cls(dirs, 1) if dirs else None

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    @property
    def controllers(self) -> list[str]:
        return ["pids", "memory"] if self.version == 2 else sorted(self.dirs)

    def _pids(self) -> set[int]:
        pids: set[int] = set()
        for d in self.dirs.values():
            with contextlib.suppress(OSError):
                pids |= {int(x) for x in (d / "cgroup.procs").read_text().split()}
        return pids

    def kill_all(self, timeout: float = 5.0) -> bool:
        """SIGKILL every process in the cgroup until it is empty; True when empty."""
        end = time.monotonic() + timeout
        while True:
            pids = self._pids()
            if not pids:
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > end:
                return False
            time.sleep(0.01)

    def _read(self, ctrl: str, fname: str) -> str:
        d = self.dirs.get("unified" if self.version == 2 else ctrl)
        if d is None:
            return ""
        try:
            return (d / fname).read_text()
        except OSError:
            return ""

    @staticmethod
    def _field(text: str, key: str) -> int:
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                return int(parts[1])
        return 0

    def oom_killed(self) -> bool:
        if self.version == 2:
            return self._field(self._read("memory", "memory.events"), "oom_kill") > 0
        text = self._read("memory", "memory.oom_control")
        return self._field(text, "oom_kill") > 0

    def pids_exhausted(self) -> bool:
        return self._field(self._read("pids", "pids.events"), "max") > 0

    def remove(self) -> None:
        self.kill_all(timeout=2.0)
        for d in self.dirs.values():
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def _own_cgroups() -> dict[str, str]:
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            own[c] = path
    return own


def leftover_processes(marker: str) -> list[int]:
    """Host pids whose environment carries this sandbox marker (should be none after a run)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            env = (p / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(p.name))
    return found


# --- backends ------------------------------------------------------------------------


class _Worker(ABC):
    """One sandbox, used for exactly one evaluation."""

    marker: str

    @abstractmethod
    def run(self, line: bytes, limits: Limits) -> RawRun: ...

    @abstractmethod
    def discard(self) -> None:
        """Kill it (if alive) and release everything it holds."""

    def alive(self) -> bool:
        return True

    def wait_ready(self, timeout: float) -> bool:
        """Block until the harness inside has imported everything and waits for a request."""
        err = getattr(self, "err", None)
        return bool(err and err.ready.wait(timeout))


_HOST = socket.gethostname()
_OWNER = f"{_HOST}:{os.getpid()}"
_OPEN_BACKENDS: weakref.WeakSet[Backend] = weakref.WeakSet()


@atexit.register
def _close_open_backends() -> None:
    """Pre-started containers outlive this process unless discarded: close on exit."""
    for b in list(_OPEN_BACKENDS):
        with contextlib.suppress(Exception):
            b.close()


class Backend(ABC):
    name: str = "backend"

    def __init__(self, *, prewarm: int = 0) -> None:
        self.prewarm = max(0, int(prewarm))
        self._pool: dict[Limits, list[_Worker]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._refills: list[threading.Thread] = []
        self._last_markers: list[str] = []
        _OPEN_BACKENDS.add(self)

    # subclasses
    @abstractmethod
    def _spawn(self, limits: Limits) -> _Worker: ...

    @abstractmethod
    def describe(self, limits: Limits | None = None) -> str:
        """One line: what isolation is in force."""

    # shared flow
    def evaluate(self, req: EvalRequest) -> EvalResponse:
        t0 = time.monotonic()
        if req.static_checks:
            bad = first_violation(req.source)
            if bad:
                resp = EvalResponse.reject(req, "static", bad)
                return replace(resp, backend=self.name, wall_s=time.monotonic() - t0)
        self._before_run()
        try:
            worker = self._take(req.limits)
        except SandboxUnavailable:
            raise
        except Exception as e:
            log.exception("sandbox %s could not start", self.name)
            resp = EvalResponse.reject(req, "internal", f"sandbox could not start: {e}")
            return replace(resp, backend=self.name, wall_s=time.monotonic() - t0)
        self._last_markers.append(worker.marker)
        del self._last_markers[:-64]
        try:
            raw = worker.run((req.to_json() + "\n").encode(), req.limits)
        finally:
            worker.discard()
        resp = interpret(req, raw)
        return replace(resp, backend=self.name, wall_s=time.monotonic() - t0)

    def _before_run(self) -> None:
        """Hook: the unsafe backend warns here, every time."""
        return None

    def _take(self, limits: Limits) -> _Worker:
        worker = None
        with self._lock:
            warm = self._pool.get(limits, [])
            # the oldest ready one first (it has finished importing), else the oldest
            warm.sort(key=lambda w: not w.wait_ready(0))
            while warm and worker is None:
                w = warm.pop(0)
                if w.alive():
                    worker = w
                else:
                    w.discard()
        if self.prewarm:
            self._refill(limits)
        return worker if worker is not None else self._spawn(limits)

    def warm_up(self, limits: Limits | None = None, *, wait: bool = True) -> None:
        """Start ``prewarm`` sandboxes for ``limits`` now (ahead of the first evaluation)."""
        if self.prewarm:
            limits = limits or Limits()
            t = self._refill(limits)
            if wait and t is not None:
                t.join()
                with self._lock:
                    workers = list(self._pool.get(limits, []))
                for w in workers:
                    w.wait_ready(30)

    def _refill(self, limits: Limits) -> threading.Thread | None:
        def fill() -> None:
            while not self._closed:
                with self._lock:
                    if len(self._pool.get(limits, [])) >= self.prewarm:
                        return
                try:
                    w = self._spawn(limits)
                except Exception as e:
                    log.warning("sandbox %s: could not pre-start a sandbox: %s", self.name, e)
                    return
                with self._lock:
                    if self._closed:
                        w.discard()
                        return
                    self._pool.setdefault(limits, []).append(w)

        self._refills = [t for t in self._refills if t.is_alive()]
        if self._refills:  # one filler at a time is enough
            return self._refills[0]
        t = _thread(fill)
        self._refills.append(t)
        return t

    def close(self) -> None:
        """Discard pre-started sandboxes and wait for every clean-up to finish."""
        if self._closed:
            self.flush()
            return
        self._closed = True
        for t in self._refills:
            t.join(timeout=30)
        with self._lock:
            pools, self._pool = self._pool, {}
        for workers in pools.values():
            for w in workers:
                w.discard()
        self.flush()

    def flush(self) -> None:
        """Wait for background clean-ups (container removal) to finish."""
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- process backend -------------------------------------------------------------


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


class _ProcessWorker(_Worker):
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
        self.out = _Capped(limits.output_bytes)
        self.err = _Capped(min(limits.output_bytes, 256 * 1024), tail=True)
        self._readers = [
            _thread(_pump_fd, self.proc.stdout, self.out),
            _thread(_pump_fd, self.proc.stderr, self.err),
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

        _thread(write)
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

    def _argv(self, marker: str) -> tuple[list[str], dict[str, str], str]:
        harness = ["-B", "-s", "-m", "sandbox.harness"]
        if self.unsafe:
            env = sandbox_env(marker, pythonpath=str(self.code_root), shared=self.shared_dir)
            return [self.python, *harness], env, "/tmp"
        shared_in = "/shared" if self.shared_dir else None
        env = sandbox_env(marker, pythonpath="/app", shared=shared_in)
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
        for top in ("usr", "bin", "lib", "lib64", "lib32", "libx32", "sbin"):
            p = Path("/") / top
            if p.is_symlink():
                argv += ["--symlink", os.readlink(p), str(p)]
            elif p.is_dir():
                argv += ["--ro-bind", str(p), str(p)]
        for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
            if os.path.exists(etc):
                argv += ["--ro-bind", etc, etc]
        # the Python runtime: the venv and the interpreter it was made from
        prefixes = {
            Path(sys.prefix).resolve(),
            Path(sys.base_prefix).resolve(),
            Path(self.python).resolve().parent.parent,
        }
        for pre in sorted(prefixes):
            if not str(pre).startswith("/usr") and pre.is_dir():
                argv += ["--ro-bind", str(pre), str(pre)]
        if Path(sys.prefix) != Path(sys.prefix).resolve():
            argv += ["--symlink", str(Path(sys.prefix).resolve()), sys.prefix]
        for pkg in CODE_PACKAGES:
            argv += ["--ro-bind", str(self.code_root / pkg), f"/app/{pkg}"]
        if self.shared_dir:
            argv += ["--ro-bind", self.shared_dir, "/shared"]
        argv += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--chdir",
            "/tmp",
            "--remount-ro",
            "/",
            "--",
            self.python,
            *harness,
        ]
        return argv, env, "/"

    def _spawn(self, limits: Limits) -> _Worker:
        marker = uuid.uuid4().hex
        argv, env, cwd = self._argv(marker)
        # bwrap's --die-with-parent (PR_SET_PDEATHSIG) fires when the *thread* that
        # forked it exits: fork from one long-lived thread, never from a short one.
        return (
            _spawner()
            .submit(_ProcessWorker, argv, env, limits, marker, cwd, self.use_cgroup)
            .result()
        )


# --- docker backend --------------------------------------------------------------


class _DockerWorker(_Worker):
    def __init__(self, backend: DockerBackend, limits: Limits) -> None:
        from docker.utils.socket import frames_iter

        self.backend = backend
        api = backend.client.api
        self.api = api
        self.marker = uuid.uuid4().hex
        self.out = _Capped(limits.output_bytes)
        self.err = _Capped(min(limits.output_bytes, 256 * 1024), tail=True)
        self.cid: str | None = None
        self._discarded = False
        self.cid = api.create_container(**backend.container_config(limits, self.marker))["Id"]
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

        self._reader = _thread(pump)

    def _raw_sock(self):
        return getattr(self.sock, "_sock", self.sock)

    def alive(self) -> bool:
        return not self.out.done.is_set()

    def run(self, line: bytes, limits: Limits) -> RawRun:
        raw = RawRun()

        def write() -> None:
            with contextlib.suppress(OSError):
                self._raw_sock().sendall(line)

        _thread(write)
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

    def container_config(self, limits: Limits, marker: str) -> dict:
        from docker.types import Ulimit

        api = self.client.api
        env = sandbox_env(marker, pythonpath="/app", shared="/shared" if self.shared_dir else None)
        binds = {}
        if self.shared_dir:
            binds[self.shared_dir] = {"bind": "/shared", "mode": "ro"}
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

    def _spawn(self, limits: Limits) -> _Worker:
        return _DockerWorker(self, limits)

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
            self._removals.append(_thread(rm))

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


# --- choosing ------------------------------------------------------------------------

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
