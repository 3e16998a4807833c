"""The one routing core: what the live router and the simulator decide, written once.

Pure: no I/O, no clock of its own (whatever needs the time is handed ``now``), no
policy of its own (a ``decide`` callable is passed in). The hosts feed it facts --
replicas joining and leaving, their state, engine metric snapshots, finishes -- and
ask it for decisions. Each host keeps only what is its own: the live router HTTP,
retries and relaying (``serving.router``); the simulator virtual time and the
charging of decision time (``sandbox.simulator``); the time budget and fallbacks
around a live policy (``serving.policy_runtime``).

Held here: the ``ReplicaView`` a policy sees (engine snapshot, the router's exact
in-flight accounting and prefix index, plan weight, the replica's prefill rate and
estimated prefill backlog), the plan's admission limit, the hold queue and its one
drain rule, the validation of a policy's choice, and how a plan's weights land on
replicas (the check of a reschedule plan and its match onto the live replicas are
``serving.plan_review``).

The drain rule: an arrival is enqueued, then the queue is drained (a newcomer never
overtakes an older held request). A drain offers held requests oldest first; one
the policy holds is passed over -- it does not block the requests behind it -- but
at most ``SKIP_AHEAD`` held requests are passed over per drain, and the next one
held ends it. Why bounded: head-of-line blocking (what vLLM's own waiting queue
does, and what the simulator did) stalls everything behind a request the policy
holds on purpose, so a policy could not hold selectively at all (a long prompt
until its prefix replica has room, a low-priority class under load); unbounded
skipping (what the live router did) re-offers every held request at every event,
O(queue) policy calls per event -- quadratic under overload, each call charged as
router time -- and lets a stream of newcomers starve an old request. With the bound,
an event costs at most ``SKIP_AHEAD + 1`` refused policy calls, requests the policy
would route keep their arrival order, and a few held classes fit in the window.
The admission limit is a gate for every request alike: once reached, the drain
stops. A request no serving replica is visible to is held without asking the
policy: HOLD is the only valid answer it could give.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from serving.accounting import ReplicaLedger, RouterAccounting, count_in, overlap_blocks
from serving.capacity import prefill_tps
from serving.contract import (
    DEFAULT_PREFILL_TPS,
    HOLD,
    Plan,
    ReplicaSpec,
    ReplicaState,
    ReplicaView,
    Request,
)
from serving.engine import EngineConfig
from serving.hardware import UnknownHardware
from serving.plan_review import PlanMatch, match_plan
from serving.steptime import step_time_model

SKIP_AHEAD = 8
"""Held requests a drain passes over before the next one held ends it (see above)."""

NO_EXCLUSIONS: frozenset[int] = frozenset()
_new_tuple = tuple.__new__

Decide = Callable[[Request, tuple[ReplicaView, ...], float], object]
"""A policy's ``route`` as the host wraps it (timing, charging, fallbacks)."""


class InvalidChoice(Exception):
    """``decide`` named no serving replica; ``reason`` says what it returned."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def choice_problem(choice: object, views: Sequence[ReplicaView]) -> str | None:
    """Why ``choice`` is not a valid answer of ``route`` over ``views``; None when it is."""
    if choice is HOLD:
        return None
    # bool is an int subclass; True is not a replica id.
    if isinstance(choice, bool) or not isinstance(choice, numbers.Integral):
        return f"route returned {type(choice).__name__}, expected a replica id or HOLD"
    what = "no such replica"
    for v in views:
        if v.id == choice:
            if v.state == "serving":
                return None
            what = f"replica is {v.state}"
            break
    serving = [v.id for v in views if v.state == "serving"]
    return f"route returned {choice!r} ({what}; serving ids: {serving})"


@functools.cache
def prefill_rate(model: str, gpu: str, tp: int, engine: EngineConfig) -> float:
    """Prefill tokens/s of one replica, from the step-time model; a default when unknown."""
    try:
        return prefill_tps(step_time_model(model, gpu, tp), engine)
    except UnknownHardware:
        return DEFAULT_PREFILL_TPS


@dataclass(slots=True, eq=False)
class Slot:
    """One replica as the router sees it: the core's whole per-replica record."""

    id: int
    gpu: str
    tp: int
    ledger: ReplicaLedger
    kv_total: int
    prefill_tps: float
    state: ReplicaState = "starting"
    visible: bool = True
    """False while the host cannot reach it (the live router's ``down``): in no view.
    Set through ``RoutingCore.set_visible``, which keeps count of the hidden."""
    running: int = 0
    waiting: int = 0
    kv_used: int = 0
    snap_at: float = 0.0
    weight: float = 1.0
    prefilled_at: float = 0.0
    """When the uncached prompt tokens dispatched here will have been prefilled, at
    ``prefill_tps``: the router's estimate of its prefill backlog, as one number."""

    @property
    def spec(self) -> ReplicaSpec:
        return ReplicaSpec(self.gpu, self.tp)


