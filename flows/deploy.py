"""``autopoiesis deploy``: the three flows as Prefect deployments with schedules.

* ``pull-telemetry/pull-telemetry`` every ``pull_every_s`` (default 5 minutes);
* ``evolve/evolve`` nightly (cron) and on trigger (pull runs it on drift);
* ``promote/promote`` after evolve (evolve runs it when it registers a challenger).

``serve`` registers them with the Prefect API (``PREFECT_API_URL``; a temporary
local one if unset) and runs them from this process until interrupted; with
``apply_only`` it registers them and returns (for a worker or the UI to run).
"""

from __future__ import annotations

from typing import Any

DEPLOYMENTS = ("pull-telemetry/pull-telemetry", "evolve/evolve", "promote/promote")


def deployments(telemetry_dir: str, state_dir: str, pull_every_s: int = 300,
                nightly_cron: str = "0 3 * * *", tracking_uri: str | None = None) -> list[Any]:
    from flows.prefect_flows import evolve, promote, pull_telemetry

    common = {"state_dir": state_dir, "tracking_uri": tracking_uri}
    return [
        pull_telemetry.to_deployment(
            name="pull-telemetry", interval=pull_every_s,
            parameters={"telemetry_dir": telemetry_dir, "chain": "deployment", **common},
            description="Pull telemetry past the watermark; evolve on drift or SLO regression.",
        ),
        evolve.to_deployment(
            name="evolve", cron=nightly_cron, parameters={"chain": "deployment", **common},
            description="Evolve a challenger on the latest window (nightly and on trigger).",
        ),
        promote.to_deployment(
            name="promote", parameters=common,
            description="Paired held-back comparison; promote, swap live, watch, roll back.",
        ),
    ]


def apply(deps: list[Any]) -> list[str]:
    return [str(d.apply()) for d in deps]


def serve(deps: list[Any]) -> None:
    from prefect import serve as prefect_serve

    prefect_serve(*deps)
