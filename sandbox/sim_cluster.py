"""The simulator's cluster side: replicas and GPUs, cluster events, the monitor tick, plans.

``Simulation`` (``sandbox.simulator``) keeps the request path (arrival, the router
queue's drain, the policy's decision, dispatch, engine steps, finishes) and inherits
this side from ``ClusterSide``: a mixin, not a collaborating object, so a cluster
event costs no extra hop and both sides read the same state. Replica lifecycle:
pending (waiting for GPUs) -> starting (cold start) -> serving -> draining (a plan
dropped it; it finishes what it holds) -> gone. A replica that comes up gets its
engine in ``Simulation._on_ready``, on the request side, where engines are made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import thread_time as _cpu_clock

from sandbox.results import DecisionTimes, RequestOutcomes
from sandbox.scenario_spec import ClusterEvent, ClusterSpec
from serving.contract import ClusterView, Plan, ReplicaSpec, Request
from serving.plan_review import review_plan
from serving.planning import SpecCost, capacities
from serving.policy_loader import LoadedPolicy
from serving.recent_traffic import WindowTracker
from serving.routing import RoutingCore

# Event priorities at equal times: the cluster changes first, then replicas come
# up, then requests arrive (so a step ending at that instant already sees them).
CLUSTER, READY, ARRIVAL, DISPATCH, ENGINE, SNAPSHOT, MONITOR, HORIZON = range(8)


class PolicyFault(Exception):
    """The policy misbehaved; ``reason`` says how. Never a score."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class SimReplica:
    """The simulator's side of a replica: its engine and lifecycle (the router's is a Slot)."""

    id: int
    spec: ReplicaSpec
    state: str  # pending | starting | serving | draining
    kv_blocks: int
    engine: object | None = None
    pushed_epoch: int = -1

    @property
    def holds_gpus(self) -> bool:
        return self.state in ("starting", "serving", "draining")


