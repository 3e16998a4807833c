"""The router's policy slot: run ``route``/``reschedule`` safely, swap and roll back.

A policy runs in the router's event loop, so it must be fast and must not fail
the request it routes. Each ``route`` call is timed; an exception, an answer that
names no serving replica, or a call over ``budget_s`` counts as a failure and the
request is routed by the fallback chain instead: the last policy that routed
successfully, then a safe baseline (least outstanding requests, which reads only
the router's exact accounting). An over-budget answer is discarded rather than
used so that a policy's latency is never rewarded. After
``max_consecutive_failures`` failures in a row the policy is demoted: the last
good one becomes current. (A policy stuck in an endless loop cannot be stopped
from inside one thread; the sandbox's time limits screen candidates for that
before any is promoted.)

A swap is one attribute assignment in the event loop: requests already
dispatched keep the version they were routed with (the router records it per
request), new requests see the new one. Router-local accounting lives in the
router, not here, so it survives swaps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from serving.contract import HOLD, ClusterView, Plan, ReplicaView, Request
from serving.policy_loader import LoadedPolicy, builtin_policy
from serving.routing import choice_problem

BASELINE = "least_outstanding"


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    policy: LoadedPolicy
    version: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def sha256(self) -> str:
        return self.policy.sha256


def default_version(policy: LoadedPolicy) -> str:
    return f"{policy.name.removesuffix('.py')}@{policy.sha256[:12]}"


class PolicyRuntime:
    def __init__(
        self,
        policy: LoadedPolicy,
        version: str | None = None,
        *,
        budget_s: float = 0.002,
        max_consecutive_failures: int = 5,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.budget_s = budget_s
        self.max_consecutive_failures = max_consecutive_failures
        self._clock = clock
        base = builtin_policy(BASELINE)
        self.baseline = ActivePolicy(base, f"baseline:{default_version(base)}")
        self.current = ActivePolicy(policy, version or default_version(policy))
        self.previous: ActivePolicy | None = None
        self.last_good: ActivePolicy | None = None
        self._streak = 0
        self.fallbacks: dict[str, int] = {"exception": 0, "budget": 0, "invalid": 0}
        self.swaps = 0
        self.rollbacks = 0
        self.demotions = 0
        self.reschedule_errors = 0
        self.route_seconds_total = 0.0
        self.route_calls = 0

    # -- routing ----------------------------------------------------------------------
    def route(
        self, request: Request, replicas: tuple[ReplicaView, ...], now: float
    ) -> tuple[int | None, ActivePolicy]:
        """The replica for ``request`` (or HOLD) and the policy version that chose it."""
        active = self.current
        reason = self._try(active, request, replicas, now)
        if isinstance(reason, str):
            self.fallbacks[reason] += 1
            self._streak += 1
            if self._streak >= self.max_consecutive_failures:
                self._demote()
            for fallback in (self.last_good, self.baseline):
                if fallback is None or fallback is active:
                    continue
                choice = self._try(fallback, request, replicas, now, budget=False)
                if not isinstance(choice, str):
                    return choice[0], fallback
            # Even the baseline failed (cannot happen with a valid baseline): first serving.
            for r in replicas:
                if r.state == "serving":
                    return r.id, self.baseline
            return HOLD, self.baseline
        self._streak = 0
        self.last_good = active
        return reason[0], active

    def _try(
        self,
        active: ActivePolicy,
        request: Request,
        replicas: tuple[ReplicaView, ...],
        now: float,
        budget: bool = True,
    ) -> tuple[int | None] | str:
        """(choice,) on success, else the failure reason."""
        t0 = self._clock()
        try:
            choice = active.policy.route(request, replicas, now)
        except Exception:
            return "exception"
        finally:
            dt = self._clock() - t0
            self.route_seconds_total += dt
            self.route_calls += 1
        if budget and dt > self.budget_s:
            return "budget"
        if choice_problem(choice, replicas) is not None:  # the simulator's rule, a fault there
            return "invalid"
        return (choice,)

    def _demote(self) -> None:
        fallback = self.last_good if self.last_good not in (None, self.current) else self.baseline
        assert fallback is not None
        self.previous, self.current = self.current, fallback
        self._streak = 0
        self.demotions += 1

    # -- rescheduling -------------------------------------------------------------------
    def reschedule(self, cluster: ClusterView, now: float) -> Plan | None:
        fn = self.current.policy.reschedule
        if fn is None:
            return None
        try:
            plan = fn(cluster, now)
        except Exception:
            self.reschedule_errors += 1
            return None
        if plan is not None and not isinstance(plan, Plan):
            self.reschedule_errors += 1
            return None
        return plan

    # -- swaps --------------------------------------------------------------------------
    def swap(self, policy: LoadedPolicy, version: str | None = None) -> ActivePolicy:
        """Make ``policy`` current; the one it replaces becomes the rollback target."""
        new = ActivePolicy(policy, version or default_version(policy))
        self.previous, self.current = self.current, new
        self._streak = 0
        self.swaps += 1
        return new

    def rollback(self) -> ActivePolicy:
        if self.previous is None:
            raise LookupError("no previous policy to roll back to")
        self.previous, self.current = self.current, self.previous
        self._streak = 0
        self.rollbacks += 1
        return self.current
