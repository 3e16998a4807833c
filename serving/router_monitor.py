"""The live router's monitoring tick: about once a second, keep up with the fleet and
let the policy re-plan it.

A tick flushes the telemetry that is due and keeps the engines' snapshots, follows
the fleet (engines that came or went), probes the doubtful replicas' health, asks the
policy's ``reschedule`` for a plan from the cluster view -- checked by the same rule
the simulator applies (``serving.plan_review.review_plan``) before the fleet gets it --
and offers the held requests again. A tick that raises is counted by kind and logged
once per kind; it never stops the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from serving.contract import ClusterView
from serving.fleet import Fleet
from serving.metrics_adapter import Scraper
from serving.plan_review import review_plan
from serving.planning import capacities
from serving.policy_runtime import PolicyRuntime
from serving.router_replicas import ReplicaSet
from serving.router_telemetry import RouterTelemetry

log = logging.getLogger("autopoiesis.router")


class Monitor:
    def __init__(
        self,
        *,
        fleet: Fleet,
        runtime: PolicyRuntime,
        replicas: ReplicaSet,
        scraper: Scraper,
        telemetry: RouterTelemetry,
        clock: Callable[[], float],
        drain: Callable[[], None],
        interval_s: float,
        reschedule: bool,
    ) -> None:
        self.fleet = fleet
        self.runtime = runtime
        self.replicas = replicas
        self.scraper = scraper
        self.telemetry = telemetry
        self.clock = clock
        self.drain = drain
        """Offer the held requests again (``Dispatcher.drain``)."""
        self.interval_s = interval_s
        self.reschedule = reschedule
        self.applying: asyncio.Task | None = None
        """The fleet applying the last plan; no new plan is asked for until it is done."""

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.tick(session)
            except Exception as e:  # a bad tick must never stop the loop, nor go unseen
                self._tick_failed(e)

    def _tick_failed(self, e: Exception) -> None:
        """Count the failure by kind; log the first of each kind with its traceback."""
        errors = self.telemetry.monitor_errors
        kind = type(e).__name__
        seen = errors.get(kind, 0)
        errors[kind] = seen + 1
        if not seen:
            log.error(
                "router monitor tick failed (%s: %s); later %s failures are only "
                "counted, in autopoiesis_monitor_errors_total",
                kind,
                e,
                kind,
                exc_info=e,
            )

    async def tick(self, session: aiohttp.ClientSession) -> None:
        self.telemetry.on_tick(self.scraper.latest, self.replicas.replicas, self.clock)
        self.replicas.sync()
        await self.replicas.probe_health(session, self.scraper.ok)
        if self.reschedule and (self.applying is None or self.applying.done()):
            self._replan()
        self.drain()

    def _replan(self) -> None:
        """Ask the policy for a plan; hand it to the fleet if the review passes it."""
        plan = self.runtime.reschedule(self.cluster_view(), self.clock())
        menu = self.replicas.menu() or set(self.fleet.plan().replicas)
        review = review_plan(
            plan, self.fleet.plan(), self.replicas.model_name, self.fleet.gpus_available(), menu
        )
        if review.problem is not None:
            self.runtime.reschedule_errors += 1  # the same rule the simulator faults on
        elif review.plan is not None:
            self.telemetry.plans_applied += 1
            self.applying = asyncio.create_task(self.fleet.apply(review.plan, self.replicas.idle))

    def cluster_view(self) -> ClusterView:
        """What ``reschedule`` sees: recent traffic, the pool, the plan, every replica."""
        core = self.replicas.core
        model = self.replicas.model_name
        plan = self.fleet.plan()
        now = self.clock()
        window = self.telemetry.window.summary(now)
        menu = self.replicas.menu()
        self.replicas.refresh(now, self.scraper)
        return ClusterView(
            window=window,
            gpus_available=self.fleet.gpus_available(),
            plan=plan,
            replicas=core.views(None, now),
            queued=len(core.held),
            cold_start_s={spec: cost.cold_start_s for spec, cost in menu.items()},
            capacity_rps=capacities(model, menu, window) if menu else {},
            model=model,
        )
