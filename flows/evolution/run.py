"""One entry point for an evolution: ``run_evolution``, what the CLI and the Prefect flow call.

It opens the run folder, builds the evaluator for the chosen fan-out and the
proposers for the configuration, runs the loop, and closes everything it opened:

- ``fanout="local"``: the in-process sandbox pool (``cascade.Cascade``);
- ``"prefect"``: each evaluation a Prefect task (``fanout.TaskCascade``) on the
  enclosing flow's task runner (call it from inside a flow), or, given ``flow_name``,
  in a flow run of its own on a thread pool of ``cfg.parallel`` (``autopoiesis evolve``
  runs as flow ``evolve``, named after its run directory, beside the deployment's runs);
- ``"dask"``: the same tasks on a Dask cluster (``dask_address``, or a local
  cluster of ``dask_workers``), the loop running in a subflow with that runner.

Proposers: the LLM first when an endpoint is configured (``llm_proposer``), then
search: structural search over kit compositions (``structure``) and Optuna tuning of
archived policies' constants (``search``) in a ``proposals.Mix``; ``proposers=``
replaces that list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flows.evolution.cascade import Cascade
from flows.evolution.config import EvolutionConfig
from flows.evolution.journal import Journal
from flows.evolution.loop import Evolution, Progress
from flows.evolution.proposals import Mix, Proposer
from flows.evolution.rundir import EvolutionError, RunDir
from flows.evolution.search import TuningProposer
from flows.evolution.structure import StructureProposer
from flows.evolution.tracking import Tracker

FANOUTS = ("local", "prefect", "dask")


def default_proposers(cfg: EvolutionConfig, journal: Journal) -> list[Proposer]:
    """The LLM (when configured) ahead of search, which takes every slot it leaves:
    structural search and Optuna tuning sharing them by ``cfg.structure_share``."""
    out: list[Proposer] = []
    if cfg.llm.enabled:
        from flows.evolution.llm_proposer import LLMProposer

        out.append(LLMProposer(cfg, journal))
    share = cfg.structure_share
    if share == 0:
        out.append(TuningProposer())
    elif share == 1:
        out.append(StructureProposer(cfg.seed))
    else:
        out.append(Mix([(StructureProposer(cfg.seed), share), (TuningProposer(), 1 - share)]))
    return out


def evaluator_for(cfg: EvolutionConfig, journal: Journal, fanout: str) -> Cascade:
    if fanout == "local":
        return Cascade(cfg, journal)
    if fanout in ("prefect", "dask"):
        from flows.fanout import TaskCascade

        return TaskCascade(cfg, journal)
    raise EvolutionError(f"unknown fan-out {fanout!r}; known: {', '.join(FANOUTS)}")


def open_evolution(
    cfg: EvolutionConfig,
    run_dir: Path,
    *,
    fanout: str = "local",
    tracker: Tracker | None = None,
    champion: tuple[str, str] | None = None,
    progress: Progress | None = None,
    fresh: bool = False,
    proposers: Callable[[EvolutionConfig, Journal], Sequence[Proposer]] = default_proposers,
) -> Evolution:
    """The loop, assembled and ready to ``run()`` (the caller closes it)."""
    run = RunDir(cfg, run_dir, fresh=fresh)
    evaluator = props = None
    try:
        evaluator = evaluator_for(cfg, run.journal, fanout)
        props = list(proposers(cfg, run.journal))
        return Evolution(
            cfg, run, evaluator, props, tracker=tracker, champion=champion, progress=progress
        )
    except BaseException:
        for p in props or []:
            p.close()
        if evaluator is not None:
            evaluator.close()
        run.close()
        raise


def run_evolution(
    cfg: EvolutionConfig,
    run_dir: Path,
    *,
    fanout: str = "local",
    dask_address: str | None = None,
    dask_workers: int = 2,
    flow_name: str | None = None,
    on_open: Callable[[Evolution], None] = lambda evo: None,
    **kw: Any,
) -> dict[str, Any]:
    """Open, run and close one evolution; returns its summary (``Evolution.run``).

    ``kw``: ``tracker``, ``champion``, ``progress``, ``fresh``, ``proposers`` (see
    ``open_evolution``). ``flow_name``: run as a Prefect flow run of that name (not
    with ``fanout="local"``). ``on_open`` sees the loop before it runs (the CLI says whether
    it resumes).
    """
    evo = open_evolution(cfg, run_dir, fanout=fanout, **kw)
    try:
        on_open(evo)
        if fanout == "local" or (fanout == "prefect" and flow_name is None):
            return evo.run()
        from flows.fanout import run_on, task_runner

        runner = (
            task_runner("dask", dask_address=dask_address, dask_workers=dask_workers)
            if fanout == "dask"
            else task_runner("threads", threads=cfg.parallel)
        )
        return run_on(
            runner, evo.run, flow_name=flow_name, run_name=Path(run_dir).name if flow_name else None
        )
    finally:
        evo.close()
        if fanout != "local":
            from flows.fanout import close_evaluators

            close_evaluators()
