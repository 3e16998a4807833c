"""What the live router records: telemetry rows, engine snapshots, the recent-traffic
summary ``reschedule`` sees, and the Prometheus counters and histograms of ``/metrics``.

Every request, failed or not, becomes one telemetry row (``record``); the same row
feeds the counters and the recent-traffic summary, so the three never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from serving import prom
from serving.accounting import RouterAccounting
from serving.engine_snapshots import SnapshotWriter
from serving.metrics_adapter import EngineMetrics
from serving.policy_runtime import PolicyRuntime
from serving.recent_traffic import WindowTracker
from serving.router_replicas import RouterReplica
from serving.telemetry import TelemetryRow, TelemetryWriter

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
ROUTE_BUCKETS = (1e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)


class RouterTelemetry:
    def __init__(self, telemetry_dir: Path | None) -> None:
        self.writer = TelemetryWriter(telemetry_dir) if telemetry_dir else None
        self.snapshots = SnapshotWriter(telemetry_dir) if telemetry_dir else None
        self.window = WindowTracker()
        self.requests: dict[str, int] = {}
        """Finished requests by telemetry status."""
        self.ttft = prom.Histogram(LATENCY_BUCKETS)
        self.e2e = prom.Histogram(LATENCY_BUCKETS)
        self.route_time = prom.Histogram(ROUTE_BUCKETS)
        self.retries = 0
        self.plans_applied = 0
        self.monitor_errors: dict[str, int] = {}
        """Monitoring ticks that raised, by exception type."""
        self.swap_ms = prom.Histogram((1, 2, 5, 10, 20, 50, 100, 200, 500))

    def record(self, row: TelemetryRow) -> None:
        self.requests[row.status] = self.requests.get(row.status, 0) + 1
        if row.ttft_s == row.ttft_s:
            self.ttft.observe(row.ttft_s)
        if row.e2e_s == row.e2e_s:
            self.e2e.observe(row.e2e_s)
        if row.status == "ok":
            self.window.finish(row.output_tokens)
        if self.writer is not None:
            self.writer.add(row)

    def on_tick(
        self,
        latest: dict[int, EngineMetrics],
        replicas: dict[int, RouterReplica],
        clock: Callable[[], float],
    ) -> None:
        """Flush rows that are due and keep the engines' latest snapshots."""
        if self.writer is not None:
            self.writer.flush_due()
        if self.snapshots is not None:
            now = clock()
            for rid, m in list(latest.items()):
                r = replicas.get(rid)
                if r is not None:
                    self.snapshots.add(r.handle.url, m, now)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # a clean stop loses nothing
        if self.snapshots is not None:
            self.snapshots.flush()

    def render(
        self,
        runtime: PolicyRuntime,
        replicas: Iterable[RouterReplica],
        accounting: RouterAccounting,
        held: int,
    ) -> str:
        """The ``/metrics`` page, in the Prometheus text format."""
        return "".join(
            [
                *self._policy_lines(runtime),
                *self._router_lines(held),
                *self._replica_lines(replicas, accounting),
                *self._histogram_lines(),
            ]
        )

    def _policy_lines(self, rt: PolicyRuntime) -> list[str]:
        cur = rt.current
        return [
            prom.header(
                "autopoiesis_requests_total",
                "counter",
                "Requests finished by the router, by telemetry status.",
            ),
            *(
                prom.sample("autopoiesis_requests_total", v, {"status": k})
                for k, v in sorted(self.requests.items())
            ),
            prom.header("autopoiesis_policy_info", "gauge", "The policy now routing (value 1)."),
            prom.sample(
                "autopoiesis_policy_info",
                1,
                {"version": cur.version, "sha256": cur.sha256, "name": cur.policy.name},
            ),
            prom.header(
                "autopoiesis_policy_fallbacks_total",
                "counter",
                "Route calls answered by a fallback policy, by reason.",
            ),
            *(
                prom.sample("autopoiesis_policy_fallbacks_total", v, {"reason": k})
                for k, v in rt.fallbacks.items()
            ),
            prom.header("autopoiesis_policy_swaps_total", "counter", "Policy swaps."),
            prom.sample("autopoiesis_policy_swaps_total", rt.swaps),
            prom.header("autopoiesis_policy_rollbacks_total", "counter", "Rollbacks."),
            prom.sample("autopoiesis_policy_rollbacks_total", rt.rollbacks),
            prom.header(
                "autopoiesis_policy_demotions_total",
                "counter",
                "Policies demoted after repeated failures.",
            ),
            prom.sample("autopoiesis_policy_demotions_total", rt.demotions),
            prom.header(
                "autopoiesis_reschedule_errors_total",
                "counter",
                "reschedule() calls that raised or returned a non-plan.",
            ),
            prom.sample("autopoiesis_reschedule_errors_total", rt.reschedule_errors),
        ]

    def _router_lines(self, held: int) -> list[str]:
        return [
            prom.header(
                "autopoiesis_plans_applied_total", "counter", "New plans handed to the fleet."
            ),
            prom.sample("autopoiesis_plans_applied_total", self.plans_applied),
            prom.header(
                "autopoiesis_monitor_errors_total",
                "counter",
                "Monitoring ticks that failed, by exception type.",
            ),
            *(
                prom.sample("autopoiesis_monitor_errors_total", v, {"kind": k})
                for k, v in sorted(self.monitor_errors.items())
            ),
            prom.header(
                "autopoiesis_upstream_retries_total",
                "counter",
                "Requests retried on another replica before any byte was sent.",
            ),
            prom.sample("autopoiesis_upstream_retries_total", self.retries),
            prom.header(
                "autopoiesis_held_requests", "gauge", "Requests waiting in the router queue."
            ),
            prom.sample("autopoiesis_held_requests", held),
        ]

    @staticmethod
    def _replica_lines(
        replicas: Iterable[RouterReplica], accounting: RouterAccounting
    ) -> list[str]:
        out = [
            prom.header("autopoiesis_replica_up", "gauge", "1 when the replica serves."),
            prom.header(
                "autopoiesis_replica_inflight_requests",
                "gauge",
                "Requests the router has in flight on the replica.",
            ),
        ]
        for r in replicas:
            lab = {"replica": str(r.id), "url": r.handle.url}
            out.append(prom.sample("autopoiesis_replica_up", 1 if r.serves() else 0, lab))
            out.append(
                prom.sample(
                    "autopoiesis_replica_inflight_requests",
                    accounting.ledger(r.id).inflight_requests,
                    lab,
                )
            )
        return out

    def _histogram_lines(self) -> list[str]:
        return [
            prom.header(
                "autopoiesis_ttft_seconds",
                "histogram",
                "Time to first streamed chunk, measured at the router.",
            ),
            self.ttft.render("autopoiesis_ttft_seconds"),
            prom.header(
                "autopoiesis_e2e_seconds", "histogram", "End-to-end request latency at the router."
            ),
            self.e2e.render("autopoiesis_e2e_seconds"),
            prom.header(
                "autopoiesis_route_seconds",
                "histogram",
                "Time of one routing decision, policy included.",
            ),
            self.route_time.render("autopoiesis_route_seconds"),
            prom.header(
                "autopoiesis_policy_swap_milliseconds", "histogram", "Admin load-and-swap time."
            ),
            self.swap_ms.render("autopoiesis_policy_swap_milliseconds"),
        ]
