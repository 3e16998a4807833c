"""Fleets: start, stop and list the engines behind the router.

``Fleet`` is what the router needs: the engines now (``engines``), the GPUs it may
use (``gpus_available``), the plan it runs (``plan``), and ``apply(plan)`` to
move to a new one. The implementations:

* ``LocalFleet`` runs simulated engines (``serving.engine_server``) as
  subprocesses on free loopback ports, waiting for their ``/health``.
* ``serving.llamacpp.LlamaCppFleet`` runs real llama.cpp servers the same way,
  on CPU (both are a ``ProcessFleet``).
* ``StaticFleet`` fronts fixed URLs (e.g. real vLLM servers it does not own): a
  plan can change only dispatch weights and admission, never the replicas.
* ``DockerVllmFleet`` runs ``vllm serve`` containers through the ``docker`` SDK,
  one per replica, with GPU device requests.

Engines removed by a plan are drained first: they stop taking requests at once
and are stopped when the router reports them idle (or after ``drain_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp

from serving.contract import Plan, ReplicaSpec

EngineState = Literal["starting", "serving", "draining"]


@dataclass(eq=False)
class EngineHandle:
    id: int
    url: str
    spec: ReplicaSpec
    state: EngineState = "starting"
    started_at: float = field(default_factory=time.monotonic)
    ref: Any = field(default=None, repr=False)
    """The fleet's own handle: a Popen, a container, or None."""


class Fleet(Protocol):
    def engines(self) -> list[EngineHandle]: ...

    def gpus_available(self) -> dict[str, int]: ...

    def plan(self) -> Plan: ...

    async def start(self) -> None: ...

    async def apply(self, plan: Plan, idle: Callable[[int], bool]) -> None: ...

    async def close(self) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``url/health`` until it answers 200; False on timeout or if ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                async with session.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return True
            await asyncio.sleep(0.05)
    return False


class _PlanFleet:
    """Shared bookkeeping: replicas follow the plan's spec list, diffed as a multiset."""

    def __init__(self, plan: Plan, gpus: dict[str, int] | None, drain_timeout_s: float) -> None:
        self._plan = plan
        self._gpus = dict(gpus) if gpus is not None else plan.gpus_by_type()
        self._engines: list[EngineHandle] = []
        self._ids = itertools.count()
        self.drain_timeout_s = drain_timeout_s
        self._tasks: set[asyncio.Task] = set()

    def engines(self) -> list[EngineHandle]:
        return list(self._engines)

    def gpus_available(self) -> dict[str, int]:
        return dict(self._gpus)

    def plan(self) -> Plan:
        return self._plan

    async def _launch(self, spec: ReplicaSpec) -> EngineHandle:
        raise NotImplementedError

    async def _terminate(self, handle: EngineHandle) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        results = await asyncio.gather(*(self._launch(s) for s in self._plan.replicas),
                                       return_exceptions=True)
        handles = [r for r in results if isinstance(r, EngineHandle)]
        self._engines.extend(handles)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # One engine failed: stop the ones that came up, or they outlive the fleet.
            await self.close()
            raise failed[0]

    async def apply(self, plan: Plan, idle: Callable[[int], bool]) -> None:
        live = [e for e in self._engines if e.state != "draining"]
        keep: list[EngineHandle] = []
        want = list(plan.replicas)
        for e in live:
            if e.spec in want:
                want.remove(e.spec)
                keep.append(e)
        remove = [e for e in live if e not in keep]
        self._plan = plan
        for e in remove:
            e.state = "draining"
            self._spawn(self._drain(e, idle))
        for spec in want:
            self._spawn(self._add(spec))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, spec: ReplicaSpec) -> None:
        handle = await self._launch(spec)
        self._engines.append(handle)

    async def _drain(self, e: EngineHandle, idle: Callable[[int], bool]) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < deadline and not idle(e.id):
            await asyncio.sleep(0.1)
        with contextlib.suppress(ValueError):
            self._engines.remove(e)
        await self._terminate(e)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for e in list(self._engines):
            await self._terminate(e)
        self._engines.clear()