@dataclass(slots=True, eq=False)
class Held:
    """A request in the hold queue; ``ticket`` is the host's own handle (a future, ...)."""

    request: Request
    exclude: frozenset[int] = NO_EXCLUSIONS
    """Replicas this request must not go to (the live router's retry after a failure)."""
    ticket: object = None


class RoutingCore:
    """Replica views, admission, the hold queue and its drain, for one router."""

    def __init__(
        self,
        model: str = "",
        engine: EngineConfig = EngineConfig(),  # noqa: B008 -- frozen, safe to share
        *,
        skip_ahead: int = SKIP_AHEAD,
    ) -> None:
        self.model = model
        self.engine = engine
        self.skip_ahead = skip_ahead
        self.accounting = RouterAccounting()
        self.admission_limit: int | None = None
        self.held: deque[Held] = deque()
        self.inflight = 0
        """Requests dispatched and not finished, over the replicas still here."""
        self._slots: list[Slot] = []  # in id order: views come sorted by id
        self._by_id: dict[int, Slot] = {}
        self._hidden = 0  # slots not visible: views filter only when there are any

    # -- replicas ---------------------------------------------------------------------
    def add_replica(
        self,
        replica_id: int,
        spec: ReplicaSpec,
        *,
        kv_blocks: int,
        prefix_capacity: int,
        state: ReplicaState = "starting",
        weight: float = 1.0,
    ) -> Slot:
        self.accounting.add_replica(replica_id, prefix_capacity)
        slot = Slot(
            replica_id,
            spec.gpu,
            spec.tp,
            self.accounting.ledger(replica_id),
            kv_blocks,
            prefill_rate(self.model, spec.gpu, spec.tp, self.engine),
            state,
            weight=weight,
        )
        self._by_id[replica_id] = slot
        self._slots.append(slot)
        if len(self._slots) > 1 and self._slots[-2].id > replica_id:
            self._slots.sort(key=lambda s: s.id)
        return slot

    def remove_replica(self, replica_id: int) -> None:
        """Forget a replica; its requests still in flight leave the admission count."""
        slot = self._by_id.pop(replica_id, None)
        if slot is None:
            return
        if not slot.visible:
            self._hidden -= 1
        self._slots.remove(slot)
        self.inflight -= slot.ledger.inflight_requests
        self.accounting.remove_replica(replica_id)

    def set_visible(self, replica_id: int, visible: bool) -> None:
        slot = self._by_id[replica_id]
        if slot.visible != visible:
            slot.visible = visible
            self._hidden += -1 if visible else 1

    def slot(self, replica_id: int) -> Slot:
        return self._by_id[replica_id]

    def slots(self) -> tuple[Slot, ...]:
        return tuple(self._slots)

    def observe(
        self,
        replica_id: int,
        running: int,
        waiting: int,
        kv_used: int,
        at: float,
        kv_total: int | None = None,
    ) -> None:
        """An engine metrics snapshot taken at ``at``."""
        slot = self._by_id[replica_id]
        slot.running, slot.waiting, slot.kv_used, slot.snap_at = running, waiting, kv_used, at
        if kv_total is not None:
            slot.kv_total = kv_total

    def follow_plan(self, plan: Plan) -> PlanMatch:
        """Take ``plan``'s admission limit, and its weights onto the live replicas it keeps."""
        self.admission_limit = plan.admission_limit
        live = [(s.id, s.spec) for s in self._slots if s.state != "draining"]
        match = match_plan(plan, live)
        for rid, weight in match.keep:
            self._by_id[rid].weight = weight
        return match

    # -- accounting -------------------------------------------------------------------
    def dispatch(self, replica_id: int, request: Request, now: float, overlap: int = 0) -> None:
        """``request`` goes to ``replica_id`` now (``overlap`` blocks of it cached there)."""
        self._count_in(self._by_id[replica_id], request, now, overlap)

    def _count_in(self, slot: Slot, request: Request, now: float, overlap: int) -> None:
        count_in(slot.ledger, request)
        self.inflight += 1
        uncached = request.prompt_tokens - overlap * self.engine.block_size
        if uncached > 0:
            start = slot.prefilled_at if slot.prefilled_at > now else now
            slot.prefilled_at = start + uncached / slot.prefill_tps

    def finish(self, replica_id: int, request: Request) -> None:
        """``request`` left ``replica_id`` (finished, failed, or sent elsewhere)."""
        if self.accounting.on_finish(replica_id, request):
            self.inflight -= 1

    # -- views ------------------------------------------------------------------------
    def views(
        self, request: Request | None, now: float, exclude: frozenset[int] = NO_EXCLUSIONS
    ) -> tuple[ReplicaView, ...]:
        """What a policy sees for ``request`` (None: the cluster view) at ``now``."""
        with_prefix = request is not None and bool(request.prefix_hashes)
        block = self.engine.block_size
        slots = self._slots
        if self._hidden or exclude:
            slots = [s for s in slots if s.visible and s.id not in exclude]
        out = []
        for s in slots:
            ledger = s.ledger
            queued = (s.prefilled_at - now) * s.prefill_tps
            # tuple.__new__ skips the named tuple's Python-level __new__: one frame less
            # per replica per decision, on the simulator's hottest line.
            fields = (
                s.id,
                s.gpu,
                s.tp,
                s.state,
                s.running,
                s.waiting,
                s.kv_used,
                s.kv_total,
                ledger.inflight_requests,
                ledger.inflight_tokens,
                overlap_blocks(ledger, request, block) if with_prefix else 0,  # type: ignore[arg-type]
                now - s.snap_at,
                s.weight,
                s.prefill_tps,
                queued if queued > 0.0 else 0.0,
            )
            out.append(_new_tuple(ReplicaView, fields))
        return tuple(out)

    # -- the hold queue ---------------------------------------------------------------
    def enqueue(
        self,
        request: Request,
        *,
        ticket: object = None,
        exclude: frozenset[int] = NO_EXCLUSIONS,
        front: bool = False,
    ) -> Held:
        """Hold ``request``; at the front for a retry (it is older than all behind it)."""
        entry = Held(request, exclude, ticket)
        if front:
            self.held.appendleft(entry)
        else:
            self.held.append(entry)
        return entry

    def arrive(
        self,
        request: Request,
        now: float,
        decide: Decide,
        *,
        ticket: object = None,
        exclude: frozenset[int] = NO_EXCLUSIONS,
        front: bool = False,
    ) -> tuple[Held, list[tuple[Held, int]]]:
        """An arrival (or a retry): enqueue, then drain; its entry and what was dispatched."""
        entry = self.enqueue(request, ticket=ticket, exclude=exclude, front=front)
        return entry, self.drain(now, decide)

    def withdraw(self, entry: Held) -> None:
        """Take a held request out (its client gave up, or it timed out)."""
        with contextlib.suppress(ValueError):  # already dispatched or withdrawn
            self.held.remove(entry)

    def drain(self, now: float, decide: Decide) -> list[tuple[Held, int]]:
        """Offer held requests oldest first under the drain rule; (entry, replica) dispatched.

        The core counts each dispatch itself before the next decision, so a drain
        that routes several requests never shows a policy stale accounting.
        (The hot path of the simulator: kept flat on purpose.)
        """
        held = self.held
        dispatched: list[tuple[Held, int]] = []
        if not held:
            return dispatched
        limit = self.admission_limit
        passed = i = 0
        while i < len(held):
            if limit is not None and self.inflight >= limit:
                break
            entry = held[i]
            request = entry.request
            views = self.views(request, now, entry.exclude)
            for chosen in views:
                if chosen.state == "serving":
                    break
            else:
                if not entry.exclude:
                    break  # no replica serves at all: nothing can be dispatched
                chosen = None
            slot = None
            if chosen is not None:
                choice = decide(request, views, now)
                if choice is not HOLD:
                    slot = self._chosen_slot(choice, views, entry.exclude)
            if slot is None:
                passed += 1
                if passed > self.skip_ahead:
                    break
                i += 1
                continue
            del held[i]
            overlap = 0
            if request.prefix_hashes:
                overlap = next(v.prefix_overlap_blocks for v in views if v.id == slot.id)
            self._count_in(slot, request, now, overlap)
            dispatched.append((entry, slot.id))
        return dispatched

    def _chosen_slot(self, choice: object, views: tuple[ReplicaView, ...],
                     exclude: frozenset[int]) -> Slot:  # fmt: skip
        """The slot of the serving replica ``choice`` names; InvalidChoice when it names none.

        The same answer as ``choice_problem`` over ``views`` (built from these slots a
        moment ago), in a dict lookup for the common case of a plain, valid int.
        """
        slot = self._by_id.get(choice) if type(choice) is int else None  # True is not 1 here
        if (
            slot is not None
            and slot.visible
            and slot.state == "serving"
            and not (exclude and choice in exclude)
        ):
            return slot
        problem = choice_problem(choice, views)
        if problem is not None:
            raise InvalidChoice(problem)
        return self._by_id[int(choice)]  # type: ignore[call-overload]  # a numpy integer
