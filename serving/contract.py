"""The policy contract: the one interface shared by the simulator, the sandbox,
the evolution engine and the live router.

A policy is one Python module (one file) that defines:

``route(request: Request, replicas: tuple[ReplicaView, ...], now: float) -> int | None``
    The scheduling policy. Return the ``id`` of a replica in ``replicas`` that
    is ``serving``, or ``HOLD`` (``None``) to keep the request in the router
    queue. ``replicas`` come in ascending ``id`` order. Held requests are
    offered again, oldest first, at every router event (an arrival, a finish,
    a metrics snapshot, a monitoring tick); a held request does not block the
    ones behind it, but a drain passes over at most ``serving.routing.SKIP_AHEAD``
    held requests (the router and the simulator share this rule). While no
    replica is serving, or the plan's admission limit is reached, requests are
    held without asking the policy.

``reschedule(cluster: ClusterView, now: float) -> Plan | None``
    The rescheduling policy, trigger and planner in one, called at every
    monitoring tick. Return ``None`` for "no change", or a new ``Plan``.
    Optional: a module without it keeps its starting plan forever.

``PARAMS: dict[str, Param]``
    Named numeric constants with ranges, for tuning. Each name is a module
    global holding the current value; a tuner rebinds those globals.

Everything handed to a policy is a frozen dataclass, a named tuple or a
read-only mapping: a policy observes the cluster, it cannot change it. Times are seconds; ``now`` is
the simulator's virtual clock or the router's monotonic clock. Policies that
need randomness use the ``random`` module; the evaluator seeds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple

CONTRACT_VERSION = 1

HOLD = None
"""Returned by ``route`` to keep a request in the router queue."""

DEFAULT_PREFILL_TPS = 10_000.0
"""Prefill rate assumed for a replica whose deployment the step-time model does not know."""

DEFAULT_MAX_OUTPUT_TOKENS = 256
"""``Request.max_output_tokens`` of a request whose client set no ``max_tokens``."""

ReplicaState = Literal["starting", "serving", "draining"]


@dataclass(frozen=True, slots=True)
class Request:
    """What the router knows about a request when it arrives."""

    id: int
    arrival: float
    prompt_tokens: int
    max_output_tokens: int
    """The client's cap on the answer (its ``max_tokens``; ``DEFAULT_MAX_OUTPUT_TOKENS``
    when it set none): an upper bound, not the answer's length, which no router knows."""
    prefix_hashes: tuple[int, ...] = ()
    """Hashes of consecutive prompt chunks of ``prefix_block_tokens`` tokens each;
    equal leading hashes mean a shared, cacheable prefix. Empty when unknown."""
    prefix_block_tokens: int = 16
    session_id: str = ""


class ReplicaView(NamedTuple):
    """A snapshot of one replica as the router sees it.

    ``running``, ``waiting`` and ``kv_blocks_used`` come from the engine's
    metrics and are ``snapshot_age`` seconds old. ``inflight_*`` and
    ``prefix_overlap_blocks`` are the router's own accounting: exact, and
    updated at dispatch time.

    A named tuple rather than a frozen dataclass: the router builds one per
    replica for every request, and a tuple is equally read-only at a tenth of
    the construction cost.
    """

    id: int
    gpu: str
    tp: int
    state: ReplicaState
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    inflight_requests: int
    inflight_tokens: int
    prefix_overlap_blocks: int
    """Leading prompt blocks (16 tokens) of this request the router has already
    sent to this replica: an estimate of its prefix-cache hit."""
    snapshot_age: float
    weight: float = 1.0
    """Dispatch weight from the current plan."""
    prefill_tps: float = DEFAULT_PREFILL_TPS
    """Prompt tokens per second this replica prefills (its model, GPU and TP, from the
    step-time model; ``DEFAULT_PREFILL_TPS`` when unknown)."""
    queued_prefill_tokens: float = 0.0
    """The router's estimate of prompt tokens sent here and not yet prefilled: the
    uncached prompt tokens of each request dispatched here, drained at
    ``prefill_tps`` since. Exact inputs, no engine metrics; ignores decode load."""

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 1.0


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """One replica of a plan: which GPU type, how many GPUs (tensor parallel)."""

    gpu: str
    tp: int = 1


@dataclass(frozen=True, slots=True)
class Plan:
    """A cluster configuration.

    ``weights`` (one per replica, same order) bias dispatch for policies that
    read ``ReplicaView.weight``. ``admission_limit`` caps requests in flight
    through the router; beyond it requests wait in the router queue.
    """

    replicas: tuple[ReplicaSpec, ...]
    weights: tuple[float, ...] | None = None
    admission_limit: int | None = None

    def gpus_by_type(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for spec in self.replicas:
            used[spec.gpu] = used.get(spec.gpu, 0) + spec.tp
        return used


@dataclass(frozen=True, slots=True)
class WorkloadWindow:
    """Summary of recent traffic, as ``reschedule`` sees it."""

    duration_s: float
    requests: int
    arrival_rate: float
    iat_cv: float
    input_p50: float
    input_p90: float
    input_p99: float
    output_p50: float
    output_p90: float
    output_p99: float
    prefix_reuse: float
    """Fraction of prompt blocks whose hash was seen earlier in the window."""


def _frozen_map(m: Mapping | None) -> Mapping:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What ``reschedule`` sees at a monitoring tick."""

    window: WorkloadWindow
    gpus_available: Mapping[str, int]
    """GPUs of each type in the pool now (used or not); changes under autoscaling."""
    plan: Plan
    replicas: tuple[ReplicaView, ...]
    queued: int
    """Requests held in the router queue."""
    cold_start_s: Mapping[ReplicaSpec, float] = field(default_factory=dict)
    """Reload cost: seconds before a (re)started replica of this spec serves."""
    capacity_rps: Mapping[ReplicaSpec, float] = field(default_factory=dict)
    """Estimated saturation throughput of one replica of this spec (requests/s)
    on the window's median request."""
    model: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus_available", _frozen_map(self.gpus_available))
        object.__setattr__(self, "cold_start_s", _frozen_map(self.cold_start_s))
        object.__setattr__(self, "capacity_rps", _frozen_map(self.capacity_rps))


@dataclass(frozen=True, slots=True)
class Param:
    """A tunable constant: the module global of the same name holds its value."""

    low: float
    high: float
    integer: bool = False
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Param range is empty: low={self.low} > high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled Param needs low > 0")
