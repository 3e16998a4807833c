"""``autopoiesis bench compare``, ``capacity``, ``headroom``, ``evolution``: honest measures.

Registered with every other ``bench`` subcommand in ``flows/cli/bench.py``. Every
figure is on a named split (``test`` by default: stretches evolution never sees) and
against every baseline, never against a seed policy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.cli.evolve import LlmCompose
from flows.cli.output import JsonOut, console, fail, funnel_table, progress, write_json

if TYPE_CHECKING:
    from sandbox.compare import ScenarioComparison
    from sandbox.headroom import Headroom

SplitOpt = Annotated[str, typer.Option(help="train, or test (stretches evolution never sees).")]
SeedsOpt = Annotated[str, typer.Option(help="Comma-separated seeds (each a trace stretch).")]
ScaleOpt = Annotated[float, typer.Option(help="Scenario scale (1 = full size).")]
BaselinesOpt = Annotated[
    str | None, typer.Option(help="Comma-separated baselines to compare with; default all.")
]


def _baselines(text: str | None) -> tuple[str, ...]:
    from serving.policy_loader import BUILTIN_POLICIES

    if not text:
        return BUILTIN_POLICIES
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in BUILTIN_POLICIES]
    if unknown or not names:
        fail(
            f"--baselines: unknown {', '.join(unknown) or '(none given)'}; "
            f"known: {', '.join(BUILTIN_POLICIES)}"
        )
    return names


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        fail(f"--seeds must be comma-separated integers, not {text!r}")
    if not seeds:
        fail("--seeds names no seed")
    return seeds


def _policy_source(spec: str) -> tuple[str, str]:
    """(name, source) of a baseline's name or a policy file."""
    from serving.policy_loader import BUILTIN_POLICIES, builtin_source

    if spec in BUILTIN_POLICIES:
        return spec, builtin_source(spec)
    path = Path(spec)
    if not path.is_file():
        fail(f"policy '{spec}' is neither a baseline ({', '.join(BUILTIN_POLICIES)}) nor a file")
    return path.name, path.read_text(encoding="utf-8")


def _label(name: str) -> str:
    return name.replace(":oracle", " (oracle)")


def _ratio(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3f}"


def bench_compare(
    policy: Annotated[str, typer.Option(help="Policy file, or a baseline's name.")],
    scenarios: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    objective: Annotated[str, typer.Option(help="slo, capacity or cost.")] = "slo",
    split: SplitOpt = "test",
    seeds: SeedsOpt = "0,1,2",
    scale: ScaleOpt = 1.0,
    baselines: BaselinesOpt = None,
    backend: Annotated[str, typer.Option(help="Sandbox: process or docker.")] = "process",
    json_out: JsonOut = None,
) -> None:
    """A policy against the best of every baseline, per scenario (test split by default)."""
    from sandbox.backends import SandboxUnavailable
    from sandbox.compare import Setting, compare_to_baselines
    from sandbox.compare import sandboxed as make_sandbox
    from sandbox.objectives import Objective
    from sandbox.scenarios import SCENARIO_NAMES

    name, source = _policy_source(policy)
    names = tuple(n.strip() for n in scenarios.split(",")) if scenarios else SCENARIO_NAMES
    try:
        setting = Setting(names, _seeds(seeds), scale, split, Objective(objective))
        evaluate, owned = make_sandbox(backend)
        try:
            with console.status(f"{name} and every baseline on {len(names)} scenarios"):
                c = compare_to_baselines(
                    source, setting, name=name, baselines=_baselines(baselines), evaluate=evaluate
                )
        finally:
            owned.close()
    except (ValueError, SandboxUnavailable) as exc:
        fail(str(exc))
    grid = Table(title=f"{name} vs the best baseline ({objective}, {split} split, seeds {seeds})")
    for col in ("scenario", name, "best baseline", "ratio"):
        grid.add_column(col, justify="left" if col == "scenario" else "right")
    for row in c.scenarios:
        mine = "rejected" if row.policy.rejection else f"{row.policy.objective:.3f}"
        best = f"{row.best_baseline:.3f} {row.best_baseline_name}"
        style = "" if row.ratio >= 1 else "[red]"
        grid.add_row(row.scenario, mine, best, f"{style}{_ratio(row.ratio)}")
    console.print(grid)
    console.print(f"mean ratio {_ratio(c.mean_ratio)}, min ratio {_ratio(c.min_ratio)}")
    write_json(json_out, c.to_dict())