class ProcessFleet(_PlanFleet):
    """Engines as child processes on free loopback ports, one per replica.

    Each engine's output goes to ``<log_dir>/engine-<id>.log`` (by default a temporary
    folder, removed on close); its tail is in the error when an engine does not come up.
    """

    what = "engine"

    def __init__(self, plan: Plan, *, gpus: dict[str, int] | None, host: str,
                 start_timeout_s: float, drain_timeout_s: float,
                 log_dir: str | os.PathLike[str] | None) -> None:
        super().__init__(plan, gpus, drain_timeout_s)
        self.host = host
        self.start_timeout_s = start_timeout_s
        self._own_logs = not log_dir
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="engines-"))

    def command(self, spec: ReplicaSpec, port: int) -> list[str]:
        raise NotImplementedError

    async def _launch(self, spec: ReplicaSpec) -> EngineHandle:
        port = free_port(self.host)
        eid = next(self._ids)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"engine-{eid}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.command(spec, port), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        handle = EngineHandle(eid, f"http://{self.host}:{port}", spec, ref=proc)
        try:
            healthy = await wait_healthy(handle.url, self.start_timeout_s, proc)
        except BaseException:  # cancelled while waiting: the process is not ours to leave
            await self._terminate(handle)
            raise
        if not healthy:
            await self._terminate(handle)
            tail = log.read_text(errors="replace")[-600:].strip()
            raise RuntimeError(f"{self.what} on port {port} did not become healthy "
                               f"(exit code {proc.returncode}); its log {log} ends: {tail}")
        handle.state = "serving"
        return handle

    async def _terminate(self, handle: EngineHandle) -> None:
        proc: subprocess.Popen | None = handle.ref
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        for _ in range(100):
            if proc.poll() is not None:
                return
            await asyncio.sleep(0.05)
        proc.kill()
        proc.wait()

    async def close(self) -> None:
        await super().close()
        if self._own_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)


