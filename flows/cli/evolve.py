"""``autopoiesis evolve``: options to a config, the run as a Prefect flow, the report.

``evolve`` reads as its steps: the suites (``_suites``, or ``_trace_split`` with
``--trace``) and the config from the options, ``_run`` (``run_evolution`` with a rich
progress display) and ``_report`` (the summary; with ``--trace`` the held-out verdict).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress
from rich.table import Table

from flows.cli.output import console, fail, funnel_table, write_json
from flows.cli.output import progress as new_progress

if TYPE_CHECKING:
    from flows.evolution.config import ConfirmStage, EvolutionConfig, Suite
    from flows.evolution.loop import Progress as Hooks
    from flows.trace_holdout import TraceSplit
    from sandbox.objectives import Objective


# `evolve` and `bench evolution` take the same switch.
LlmCompose = Annotated[
    bool | None,
    typer.Option(
        "--llm-compose/--llm-edit",
        help="Where the parent is a kit composition, ask the LLM for one (JSON held to a "
        "schema) rather than for an edit of its code (default: compose with --llm local).",
    ),
]


def _rich_progress(progress: Progress) -> Hooks:
    from flows.evolution.loop import Progress as Hooks

    state: dict[str, int] = {}

    def start(generations: int, population: int) -> None:
        state["gen"] = progress.add_task("generations", total=generations + 1)
        state["cand"] = progress.add_task("candidates", total=None)

    def advance(what: str) -> None:
        progress.update(state["cand"], advance=1, description=f"candidates ({what})")

    def generation(gen: int, best: float) -> None:
        progress.update(state["gen"], advance=1, description=f"generation {gen}: best {best:.4f}")

    def report(row: dict) -> None:
        if row["generation"] > 0:
            kinds = " | ".join(
                f"{k}: {c['proposed']} proposed, {c['evaluated']} evaluated, "
                f"{c['improving']} improving"
                for k, c in row["kinds"].items()
            )
            progress.console.print(f"generation {row['generation']:.0f}: {kinds}", highlight=False)

    return Hooks(start=start, advance=advance, generation=generation, report=report)


# Long for its options: typer reads the command line from this signature.
def evolve(
    scenarios: Annotated[
        str | None, typer.Option(help="Quick suite: comma-separated scenario names.")
    ] = None,
    full_scenarios: Annotated[
        str | None,
        typer.Option(help="Full suite for the promising ('all', 'none', or names)."),
    ] = None,
    scale: Annotated[
        float,
        typer.Option(help="Scale of the quick suite (below 1 leaves the full suite's regime)."),
    ] = 1.0,
    full_scale: Annotated[float, typer.Option(help="Scale of the full suite.")] = 1.0,
    generations: Annotated[int, typer.Option(help="Generations after the seeds.")] = 4,
    population: Annotated[int, typer.Option(help="Candidates per generation.")] = 4,
    islands: Annotated[int, typer.Option(help="Archive islands.")] = 2,
    llm: Annotated[
        str, typer.Option(help="none (Optuna only), local (serve-local's URL), or a base URL.")
    ] = "none",
    model: Annotated[
        str | None, typer.Option(help="Model name(s), NAME[=weight],… (or AUTOPOIESIS_LLM_MODEL).")
    ] = None,
    budget_tokens: Annotated[int | None, typer.Option(help="Stop after this many tokens.")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="Stop after this much cost.")] = None,
    budget_wall: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    tune_trials: Annotated[int, typer.Option(help="Optuna trials per tuned candidate.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    champion: Annotated[
        str | None, typer.Option(help="Champion policy file or baseline (default: best seed).")
    ] = None,
    backend: Annotated[str, typer.Option(help="Sandbox: process, docker or auto.")] = "process",
    parallel: Annotated[int, typer.Option(help="Sandboxes at once.")] = 2,
    task_runner: Annotated[
        str,
        typer.Option(help="threads (in-process pool) or dask (Prefect tasks on a Dask cluster)."),
    ] = "threads",
    dask_address: Annotated[
        str | None, typer.Option(help="Dask scheduler (default: a local cluster).")
    ] = None,
    dask_workers: Annotated[int, typer.Option(help="Workers of the local Dask cluster.")] = 2,
    windows_dir: Annotated[
        Path | None, typer.Option(help="Window files for window:<sha>:<variant> scenarios.")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Journal folder; an existing one is resumed.")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Discard what run-dir holds.")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    llm_timeout: Annotated[float, typer.Option(help="Seconds per LLM call.")] = 300.0,
    max_tokens: Annotated[int, typer.Option(help="Completion cap per LLM call.")] = 2048,
    llm_wait: Annotated[
        float,
        typer.Option(help="Seconds a slot waits for the LLM before search takes it (0: never)."),
    ] = 0.0,
    llm_wait_always: Annotated[
        bool,
        typer.Option(help="Every slot waits for one LLM answer: reproducible, as slow as the LLM."),
    ] = False,
    llm_concurrency: Annotated[int, typer.Option(help="LLM requests in flight at once.")] = 1,
    llm_compose: LlmCompose = None,
    confirm_top_k: Annotated[
        int,
        typer.Option(
            help="Replay stage: confirm the best K challengers through the live router (0: off)."
        ),
    ] = 0,
    confirm_engines: Annotated[
        str, typer.Option(help="Replay stage engines: simulated, or engine URLs (comma-separated).")
    ] = "simulated",
    confirm_requests: Annotated[int, typer.Option(help="Replay stage: requests replayed.")] = 200,
    confirm_time_scale: Annotated[
        float, typer.Option(help="Replay stage, simulated engines: wall seconds per model second.")
    ] = 1.0,
    objective: Annotated[str, typer.Option(help="slo, capacity or cost (sandbox.objectives).")] = (
        "slo"
    ),
    target: Annotated[float, typer.Option(help="capacity: SLO attainment to keep.")] = 0.90,
    gpu_budget: Annotated[
        float, typer.Option(help="cost: GPU time allowed, as a share of the starting plan's.")
    ] = 0.75,
    trace: Annotated[
        Path | None,
        typer.Option(
            help="Evolve on the earlier part of this trace (any format), judge on the rest."
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(help="With --trace: MODEL@COUNTxGPU,... (default: H100s sized to the trace)."),
    ] = None,
    holdout: Annotated[float, typer.Option(help="With --trace: share held out.")] = 0.25,
    max_requests: Annotated[int | None, typer.Option(help="With --trace: its first N.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary here.")] = None,
) -> None:
    """Evolve routing policies in the sandbox; register the best as the MLflow challenger."""
    from flows.evolution.config import Budget, EvolutionConfig
    from flows.evolution.llm_local import llm_config

    if task_runner not in ("threads", "dask"):
        fail(f"unknown task runner {task_runner!r} (threads or dask)")
    chosen = _objective(objective, target, gpu_budget)
    run_dir = run_dir or Path("mlruns") / "evolution" / time.strftime("evo-%Y%m%d-%H%M%S")
    split = _trace_split(
        trace,
        cluster,
        holdout,
        max_requests,
        windows_dir or run_dir / "windows",
        scenarios or full_scenarios,
    )
    quick, full = _suites(split, scenarios, full_scenarios, scale, full_scale, windows_dir)
    confirm = _confirm_stage(confirm_top_k, confirm_engines, confirm_requests, confirm_time_scale)
    # The config: every option maps to one field (flows.evolution.config).
    cfg = EvolutionConfig(
        quick=quick, full=full, generations=generations, population=population, islands=islands,
        seed=seed, tune_trials=tune_trials, backend=backend, parallel=parallel,
        llm=llm_config(llm, model, llm_compose, timeout_s=llm_timeout, max_tokens=max_tokens),
        budget=Budget(tokens=budget_tokens, usd=budget_usd, wall_s=budget_wall),
        confirm=confirm,
        llm_wait_s=None if llm_wait_always else llm_wait, llm_concurrency=llm_concurrency,
        objective=chosen,
    )  # fmt: skip
    if llm == "local":
        # A 0.5B model on two shared CPU cores: prompt processing (20-100 tokens/s) dominates
        # and a small model is asked for a small edit of its parent, so the prompt carries
        # the parent alone, no other archived policy (about 2,200 tokens instead of 3,100).
        cfg = cfg.with_(prompt_top=0, prompt_diverse=0)
    summary = _run(cfg, run_dir, task_runner=task_runner, dask_address=dask_address,
                   dask_workers=dask_workers, tracking_uri=tracking_uri, champion=champion,
                   fresh=fresh)  # fmt: skip
    _report(summary, split, cfg, tracking_uri, json_out)


def _objective(objective: str, target: float, gpu_budget: float) -> Objective:
    from sandbox.objectives import Objective

    try:
        return Objective(objective, target=target, gpu_budget=gpu_budget)
    except ValueError as e:
        fail(f"--objective: {e}")


def _suites(
    split: TraceSplit | None,
    scenarios: str | None,
    full_scenarios: str | None,
    scale: float,
    full_scale: float,
    windows_dir: Path | None,
) -> tuple[Suite, Suite | None]:
    """The quick suite every candidate runs, and the full one for the promising (or none)."""
    from flows.evolution.config import FULL_SUITE, QUICK_SUITE, Suite
    from sandbox.scenarios import SCENARIO_NAMES

    def names(text: str) -> tuple[str, ...]:
        return tuple(n.strip() for n in text.split(",") if n.strip())

    wdir = str(windows_dir.resolve()) if windows_dir else None
    quick = (
        split.quick_suite(scale) if split
        else Suite(names(scenarios), (0,), scale, windows_dir=wdir) if scenarios
        else Suite(QUICK_SUITE.scenarios, QUICK_SUITE.seeds, scale)
    )  # fmt: skip
    if split or full_scenarios == "none":
        return quick, None
    if full_scenarios in (None, "all"):
        return quick, Suite(SCENARIO_NAMES, FULL_SUITE.seeds, full_scale)
    return quick, Suite(names(full_scenarios), FULL_SUITE.seeds, full_scale)


def _confirm_stage(top_k: int, engines: str, requests: int, time_scale: float) -> ConfirmStage:
    from flows.evolution.config import ConfirmStage

    try:
        return ConfirmStage(top_k=top_k, target=engines, requests=requests, time_scale=time_scale)
    except ValueError as e:
        fail(f"--confirm-engines: {e}")


def _run(
    cfg: EvolutionConfig,
    run_dir: Path,
    *,
    task_runner: str,
    dask_address: str | None,
    dask_workers: int,
    tracking_uri: str | None,
    champion: str | None,
    fresh: bool,
) -> dict:
    """The evolution, with its progress shown; its summary."""
    from flows.cli.control import quiet_defaults
    from flows.evolution.loop import Evolution, EvolutionError
    from flows.evolution.run import run_evolution
    from flows.evolution.tracking import Tracker
    from sandbox.backends import SandboxUnavailable

    progress = new_progress()

    def opened(evo: Evolution) -> None:
        console.print(f"run dir: {run_dir}{' (resuming)' if evo.resumed else ''}")

    # The run is a Prefect flow run (flow ``evolve``, named after the run directory) and
    # each evaluation a task on the thread pool or the Dask cluster: the Prefect UI lists
    # it beside the deployment's runs, linked to its MLflow run. Prefect's local API is
    # used unless PREFECT_API_URL names a server; its database is the one `prefect server
    # start` shows (PREFECT_HOME).
    quiet_defaults()
    try:
        with progress:
            return run_evolution(
                cfg, run_dir, fanout="dask" if task_runner == "dask" else "prefect",
                flow_name="evolve", dask_address=dask_address, dask_workers=dask_workers,
                on_open=opened, tracker=Tracker(tracking_uri), champion=_champion(champion),
                progress=_rich_progress(progress), fresh=fresh,
            )  # fmt: skip
    except (EvolutionError, SandboxUnavailable) as e:
        fail(str(e))


def _report(
    summary: dict,
    split: TraceSplit | None,
    cfg: EvolutionConfig,
    tracking_uri: str | None,
    json_out: Path | None,
) -> None:
    """The summary and funnel; with ``--trace`` the held-out verdict; ``--json``."""
    _print_summary(summary)
    if split:
        summary["holdout"] = _judge_holdout(split, summary, cfg, tracking_uri)
    write_json(json_out, summary)


def _champion(champion: str | None) -> tuple[str, str] | None:
    """``--champion``: a baseline's name or a policy file, as (name, source)."""
    if not champion:
        return None
    from serving.policy_loader import BUILTIN_POLICIES, builtin_source

    if champion in BUILTIN_POLICIES:
        return (champion, builtin_source(champion))
    return (Path(champion).stem, Path(champion).read_text("utf-8"))