def bench_capacity(
    policy: Annotated[str, typer.Option(help="Policy file, or a baseline's name.")],
    scenario: Annotated[str, typer.Option(help="A named scenario (or window:<sha>:<variant>).")],
    target: Annotated[float, typer.Option(help="SLO attainment to keep.")] = 0.90,
    split: SplitOpt = "test",
    seeds: SeedsOpt = "0",
    scale: ScaleOpt = 1.0,
    baselines: BaselinesOpt = None,
    backend: Annotated[str, typer.Option(help="Sandbox for a policy file: process, docker.")] = (
        "process"
    ),
    json_out: JsonOut = None,
) -> None:
    """SLO capacity: the highest rate at which a policy keeps attainment >= target.

    Bisection on the scenario's rate (bursts and events kept), against every baseline;
    the policy runs in the sandbox unless it is a baseline.
    """
    from sandbox.backends import SandboxUnavailable
    from sandbox.compare import Setting, compare_to_baselines, evaluate_baselines, in_process
    from sandbox.compare import sandboxed as make_sandbox
    from sandbox.objectives import Objective
    from serving.policy_loader import BUILTIN_POLICIES

    name, source = _policy_source(policy)
    try:
        setting = Setting((scenario,), _seeds(seeds), scale, split, Objective("capacity", target))
        chosen = _baselines(baselines)
        with console.status(f"capacity of the {len(chosen)} baselines on {scenario}"):
            table = evaluate_baselines(setting, chosen, evaluate=in_process)
        evaluate, owned = (in_process, None) if name in BUILTIN_POLICIES else make_sandbox(backend)
        try:
            with console.status(f"capacity of {name}"):
                comparison = compare_to_baselines(
                    source,
                    setting,
                    name=name,
                    baselines=chosen,
                    evaluate=evaluate,
                    baseline_table=table,
                )
        finally:
            if owned is not None:
                owned.close()
    except (ValueError, SandboxUnavailable) as exc:
        fail(str(exc))
    row = comparison.scenarios[0]
    console.print(_capacity_grid(name, row, scenario, split, target))
    console.print(
        f"{name}: {row.policy.objective:.3f}x the scenario's rate; best baseline "
        f"{row.best_baseline_name} {row.best_baseline:.3f}x; ratio {_ratio(row.ratio)}",
        highlight=False,
    )
    write_json(json_out, comparison.to_dict())


def _capacity_grid(
    name: str, row: ScenarioComparison, scenario: str, split: str, target: float
) -> Table:
    """The policy, then every baseline by capacity: x rate, req/s, attainment at 1x."""
    grid = Table(title=f"SLO capacity on {scenario} ({split} split, attainment >= {target:g})")
    for col in ("policy", "x rate", "req/s", "attainment at 1x"):
        grid.add_column(col, justify="left" if col == "policy" else "right")
    ranked = sorted(row.baselines.items(), key=lambda kv: -kv[1].objective)
    for label, entry in [(f"[bold]{name}[/]", row.policy), *ranked]:
        if entry.rejection:
            grid.add_row(label, "rejected", entry.rejection[:60], "")
            continue
        grid.add_row(
            label,
            f"{entry.objective:.3f}",
            f"{entry.metrics.get('capacity_rps', math.nan):.2f}",
            f"{entry.metrics.get('slo_attainment', math.nan):.3f}",
        )
    return grid


def bench_headroom(
    scenarios: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    split: SplitOpt = "test",
    seeds: SeedsOpt = "0",
    scale: ScaleOpt = 1.0,
    target: Annotated[float, typer.Option(help="Capacity: SLO attainment to keep.")] = 0.90,
    capacity: Annotated[bool, typer.Option(help="Also search capacities (slower).")] = True,
    json_out: JsonOut = None,
) -> None:
    """Per scenario: the best baseline, a clairvoyant reference and a no-contention bound."""
    from sandbox.headroom import headroom
    from sandbox.scenarios import SCENARIO_NAMES

    names = [n.strip() for n in scenarios.split(",")] if scenarios else list(SCENARIO_NAMES)
    seed_list = _seeds(seeds)
    rows = []
    try:
        with progress() as bar:
            task = bar.add_task("headroom", total=len(names))
            for name in names:
                rows.append(
                    headroom(
                        name,
                        seeds=seed_list,
                        scale=scale,
                        split=split,
                        target=target,
                        capacity=capacity,
                        progress=lambda what: bar.update(task, description=what),
                    )
                )
                bar.update(task, advance=1)
    except ValueError as exc:
        fail(str(exc))
    console.print(_headroom_grid(rows, f"Headroom ({split} split, seeds {seeds}, scale {scale:g})"))
    write_json(
        json_out,
        {
            "split": split,
            "seeds": list(seed_list),
            "scale": scale,
            "target": target,
            "scenarios": [h.to_dict() for h in rows],
        },
    )


def _headroom_grid(rows: list[Headroom], title: str) -> Table:
    """Per scenario: the best baseline, the clairvoyant reference, the bound, capacities."""
    grid = Table(title=title)
    for col in (
        "scenario",
        "best baseline",
        "clairvoyant",
        "no contention",
        "capacity: best baseline",
        "capacity: clairvoyant",
    ):
        grid.add_column(col, justify="left" if col == "scenario" else "right")
    for h in rows:
        bc, cc = h.best_baseline_capacity, h.clairvoyant_capacity
        grid.add_row(
            h.scenario,
            f"{h.best_baseline.value:.3f} {h.best_baseline.name}",
            f"{h.clairvoyant.value:.3f} {_label(h.clairvoyant.name)}",
            f"{h.no_contention:.3f}",
            "-" if bc is None else f"{bc.value:.2f}x {bc.name}",
            "-" if cc is None else f"{cc.value:.2f}x {_label(cc.name)}",
        )
    return grid


