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