def _print_summary(summary: dict) -> None:
    table = Table(title="Evolution")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        if not isinstance(v, list | dict):
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(funnel_table(summary["proposers"]))


def _trace_split(
    trace: Path | None,
    cluster: str | None,
    holdout: float,
    max_requests: int | None,
    windows_dir: Path,
    suites: str | None,
) -> TraceSplit | None:
    """``--trace``: the trace cut into train and test windows (``flows.trace_holdout``)."""
    if trace is None:
        if cluster or max_requests is not None:
            fail("--cluster and --max-requests go with --trace")
        return None
    if suites:
        fail("--trace makes the suite from the trace: drop --scenarios/--full-scenarios")
    from flows.trace_holdout import prepare

    try:
        split = prepare(
            trace, windows_dir, cluster=cluster, holdout=holdout, max_requests=max_requests
        )
    except ValueError as e:  # the trace's own errors name its file
        fail(str(e))
    console.print(
        f"trace {trace}: {split.train_requests} requests to evolve on, "
        f"{split.test_requests} held out ({holdout:.0%} of its span); cluster "
        f"{split.cluster}{'' if cluster else ' (sized to the trace)'}",
        highlight=False,
    )
    return split


def _judge_holdout(
    split: TraceSplit, summary: dict, cfg: EvolutionConfig, tracking_uri: str | None
) -> dict:
    """The run's best candidate and every baseline on the held-out window; printed, logged."""
    from flows.evolution.rundir import best_source
    from flows.trace_holdout import holdout_table, judge, record_holdout
    from sandbox.backends import SandboxUnavailable

    try:
        with console.status(
            f"best candidate and every baseline on {len(split.test_names)} held-out scenarios"
        ):
            report = judge(
                split,
                best_source(Path(summary["run_dir"])),
                cfg.objective,
                backend=cfg.backend,
                parallel=cfg.parallel,
            )
    except (ValueError, SandboxUnavailable) as e:
        fail(f"holdout: {e}")
    report["candidate"] = summary["best_candidate"]
    console.print(holdout_table(report))
    record_holdout(report, Path(summary["run_dir"]), summary.get("mlflow_run_id"), tracking_uri)
    return report