# Long for its options: typer reads the command line from this signature.
def bench_evolution(
    scenarios: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    objective: Annotated[str, typer.Option(help="slo, capacity or cost.")] = "capacity",
    budget_wall: Annotated[
        float, typer.Option(help="Seconds of evolution per scenario (stops at a generation end).")
    ] = 300.0,
    population: Annotated[int, typer.Option(help="Slots per generation.")] = 2,
    tune_trials: Annotated[int, typer.Option(help="Evaluations per slot.")] = 8,
    structure_share: Annotated[
        float, typer.Option(help="Share of search slots for structural search (0: tuning only).")
    ] = 0.75,
    train_seeds: Annotated[str, typer.Option(help="Train stretches evolution scores on.")] = "0",
    test_seeds: Annotated[str, typer.Option(help="Test stretches the champion is judged on.")] = (
        "0,1,2"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the evolutions' random choices.")] = 0,
    llm: Annotated[
        str, typer.Option(help="none (search only), local (serve-local's URL), or a base URL.")
    ] = "none",
    model: Annotated[str | None, typer.Option(help="LLM model name(s).")] = None,
    llm_compose: LlmCompose = None,
    headroom: Annotated[
        bool, typer.Option(help="Also compute each scenario's clairvoyant reference (slower).")
    ] = False,
    backend: Annotated[str, typer.Option(help="Sandbox: process, docker or auto.")] = "process",
    parallel: Annotated[int, typer.Option(help="Sandboxes at once.")] = 2,
    mlflow: Annotated[bool, typer.Option(help="Log the figures and plot to MLflow.")] = True,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    json_out: JsonOut = None,
) -> None:
    """Evolve on each scenario's train stretch; judge the champion on its test stretches
    against the best baseline there (the reference is never the seed)."""
    from flows.bench.evolution import EvolutionBench, bench_evolution, log_to_mlflow
    from flows.cli.control import quiet_defaults
    from flows.evolution.llm_local import llm_config
    from sandbox.objectives import Objective
    from sandbox.scenarios import SCENARIO_NAMES

    names = tuple(n.strip() for n in scenarios.split(",")) if scenarios else SCENARIO_NAMES
    unknown = [n for n in names if n not in SCENARIO_NAMES]
    if unknown:
        fail(f"--scenarios: unknown {', '.join(unknown)}; known: {', '.join(SCENARIO_NAMES)}")
    try:
        bench = EvolutionBench(
            scenarios=names, objective=Objective(objective), budget_wall_s=budget_wall,
            population=population, tune_trials=tune_trials, structure_share=structure_share,
            train_seeds=_seeds(train_seeds), test_seeds=_seeds(test_seeds), seed=seed,
            parallel=parallel, backend=backend, headroom=headroom,
            llm=llm_config(llm, model, llm_compose, timeout_s=300.0),  # evolve's default
        )  # fmt: skip
    except ValueError as e:
        fail(str(e))
    quiet_defaults()
    with progress() as bar:
        task = bar.add_task("bench evolution", total=None)
        out = bench_evolution(bench, progress=lambda m: (
            bar.update(task, description=m), bar.console.print(m, highlight=False)))  # fmt: skip
    _print_evolution(out)
    if mlflow:
        console.print(f"MLflow run: {log_to_mlflow(out, tracking_uri)}")
    write_json(json_out, out)


def _print_evolution(out: dict) -> None:
    grid = Table(title=f"Evolved champion vs best baseline, test stretches "
                       f"({out['config']['objective']['name']})")  # fmt: skip
    for col in ("scenario", "champion", "best baseline", "ratio", "capacity ratio", "origin"):
        grid.add_column(col, justify="left" if col in ("scenario", "origin") else "right")
    for r in out["scenarios"]:
        grid.add_row(r["name"], f"{r['champion']:.3f}",
                     f"{r['best_baseline']:.3f} {r['best_baseline_name']}", _ratio(r["ratio"]),
                     _ratio(r["capacity_ratio"]), r["best_origin"])  # fmt: skip
    console.print(grid)
    console.print(
        f"mean ratio {_ratio(out['mean_ratio'])}, min {_ratio(out['min_ratio'])}; capacity "
        f"mean {_ratio(out['mean_capacity_ratio'])}, min {_ratio(out['min_capacity_ratio'])}; "
        f"{out['wins']} wins, {out['losses']} losses; "
        f"{out['evaluations_per_hour']:.0f} evaluations/hour",
        highlight=False,
    )
    kinds = {"llm": out["llm"], "llm (compose)": out["llm_compose"], **out["proposers"]}
    console.print(funnel_table(kinds))
