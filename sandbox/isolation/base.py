"""The backend flow every isolation shares: static checks, a pool of pre-started
sandboxes, one sandbox per evaluation, interpreting what came back."""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import replace

from sandbox.isolation.environment import SandboxUnavailable, windows_source
from sandbox.isolation.outcome import RawRun, interpret
from sandbox.isolation.pipes import daemon_thread
from sandbox.protocol import EvalRequest, EvalResponse, Limits
from sandbox.static_checks import first_violation

log = logging.getLogger("autopoiesis.sandbox")


class Worker(ABC):
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
        # Pre-started sandboxes by what they were started for: limits and windows mount.
        self._pool: dict[tuple[Limits, str | None], list[Worker]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._refills: list[threading.Thread] = []
        self.last_markers: list[str] = []
        """Markers of the last 64 sandboxes used, newest last: what a check of leftover
        processes looks for."""
        _OPEN_BACKENDS.add(self)

    # subclasses
    @abstractmethod
    def _spawn(self, limits: Limits, windows: str | None = None) -> Worker:
        """Start one sandbox; ``windows`` (a host folder) is mounted read-only at /windows."""

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
            worker = self._take(req.limits, windows_source(req.windows_dir))
        except SandboxUnavailable:
            raise
        except Exception as e:
            log.exception("sandbox %s could not start", self.name)
            resp = EvalResponse.reject(req, "internal", f"sandbox could not start: {e}")
            return replace(resp, backend=self.name, wall_s=time.monotonic() - t0)
        self.last_markers.append(worker.marker)
        del self.last_markers[:-64]
        try:
            raw = worker.run((req.to_json() + "\n").encode(), req.limits)
        finally:
            worker.discard()
        resp = interpret(req, raw)
        return replace(resp, backend=self.name, wall_s=time.monotonic() - t0)

    def _before_run(self) -> None:
        """Hook: the unsafe backend warns here, every time."""
        return None

    def _take(self, limits: Limits, windows: str | None = None) -> Worker:
        worker = None
        key = (limits, windows)
        with self._lock:
            warm = self._pool.get(key, [])
            # the oldest ready one first (it has finished importing), else the oldest
            warm.sort(key=lambda w: not w.wait_ready(0))
            while warm and worker is None:
                w = warm.pop(0)
                if w.alive():
                    worker = w
                else:
                    w.discard()
        if self.prewarm:
            self._refill(limits, windows)
        return worker if worker is not None else self._spawn(limits, windows)

    def warm_up(self, limits: Limits | None = None, *, wait: bool = True) -> None:
        """Start ``prewarm`` sandboxes for ``limits`` now (ahead of the first evaluation)."""
        if self.prewarm:
            limits = limits or Limits()
            t = self._refill(limits)
            if wait and t is not None:
                t.join()
                with self._lock:
                    workers = list(self._pool.get((limits, None), []))
                for w in workers:
                    w.wait_ready(30)

    def _refill(self, limits: Limits, windows: str | None = None) -> threading.Thread | None:
        key = (limits, windows)

        def fill() -> None:
            while not self._closed:
                with self._lock:
                    if len(self._pool.get(key, [])) >= self.prewarm:
                        return
                try:
                    w = self._spawn(limits, windows)
                except Exception as e:
                    log.warning("sandbox %s: could not pre-start a sandbox: %s", self.name, e)
                    return
                with self._lock:
                    if self._closed:
                        w.discard()
                        return
                    self._pool.setdefault(key, []).append(w)

        self._refills = [t for t in self._refills if t.is_alive()]
        if self._refills:  # one filler at a time is enough
            return self._refills[0]
        t = daemon_thread(fill)
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
