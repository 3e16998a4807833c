"""The engines a replay-stage slice runs on, by target kind.

- ``simulated``: ``serving.engine_server`` processes (``LocalFleet``), one per
  replica of the scenario's plan, with its model, GPU type and tensor-parallel
  degree, so the engine model behind them is the simulator's. ``time_scale``
  (wall seconds per model second) makes them run faster or slower than real.
  The plan's replicas start warm, as the simulator's do at time 0; a replica a
  plan adds later pays the hardware model's cold start (times ``time_scale``).
- ``urls``: engines that are already up, e.g. real vLLM servers on a GPU
  runner (``StaticFleet``: the router cannot add or remove them).
- ``vllm-docker``: ``vllm serve`` containers (``DockerVllmFleet``) on this
  host's GPUs, one per replica of the plan, all of the plan's GPU type.

Real engines run at ``time_scale`` 1 only: their clock is the GPU's.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import aiohttp

from sandbox.scenario_spec import ClusterSpec
from serving.contract import Plan
from serving.engine import EngineConfig
from serving.fleet import DockerVllmFleet, Fleet, LocalFleet, StaticFleet
from serving.metrics_adapter import normalise

TargetKind = Literal["simulated", "urls", "vllm-docker"]
TARGET_KINDS: tuple[str, ...] = get_args(TargetKind)


class EngineError(RuntimeError):
    """The engines could not be started or reached; the message names which and why."""


@dataclass(frozen=True)
class EngineTarget:
    kind: TargetKind = "simulated"
    urls: tuple[str, ...] = ()
    """``urls``: the engines' base URLs."""
    time_scale: float = 1.0
    """``simulated``: wall seconds per model second (0.1 runs ten times faster)."""
    model: str = ""
    """``vllm-docker``: the model ``vllm serve`` loads (a Hugging Face id). ``urls``: the
    served model name requests carry; empty asks the first engine's ``/v1/models``."""
    gpu_ids: tuple[str, ...] = ()
    """``vllm-docker``: this host's device ids for the plan's GPU type."""
    image: str = "vllm/vllm-openai:latest"
    start_timeout_s: float | None = None
    """How long engines may take to answer ``/health``; None: 60 s, or 900 s for
    ``vllm-docker`` (loading weights takes minutes)."""

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"unknown engine target {self.kind!r}; known: {TARGET_KINDS}")
        if not self.time_scale > 0:
            raise ValueError(f"time scale must be > 0, got {self.time_scale}")
        if self.kind != "simulated" and self.time_scale != 1.0:
            raise ValueError(f"{self.kind} engines run in real time: time scale must be 1")
        if self.kind == "urls" and not self.urls:
            raise ValueError("engine target 'urls' needs at least one URL")
        if self.kind == "vllm-docker" and not (self.model and self.gpu_ids):
            raise ValueError("engine target 'vllm-docker' needs a model and GPU ids")

    @classmethod
    def parse(cls, text: str, **kw: Any) -> EngineTarget:
        """``simulated``, ``vllm-docker`` or comma-separated engine URLs."""
        if text in ("simulated", "vllm-docker"):
            return cls(kind=text, **kw)  # type: ignore[arg-type]
        urls = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
        if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
            raise ValueError(
                f"engines {text!r}: expected simulated, vllm-docker or http(s) URLs"
            )
        return cls(kind="urls", urls=urls, **kw)

    @property
    def startup_s(self) -> float:
        if self.start_timeout_s is not None:
            return self.start_timeout_s
        return 900.0 if self.kind == "vllm-docker" else 60.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineTarget:
        return cls(**{**d, "urls": tuple(d.get("urls", ())),
                      "gpu_ids": tuple(d.get("gpu_ids", ()))})


def _simulated_args(target: EngineTarget, cold: bool) -> list[str]:
    # "-1": the hardware model's cold start (times the time scale); "0": warm at once.
    return ["--time-scale", repr(target.time_scale), "--cold-start-s", "-1" if cold else "0"]


def engines_cluster(target: EngineTarget, cluster: ClusterSpec) -> ClusterSpec:
    """The cluster the target's engines form: ``cluster`` itself, except for URLs whose
    number differs from its plan's replicas -- then one replica of its first kind per URL
    (what the simulator must then be given too, to predict for the same fleet)."""
    n = len(target.urls)
    if target.kind != "urls" or n == len(cluster.plan.replicas):
        return cluster
    spec = cluster.plan.replicas[0]
    return replace(cluster, gpus={spec.gpu: n * spec.tp}, plan=Plan((spec,) * n))


async def start_fleet(target: EngineTarget, cluster: ClusterSpec) -> Fleet:
    """The started fleet for ``cluster`` (from ``engines_cluster``); EngineError when it
    cannot be had."""
    plan = cluster.plan
    if target.kind == "urls":
        fleet: Fleet = StaticFleet(target.urls, plan.replicas)
    elif target.kind == "simulated":
        if cluster.engine != EngineConfig():
            raise EngineError("the simulated engine server runs the default engine config; "
                              "this scenario's cluster has another")
        fleet = LocalFleet(plan, model=cluster.model, engine_args=_simulated_args(target, False),
                           gpus=dict(cluster.gpus), start_timeout_s=target.startup_s)
    else:
        gpus = {s.gpu for s in plan.replicas}
        needed = sum(s.tp for s in plan.replicas)
        if len(gpus) != 1 or needed > len(target.gpu_ids):
            raise EngineError(
                f"the plan needs {needed} GPUs of one type ({', '.join(sorted(gpus))}); this "
                f"runner has {len(target.gpu_ids)}: pick a smaller scale or another scenario")
        fleet = DockerVllmFleet(plan, model=target.model, image=target.image,
                                gpu_ids={gpus.pop(): list(target.gpu_ids)},
                                start_timeout_s=target.startup_s)
    try:
        await fleet.start()
    except Exception as e:
        await fleet.close()
        raise EngineError(f"{target.kind} engines did not start: {e}") from e
    if isinstance(fleet, LocalFleet):
        fleet.engine_args = _simulated_args(target, True)  # replicas a plan adds start cold
    return fleet


async def served_model(urls: list[str], fallback: str, timeout_s: float = 5.0) -> str:
    """The model name requests must carry; EngineError naming any engine that is not up.

    Every engine is asked (a dead one should fail the stage before it starts, not
    as a trickle of failed requests); the first one's first model is the answer.
    """
    names: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        for url in urls:
            try:
                async with s.get(f"{url}/v1/models") as resp:
                    if resp.status != 200:
                        raise EngineError(f"engine {url}: /v1/models answered {resp.status}")
                    data = (await resp.json()).get("data") or [{}]
                    names.append(str(data[0].get("id") or ""))
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                raise EngineError(f"engine {url} is unreachable: {type(e).__name__}: {e}") \
                    from None
    return next((n for n in names if n), fallback)


async def preemptions(urls: list[str], timeout_s: float = 2.0) -> float:
    """Sum of the engines' preemption counters now (NaN if any engine does not say)."""
    async def one(s: aiohttp.ClientSession, url: str) -> float:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with s.get(f"{url}/metrics") as resp:
                if resp.status == 200:
                    return normalise(await resp.text()).preemptions
        return float("nan")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        return sum(await asyncio.gather(*(one(s, u) for u in urls)))
