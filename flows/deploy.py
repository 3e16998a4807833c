"""``autopoiesis deploy``: the three flows as Prefect deployments on a work pool, with schedules.

* ``pull-telemetry/pull-telemetry`` every ``pull_every_s`` (default 5 minutes);
* ``evolve/evolve`` nightly (cron) and on trigger (pull runs it on drift);
* ``promote/promote`` after evolve (evolve runs it when it registers a challenger).

They are registered on a ``process`` work pool (default ``autopoiesis-local``,
created if missing) with the same descriptions and tags as ``prefect.yaml`` (the
compose stack's Docker pool; a test keeps the two in step), so the Prefect UI
shows them under Work Pools like any deployment. ``serve`` then runs a process
worker for that pool in this process until interrupted (each flow run a
subprocess in this checkout); with ``apply_only`` they are registered and a
``prefect worker start --pool autopoiesis-local`` elsewhere runs them. Paths are
made absolute: a flow run's working directory is not the deploying shell's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEPLOYMENTS = ("pull-telemetry/pull-telemetry", "evolve/evolve", "promote/promote")
WORK_POOL = "autopoiesis-local"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Spec:
    description: str
    tags: tuple[str, ...]


SPECS = {
    "pull-telemetry": Spec(
        "Pull telemetry past the watermark; evolve on drift or SLO regression.",
        ("autopoiesis", "control-plane"),
    ),
    "evolve": Spec(
        "Evolve a challenger on the latest window (nightly and on trigger).",
        ("autopoiesis", "control-plane", "gpu"),
    ),
    "promote": Spec(
        "Paired held-back comparison; promote, swap live, watch, roll back.",
        ("autopoiesis", "control-plane"),
    ),
}
"""What the Prefect UI shows of each deployment; ``prefect.yaml`` says the same."""


def deployments(
    telemetry_dir: str,
    state_dir: str,
    pull_every_s: int = 300,
    nightly_cron: str = "0 3 * * *",
    tracking_uri: str | None = None,
) -> list[Any]:
    from prefect.types.entrypoint import EntrypointType

    from flows.prefect_flows import evolve, promote, pull_telemetry

    common = {"state_dir": str(Path(state_dir).resolve()), "tracking_uri": tracking_uri}
    telemetry = str(Path(telemetry_dir).resolve())

    def spec(name: str) -> dict[str, Any]:
        # By module path: a worker's flow run starts in a temporary directory, where the
        # file path `flows/prefect_flows.py` means nothing; the installed module does.
        return {
            "name": name,
            "description": SPECS[name].description,
            "tags": list(SPECS[name].tags),
            "entrypoint_type": EntrypointType.MODULE_PATH,
        }

    return [
        pull_telemetry.to_deployment(
            interval=pull_every_s,
            parameters={"telemetry_dir": telemetry, "chain": "deployment", **common},
            **spec("pull-telemetry"),
        ),
        evolve.to_deployment(
            cron=nightly_cron,
            parameters={"chain": "deployment", **common},
            **spec("evolve"),
        ),
        promote.to_deployment(parameters=common, **spec("promote")),
    ]


def ensure_pool(name: str = WORK_POOL) -> None:
    """A ``process`` work pool named ``name`` with Prefect's default job template."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    pool = WorkPoolCreate(
        name=name,
        type="process",
        base_job_template=ProcessWorker.get_default_base_job_template(),
        description="Autopoiesis control-plane flows as subprocesses of a local worker "
        "(`autopoiesis deploy`).",
    )
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(work_pool=pool)


def apply(deps: list[Any], pool: str = WORK_POOL) -> list[str]:
    ensure_pool(pool)
    return [str(d.apply(work_pool_name=pool)) for d in deps]


def serve(deps: list[Any], pool: str = WORK_POOL) -> None:
    """Register ``deps`` on ``pool`` and run a process worker for it until interrupted."""
    import asyncio

    from prefect.workers.process import ProcessWorker

    apply(deps, pool)

    async def work() -> None:
        async with ProcessWorker(work_pool_name=pool, name=f"{pool}-worker") as worker:
            await worker.start()

    asyncio.run(work())
