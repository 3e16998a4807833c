"""Per-sandbox cgroups (v2, or v1 pids+memory), and finding a sandbox's leftover processes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from sandbox.isolation.environment import MARKER_ENV
from sandbox.protocol import Limits


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