class ClusterSide:
    """Replica lifecycle, GPU accounting, cluster events, the monitor tick and plans."""

    # State and steps of the Simulation this is mixed into (set in its __init__).
    cluster: ClusterSpec
    policy: LoadedPolicy
    core: RoutingCore
    now: float
    pool: dict[str, int]
    replicas: dict[int, SimReplica]
    inflight: dict[int, tuple[int, Request]]
    outcomes: RequestOutcomes
    decisions: DecisionTimes
    window: WindowTracker
    unit_blocks: int
    replans: int
    gpu_seconds: float
    _gpu_clock: float
    _next_id: int
    _specs: Mapping[ReplicaSpec, SpecCost]
    _push: Callable[..., None]
    _on_ready: Callable[[int], None]
    _drain_queue: Callable[..., None]
    _charge: Callable[[float, list[float]], None]

    # -- replicas and GPUs -------------------------------------------------------------
    def _new_replica(self, spec: ReplicaSpec, weight: float) -> SimReplica:
        kv = self._specs[spec].kv_blocks
        r = SimReplica(self._next_id, spec, "pending", kv)
        self._next_id += 1
        self.replicas[r.id] = r
        # The router remembers about as many prefix chunks as the replica can cache.
        self.core.add_replica(
            r.id, spec, kv_blocks=kv, prefix_capacity=kv // self.unit_blocks, weight=weight
        )
        return r

    def _set_state(self, r: SimReplica, state: str) -> None:
        """The replica's lifecycle, and what the router sees of it (pending looks starting)."""
        r.state = state
        self.core.slot(r.id).state = "starting" if state == "pending" else state  # type: ignore[assignment]

    def _free_gpus(self, gpu: str) -> int:
        held = sum(r.spec.tp for r in self.replicas.values() if r.holds_gpus and r.spec.gpu == gpu)
        return self.pool.get(gpu, 0) - held

    def _account_gpus(self) -> None:
        held = sum(r.spec.tp for r in self.replicas.values() if r.holds_gpus)
        self.gpu_seconds += held * (self.now - self._gpu_clock)
        self._gpu_clock = self.now

    def _bring_up(self, r: SimReplica, warm: bool = False) -> None:
        self._account_gpus()
        self._set_state(r, "starting")
        cold = self._specs[r.spec].cold_start_s
        if warm:
            self._on_ready(r.id)
        else:
            self._push(self.now + cold, READY, "ready", r.id)

    def _start_pending(self) -> None:
        for r in list(self.replicas.values()):
            if r.state == "pending" and self._free_gpus(r.spec.gpu) >= r.spec.tp:
                self._bring_up(r)

    def _retire(self, r: SimReplica) -> None:
        """Take a replica out; whatever it was serving goes back to the router queue."""
        self._account_gpus()
        lost = [seq.rid for seq in r.engine.abort()] if r.engine is not None else []
        self._requeue(lost)
        del self.replicas[r.id]
        self.core.remove_replica(r.id)
        self._start_pending()

    def _requeue(self, rids: list[int]) -> None:
        """Requests lost with their replica go back to the front of the router queue.

        Not drained here: the caller does, once the cluster change is complete.
        """
        for rid in sorted(rids, reverse=True):
            target, request = self.inflight.pop(rid)
            self.core.finish(target, request)
            self.outcomes.retries[rid] += 1
            self.core.enqueue(request, front=True)

    def _active(self) -> list[SimReplica]:
        return [r for r in self.replicas.values() if r.state != "draining"]

    # -- cluster events --------------------------------------------------------------
    def _on_cluster(self, ev: ClusterEvent) -> None:
        if ev.kind == "add_gpus":
            self.pool[ev.gpu] = self.pool.get(ev.gpu, 0) + ev.count
            self._start_pending()
        elif ev.kind == "remove_gpus":
            self.pool[ev.gpu] = max(0, self.pool.get(ev.gpu, 0) - ev.count)
            order = {"draining": 0, "starting": 1, "serving": 2}
            victims = sorted(
                (r for r in self.replicas.values() if r.holds_gpus and r.spec.gpu == ev.gpu),
                key=lambda r: (order[r.state], -r.id),
            )
            for r in victims:
                if self._free_gpus(ev.gpu) >= 0:
                    break
                self._retire(r)
        elif ev.kind == "fail_replica":
            active = self._active()
            if 0 <= ev.replica < len(active):
                r = active[ev.replica]
                if r.engine is not None:
                    self._account_gpus()
                    self._requeue([seq.rid for seq in r.engine.abort()])
                    r.engine = None
                self._set_state(r, "pending")
                self._bring_up(r)
        self._drain_queue()

    # -- the monitor tick --------------------------------------------------------------
    def _on_monitor(self, _: object) -> None:
        self._push(self.now + self.cluster.monitor_interval_s, MONITOR, "monitor")
        if self.policy.reschedule is not None:
            view = self._cluster_view()
            started = _cpu_clock()
            try:
                plan = self.policy.reschedule(view, self.now)
            except Exception as exc:
                raise PolicyFault(f"reschedule raised {type(exc).__name__}: {exc}") from exc
            self._charge(_cpu_clock() - started, self.decisions.reschedule)
            self._apply(plan)
        # A tick is a router event as in the live router: held requests are offered again.
        self._drain_queue()

    def _current_plan(self) -> Plan:
        live = [s for s in self.core.slots() if s.state != "draining"]
        return Plan(
            tuple(s.spec for s in live),
            tuple(s.weight for s in live),
            self.core.admission_limit,
        )

    def _cluster_view(self) -> ClusterView:
        window = self.window.summary(self.now)
        c = self.cluster
        return ClusterView(
            window=window,
            gpus_available=self.pool,
            plan=self._current_plan(),
            replicas=self.core.views(None, self.now),
            queued=len(self.core.held),
            cold_start_s={spec: cost.cold_start_s for spec, cost in self._specs.items()},
            capacity_rps=capacities(c.model, self._specs, window, c.engine),
            model=c.model,
        )

    # -- plans ---------------------------------------------------------------------
    def _check_plan(self, plan: object, current: Plan | None = None) -> Plan | None:
        """The plan to apply (None: no change), by the core's rule; a bad plan is a fault."""
        review = review_plan(plan, current, self.cluster.model, self.pool, self._specs)
        if review.problem is not None:
            raise PolicyFault(review.problem)
        return review.plan

    def _apply(self, plan: object) -> None:
        new = self._check_plan(plan, self._current_plan())
        if new is None:
            return
        self.replans += 1
        match = self.core.follow_plan(new)
        for spec, weight in match.start:
            self._new_replica(spec, weight)
        for rid in match.stop:
            r = self.replicas[rid]
            if r.state in ("pending", "starting") or r.engine is None:
                self._retire(r)
            else:
                self._set_state(r, "draining")
                if r.engine.idle and not r.engine.waiting:
                    self._retire(r)
        self._start_pending()
