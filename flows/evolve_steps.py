"""The steps of the ``evolve`` flow (``flows.prefect_flows.evolve``).

The flow's parameters as an evolution configuration, the registered champion as the
first parent, the evolution run in a folder of its own under ``<state_dir>/runs``,
and its outcome logged and recorded. The evolution itself is ``flows.evolution``;
it is imported when a step needs it, so importing the flows stays light.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from flows import links
from flows.control_state import ensure_dir, record_event
from flows.registry import CHAMPION, PolicyRegistry


def check_task_runner(task_runner: str) -> None:
    from flows.fanout import TASK_RUNNERS

    if task_runner not in TASK_RUNNERS:
        raise ValueError(f"unknown task runner {task_runner!r}; known: {', '.join(TASK_RUNNERS)}")


def confirm_stage(settings: dict[str, Any]) -> Any:
    """The replay stage's settings, given as a flow parameter (JSON), as a ConfirmStage."""
    from flows.evolution.config import ConfirmStage

    # A flow parameter arrives as JSON: name a mistyped key instead of a TypeError.
    known = {f.name for f in dataclasses.fields(ConfirmStage)}
    if unknown := sorted(set(settings) - known):
        raise ValueError(
            f"confirm: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return ConfirmStage(**{k: tuple(v) if k == "gpu_ids" else v for k, v in settings.items()})


def evolution_config(
    scenarios: list[str],
    wdir: str,
    *,
    generations: int,
    population: int,
    tune_trials: int,
    scale: float,
    llm_base_url: str | None,
    llm_model: str | None,
    llm_wait_s: float | None,
    backend: str,
    parallel: int,
    seed: int,
    seeds_policies: list[str] | None,
    confirm: dict[str, Any] | None,
) -> Any:
    """The flow's search: the quick suite on ``scenarios`` only, one island, no full suite."""
    from flows.evolution.config import EvolutionConfig, LLMConfig, Suite

    cfg = EvolutionConfig(
        quick=Suite(tuple(scenarios), (0,), scale, windows_dir=wdir),
        full=None,
        generations=generations,
        population=population,
        islands=1,
        tune_trials=tune_trials,
        backend=backend,
        parallel=parallel,
        seed=seed,
        llm=LLMConfig.from_env(llm_base_url, llm_model) if llm_base_url else LLMConfig(),
        llm_wait_s=llm_wait_s,
        confirm=confirm_stage(confirm or {}),
    )
    if seeds_policies:
        cfg = cfg.with_(seeds_policies=tuple(seeds_policies))
    return cfg


def champion_of(reg: PolicyRegistry) -> tuple[str, str] | None:
    """(name, source) of the registered champion, the evolution's first parent; None yet."""
    if reg.version_of(CHAMPION) is None:
        return None
    p = reg.fetch(CHAMPION)
    return p.name, p.source


def run_here(
    cfg: Any,
    state_dir: str,
    tracking_uri: str | None,
    task_runner: str,
    dask_address: str | None,
    dask_workers: int,
) -> dict[str, Any]:
    """The evolution from the registered champion, in a fresh folder under
    ``<state_dir>/runs``; its summary."""
    from flows.evolution.run import run_evolution
    from flows.evolution.tracking import Tracker

    champ = champion_of(PolicyRegistry(tracking_uri))
    # Named after the flow run, so the evolution's MLflow run reads like it.
    run_name = (links.current_flow_run() or {}).get("name", "evolve")
    runs = ensure_dir(Path(state_dir) / "runs")
    run_dir = Path(tempfile.mkdtemp(prefix=f"{run_name}-", dir=runs))
    # Evaluations fan out as Prefect tasks: on this flow's runner, or on a Dask cluster.
    return run_evolution(
        cfg,
        run_dir,
        fanout="prefect" if task_runner == "threads" else task_runner,
        dask_address=dask_address,
        dask_workers=dask_workers,
        tracker=Tracker(tracking_uri),
        champion=champ,
    )


def report(summary: dict[str, Any], state_dir: str, scenarios: list[str], log: Any) -> None:
    """The evolution's outcome in the flow's log and the control plane's events."""
    log.info(
        "evolution: seed %s %.4f -> best %s %.4f; %s",
        summary["seed_policy"],
        summary["seed_objective"],
        summary["best_candidate"],
        summary["best_objective"],
        f"registered version {summary['registered_version']} as challenger"
        if summary["registered_version"] is not None
        else "nothing registered: no candidate qualified as challenger",
    )
    record_event(
        state_dir,
        "evolved",
        version=summary["registered_version"],
        best=summary["best_objective"],
        seed=summary["seed_objective"],
        scenarios=scenarios,
    )
