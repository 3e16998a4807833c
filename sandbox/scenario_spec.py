"""What a simulation replays: a workload on a cluster, with the cluster's own events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from sandbox.workload import Workload
from serving.contract import Plan
from serving.engine import EngineConfig

EventKind = Literal["add_gpus", "remove_gpus", "fail_replica"]


@dataclass(frozen=True)
class ClusterEvent:
    """Something that happens to the cluster at ``at_s`` regardless of policy.

    ``add_gpus``/``remove_gpus``: ``count`` GPUs of type ``gpu`` join or leave the
    pool (autoscaling, preemption by another tenant); replicas using removed
    GPUs stop at once and their requests are retried by the router.
    ``fail_replica``: replica index ``replica`` of the current plan crashes and
    restarts (cold start); its requests are retried by the router.
    """

    at_s: float
    kind: EventKind
    gpu: str = ""
    count: int = 0
    replica: int = -1


@dataclass(frozen=True)
class SLO:
    ttft_s: float = 2.0
    tpot_s: float = 0.1


@dataclass(frozen=True)
class ClusterSpec:
    model: str
    gpus: Mapping[str, int]
    """The GPU pool at time 0, by type."""
    plan: Plan
    """The starting plan; its replicas are warm at time 0."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    snapshot_interval_s: float = 0.25
    """How often the router refreshes engine metrics (staleness of views)."""
    monitor_interval_s: float = 5.0
    """How often ``reschedule`` is called."""
    window_s: float = 60.0
    """Length of the workload window ``reschedule`` sees."""
    decision_time_factor: float = 1.0
    """Policy wall time is multiplied by this and charged to simulated time."""
    cold_start_s: float | None = None
    """Override for every replica's cold start; None derives it from weights."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", MappingProxyType(dict(self.gpus)))


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    workload: Workload
    cluster: ClusterSpec
    events: tuple[ClusterEvent, ...] = ()
    slo: SLO = field(default_factory=SLO)


def parse_cluster(text: str) -> ClusterSpec:
    """``MODEL@COUNTxGPU[/tpK],...`` -> a warm plan on exactly that pool.

    ``llama-3-8b@4xH100,2xA100`` is six single-GPU replicas;
    ``llama-3-70b@2xH100/tp4`` is two replicas of four H100s each.
    """
    from serving.contract import ReplicaSpec
    from serving.hardware import check_deployment

    model, sep, rest = text.partition("@")
    if not sep or not model or not rest:
        raise ValueError(f"cluster spec {text!r}: expected MODEL@COUNTxGPU[/tpK],...")
    replicas: list[ReplicaSpec] = []
    pool: dict[str, int] = {}
    for part in rest.split(","):
        count, x, gpu_tp = part.strip().partition("x")
        gpu, _, tp_text = gpu_tp.partition("/tp")
        if not x or not count.isdigit() or not gpu or (tp_text and not tp_text.isdigit()):
            raise ValueError(
                f"cluster spec {text!r}: cannot read {part!r} (e.g. 4xH100 or 2xH100/tp4)"
            )
        tp = int(tp_text or 1)
        check_deployment(model, gpu, tp, profiled=True)
        replicas += [ReplicaSpec(gpu, tp)] * int(count)
        pool[gpu] = pool.get(gpu, 0) + int(count) * tp
    return ClusterSpec(model, pool, Plan(tuple(replicas)))