class LocalFleet(ProcessFleet):
    """Simulated engines (``serving.engine_server``) as subprocesses on loopback ports."""

    what = "simulated engine"

    def __init__(
        self,
        plan: Plan,
        *,
        model: str = "llama-3-8b",
        engine_args: Sequence[str] = (),
        gpus: dict[str, int] | None = None,
        host: str = "127.0.0.1",
        start_timeout_s: float = 60.0,
        drain_timeout_s: float = 30.0,
        log_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(plan, gpus=gpus, host=host, start_timeout_s=start_timeout_s,
                         drain_timeout_s=drain_timeout_s, log_dir=log_dir)
        self.model = model
        self.engine_args = list(engine_args)

    def command(self, spec: ReplicaSpec, port: int) -> list[str]:
        return [sys.executable, "-m", "serving.engine_server", "--host", self.host,
                "--port", str(port), "--model", self.model, "--gpu", spec.gpu,
                "--tp", str(spec.tp), *self.engine_args]


class StaticFleet:
    """Fixed engine URLs the router does not own: plans change weights and admission only."""

    def __init__(
        self, urls: Sequence[str], spec: ReplicaSpec | Sequence[ReplicaSpec] | None = None
    ) -> None:
        """``spec``: one for every engine, or one per URL (a mixed pool)."""
        if spec is None or isinstance(spec, ReplicaSpec):
            specs = [spec or ReplicaSpec("H100", 1)] * len(urls)
        else:
            specs = list(spec)
        if len(specs) != len(urls):
            raise ValueError(f"{len(urls)} engine URLs but {len(specs)} replica specs")
        self._engines = [
            EngineHandle(i, u.rstrip("/"), s, state="serving")
            for i, (u, s) in enumerate(zip(urls, specs, strict=True))
        ]
        self._plan = Plan(tuple(specs))

    def engines(self) -> list[EngineHandle]:
        return list(self._engines)

    def gpus_available(self) -> dict[str, int]:
        return self._plan.gpus_by_type()

    def plan(self) -> Plan:
        return self._plan

    async def start(self) -> None:
        return None

    async def apply(self, plan: Plan, idle: Callable[[int], bool]) -> None:
        # The replicas are not ours to change; keep weights and admission if they fit.
        n = len(self._engines)
        weights = plan.weights if plan.weights is not None and len(plan.weights) == n else None
        self._plan = Plan(self._plan.replicas, weights, plan.admission_limit)

    async def close(self) -> None:
        return None


class DockerVllmFleet(_PlanFleet):
    """``vllm serve`` containers, one per replica, on GPUs handed out from a pool.

    ``gpu_ids`` maps a GPU type to the device ids of that type on this host; each
    container gets a ``DeviceRequest`` for exactly the ids its TP degree needs.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        model: str,
        gpu_ids: dict[str, list[str]],
        image: str = "vllm/vllm-openai:latest",
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        hf_cache: str | None = None,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 900.0,
        drain_timeout_s: float = 60.0,
        client: Any = None,
    ) -> None:
        super().__init__(plan, {k: len(v) for k, v in gpu_ids.items()}, drain_timeout_s)
        self.model = model
        self.gpu_ids = {k: list(v) for k, v in gpu_ids.items()}
        self._free = {k: list(v) for k, v in gpu_ids.items()}
        self.image = image
        self.host = host
        self.extra_args = list(extra_args)
        self.hf_cache = hf_cache
        self.env = dict(env or {})
        self.start_timeout_s = start_timeout_s
        self._client = client

    def container_spec(self, spec: ReplicaSpec, port: int, device_ids: list[str]) -> dict:
        """Keyword arguments for ``docker.containers.run`` (without the DeviceRequest object).

        Kept as plain data so it can be checked without Docker or a GPU.
        """
        volumes = {self.hf_cache: {"bind": "/root/.cache/huggingface", "mode": "rw"}} \
            if self.hf_cache else {}
        return {
            "image": self.image,
            "command": ["--model", self.model, "--tensor-parallel-size", str(spec.tp),
                        "--host", "0.0.0.0", "--port", "8000", *self.extra_args],
            "detach": True,
            "ports": {"8000/tcp": (self.host, port)},
            "ipc_mode": "host",  # NCCL needs shared memory across TP ranks
            "shm_size": "16g",
            "environment": self.env,
            "volumes": volumes,
            "labels": {"autopoiesis.role": "engine", "autopoiesis.gpu": spec.gpu,
                       "autopoiesis.tp": str(spec.tp)},
            "device_requests": [{"Driver": "nvidia", "DeviceIDs": list(device_ids),
                                 "Capabilities": [["gpu"]]}],
        }

    def _docker(self) -> Any:
        if self._client is None:
            import docker  # imported lazily: only this fleet needs the SDK

            self._client = docker.from_env()
        return self._client

    async def _launch(self, spec: ReplicaSpec) -> EngineHandle:
        free = self._free.get(spec.gpu, [])
        if len(free) < spec.tp:
            raise RuntimeError(f"not enough free {spec.gpu} GPUs for tp={spec.tp}")
        ids, self._free[spec.gpu] = free[: spec.tp], free[spec.tp :]
        port = free_port(self.host)
        kwargs = self.container_spec(spec, port, ids)
        import docker.types

        kwargs["device_requests"] = [
            docker.types.DeviceRequest(device_ids=ids, capabilities=[["gpu"]])
        ]
        container = await asyncio.to_thread(self._docker().containers.run, **kwargs)
        handle = EngineHandle(next(self._ids), f"http://{self.host}:{port}", spec,
                              ref=(container, ids))
        try:
            healthy = await wait_healthy(handle.url, self.start_timeout_s)
        except BaseException:  # cancelled while loading weights: remove the container
            await self._terminate(handle)
            raise
        if not healthy:
            await self._terminate(handle)
            raise RuntimeError(f"vLLM container for {spec} did not become healthy")
        handle.state = "serving"
        return handle

    async def _terminate(self, handle: EngineHandle) -> None:
        if handle.ref is None:
            return
        container, ids = handle.ref
        handle.ref = None
        with contextlib.suppress(Exception):
            await asyncio.to_thread(container.stop, timeout=10)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(container.remove, force=True)
        self._free.setdefault(handle.spec.gpu, []).extend(ids)
