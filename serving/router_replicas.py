"""The router's replica set: which engines it routes to, whether they answer, and what
the routing core is told about each of them.

The set follows the fleet (new engines join the core's accounting, gone ones leave
it), probes ``/health`` of the doubtful ones, and before every decision hands the
core each replica's state, reachability and latest engine metrics (``refresh``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from serving.accounting import RouterAccounting
from serving.contract import Plan, ReplicaSpec
from serving.fleet import EngineHandle, Fleet
from serving.hardware import UnknownHardware
from serving.metrics_adapter import Scraper
from serving.planning import SpecCost, deployable_specs
from serving.routing import RoutingCore

DEFAULT_KV_BLOCKS = 16384
"""KV capacity assumed for a replica whose engine does not expose it."""
NEVER_SCRAPED_AGE_S = 1e9
"""``snapshot_age`` shown for a replica whose metrics never arrived."""


@dataclass(eq=False)
class RouterReplica:
    handle: EngineHandle
    down: bool = False
    """Unreachable (connection refused, scrape failed) since the last successful probe."""
    healthy: bool = False
    """``/health`` answered 200 at least once since coming up."""

    @property
    def id(self) -> int:
        return self.handle.id

    def state(self) -> str:
        if self.handle.state == "draining":
            return "draining"
        return "serving" if self.healthy and self.handle.state == "serving" else "starting"

    def serves(self) -> bool:
        """Up and reachable: what ``/health`` and ``autopoiesis_replica_up`` report."""
        return self.state() == "serving" and not self.down


class ReplicaSet:
    def __init__(self, fleet: Fleet, core: RoutingCore, model_name: str) -> None:
        self.fleet = fleet
        self.core = core
        self.model_name = model_name
        self.replicas: dict[int, RouterReplica] = {}
        self._followed: Plan | None = None
        """The fleet plan whose weights and admission limit the core holds."""

    @property
    def accounting(self) -> RouterAccounting:
        return self.core.accounting

    def targets(self) -> dict[int, str]:
        """Replica id -> engine URL: what the scraper scrapes."""
        return {r.id: r.handle.url for r in self.replicas.values()}

    def menu(self) -> dict[ReplicaSpec, SpecCost]:
        """The specs a plan may use: what the pool's GPU types can run for this model."""
        try:
            return deployable_specs(self.model_name, self.fleet.gpus_available())
        except UnknownHardware:
            return {}  # an engine this catalogue does not know: plans keep today's specs

    def sync(self) -> None:
        """Follow the fleet: new engines join the accounting, gone ones leave it."""
        engines = {e.id: e for e in self.fleet.engines()}
        for eid, handle in engines.items():
            if eid not in self.replicas:
                self.replicas[eid] = RouterReplica(handle)
                # Remember about as many prefix blocks as the replica can cache (one hash
                # per 16-token KV block), sized as the simulator sizes it.
                cost = self.menu().get(handle.spec)
                kv = cost.kv_blocks if cost else DEFAULT_KV_BLOCKS
                self.core.add_replica(eid, handle.spec, kv_blocks=kv, prefix_capacity=kv)
                self._followed = None  # the new replica's plan weight
        for eid in list(self.replicas):
            if eid not in engines:
                del self.replicas[eid]
                self.core.remove_replica(eid)

    async def probe_health(
        self, session: aiohttp.ClientSession, scraped_ok: Mapping[int, bool]
    ) -> None:
        """Mark replicas up or down from /health (and the last scrape's outcome)."""

        async def probe(r: RouterReplica) -> None:
            try:
                async with session.get(
                    f"{r.handle.url}/health", timeout=aiohttp.ClientTimeout(total=1.0)
                ) as resp:
                    ok = resp.status == 200
            except (TimeoutError, aiohttp.ClientError, OSError):
                ok = False
            r.healthy = ok
            r.down = not ok

        # Serving replicas are watched by the scraper; probe only the doubtful ones.
        doubtful = [
            r
            for r in self.replicas.values()
            if r.down or not r.healthy or not scraped_ok.get(r.id, True)
        ]
        await asyncio.gather(*(probe(r) for r in doubtful))

    def idle(self, replica_id: int) -> bool:
        try:
            return self.accounting.ledger(replica_id).inflight_requests == 0
        except KeyError:
            return True

    def could_serve(self, exclude: frozenset[int]) -> bool:
        return any(
            not r.down and r.id not in exclude and r.state() != "draining"
            for r in self.replicas.values()
        )

    def refresh(self, now: float, scraper: Scraper) -> None:
        """Tell the core what the router knows now: states, reachability, snapshots, plan."""
        core = self.core
        for r in self.replicas.values():
            slot = core.slot(r.id)
            slot.state = r.state()  # type: ignore[assignment]
            core.set_visible(r.id, not r.down)
            m, _ = scraper.view(r.id, now)  # saturated when stale
            total = m.kv_blocks_total or slot.kv_total  # else the catalogue's estimate
            at = m.at if math.isfinite(m.at) else now - NEVER_SCRAPED_AGE_S
            core.observe(r.id, m.running, m.waiting, m.kv_blocks_used(total), at, total)
        plan = self.fleet.plan()
        if plan is not self._followed:
            core.follow_plan(plan)
            self._followed = plan
