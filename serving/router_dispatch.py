"""Routing a request in the live router: the core decides, the router feeds it and waits.

The decision is the policy's ``route()`` -- in the kit, llm-d's endpoint-picker shape:
filters -> scorers -> a picker (``serving.kit_routing``) -- run by the routing core the
simulator runs too (``serving.routing``: admission, the hold queue and its drain rule,
the check of every choice). What is the router's: ``route()`` called through the
policy runtime (time budget, fallbacks) and timed, a held request's handler parked on
a future until the core dispatches it, and every event that may free room (a finish,
a monitoring tick, a fresh snapshot) offering the held requests again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from serving import prom
from serving.contract import ReplicaView, Request
from serving.metrics_adapter import Scraper
from serving.policy_runtime import ActivePolicy, PolicyRuntime
from serving.router_replicas import ReplicaSet
from serving.routing import Held, RoutingCore

Routed = tuple[int | None, ActivePolicy | None]
"""The replica a request was dispatched to and the policy version that chose it."""


class Dispatcher:
    def __init__(
        self,
        core: RoutingCore,
        replicas: ReplicaSet,
        scraper: Scraper,
        runtime: PolicyRuntime,
        clock: Callable[[], float],
        route_time: prom.Histogram,
        hold_timeout_s: float,
    ) -> None:
        self.core = core
        self.replicas = replicas
        self.scraper = scraper
        self.runtime = runtime
        self.clock = clock
        self.route_time = route_time
        self.hold_timeout_s = hold_timeout_s
        self.closing = False
        """Shutting down: new requests are refused, held ones answered (``answer_held``)."""
        self._chosen_by: dict[int, ActivePolicy] = {}
        """Request id -> the policy version that routed it, until its waiter takes it."""
        self._parked = 0
        """Handlers waiting in ``route`` for a held request's turn."""
        self._unparked = asyncio.Event()

    def _refresh(self, now: float) -> None:
        self.replicas.refresh(now, self.scraper)

    def _decide(self, request: Request, views: tuple[ReplicaView, ...], now: float) -> object:
        """The policy's route() through the runtime's budget and fallbacks, timed."""
        t0 = time.perf_counter()
        choice, active = self.runtime.route(request, views, now)
        self.route_time.observe(time.perf_counter() - t0)
        if choice is not None:
            self._chosen_by[request.id] = active
        return choice

    def _hand_over(self, dispatched: list[tuple[Held, int]]) -> None:
        """Wake the waiter of each request the core dispatched."""
        for entry, replica_id in dispatched:
            active = self._chosen_by.pop(entry.request.id)
            fut = entry.ticket
            assert isinstance(fut, asyncio.Future)
            if fut.done():  # its waiter is gone: the dispatch never happens
                self.core.finish(replica_id, entry.request)
            else:
                fut.set_result((replica_id, active))

    def drain(self) -> None:
        """Offer held requests again (a finish, a tick or a snapshot may have freed room)."""
        if self.core.held:
            now = self.clock()
            self._refresh(now)
            self._hand_over(self.core.drain(now, self._decide))

    async def route(self, request: Request, exclude: frozenset[int], retry: bool = False) -> Routed:
        """Enqueue and drain (the core's arrival rule); wait while held.

        A dispatched request is counted in flight on its replica: the caller must
        ``release`` it. (None, None) when nothing can serve it, it waited too long, or
        the router is shutting down.
        """
        if self.closing:
            return None, None
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        now = self.clock()
        self._refresh(now)
        entry, dispatched = self.core.arrive(
            request, now, self._decide, ticket=fut, exclude=exclude, front=retry
        )
        self._hand_over(dispatched)
        if fut.done():
            return fut.result()
        if not self.replicas.could_serve(exclude):
            self.core.withdraw(entry)
            return None, None  # nothing is serving or starting: fail fast with 503
        self._parked += 1
        try:
            return await asyncio.wait_for(fut, self.hold_timeout_s)
        except TimeoutError:
            return None, None
        finally:
            # The caller logs the request in this same step, before any other task runs.
            self._parked -= 1
            if not self._parked:
                self._unparked.set()
            if not fut.done() or fut.cancelled():
                self.core.withdraw(entry)

    def release(self, replica_id: int, request: Request) -> None:
        """``request`` is off ``replica_id``: count it out and re-offer what is held."""
        self.core.finish(replica_id, request)
        self.drain()

    async def answer_held(self, timeout_s: float = 5.0) -> None:
        """Refuse new requests; answer every held one and wait until its handler logged it.

        Its handler writes the row (``rejected``) when it wakes, a loop iteration or two
        after its ticket is resolved: the telemetry writer must still be open then.
        """
        self.closing = True
        for entry in self.core.held:
            if isinstance(entry.ticket, asyncio.Future) and not entry.ticket.done():
                entry.ticket.set_result((None, None))
        self.core.held.clear()

        async def unparked() -> None:
            while self._parked:
                self._unparked.clear()
                await self._unparked.wait()

        # Bounded: a shutdown must not hang on a handler that never wakes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(unparked(), timeout_s)
