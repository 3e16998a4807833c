"""The ``autopoiesis`` command."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli_output import console, write_json
from flows.cli_output import fail as _fail
from flows.cli_output import progress as _progress

app = typer.Typer(help="Autopoiesis: LLM serving policies as living code.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks, each printed as a table and optionally saved as JSON.")
app.add_typer(bench_app, name="bench")

JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")]


def _load_policy(spec: str):
    from serving.policy_loader import BUILTIN_POLICIES, builtin_policy, load_policy_file

    if spec in BUILTIN_POLICIES:
        return builtin_policy(spec)
    return load_policy_file(spec)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


@app.command()
def simulate(
    policy: Annotated[str, typer.Option(help="Policy file, or a baseline's name.")],
    scenario: Annotated[str | None, typer.Option(help="A named scenario.")] = None,
    trace: Annotated[Path | None, typer.Option(help="Any supported trace file.")] = None,
    cluster: Annotated[
        str,
        typer.Option(
            help="With --trace: MODEL@COUNTxGPU,COUNTxGPU,... (append /tpK for tensor "
            "parallel), e.g. llama-3-8b@4xH100,2xA100 or llama-3-70b@2xH100/tp4"
        ),
    ] = "llama-3-8b@4xH100",
    rate_scale: Annotated[
        float, typer.Option(help="With --trace: multiply the arrival rate.")
    ] = 1.0,
    mode: Annotated[str, typer.Option(help="fast, or the token-by-token reference.")] = "fast",
    seed: int = 0,
    json_out: JsonOut = None,
) -> None:
    """Replay a scenario or a trace under one policy."""
    from sandbox.scenario_spec import Scenario, parse_cluster
    from sandbox.scenarios import build_scenario
    from sandbox.simulator import PolicyFault
    from sandbox.simulator import simulate as run
    from sandbox.traces import load_trace
    from sandbox.transforms import scale_rate

    if (scenario is None) == (trace is None):
        _fail("give exactly one of --scenario or --trace")
    if mode not in ("fast", "reference"):
        _fail(f"--mode must be fast or reference, not {mode!r}")
    try:
        loaded = _load_policy(policy)
        if scenario is not None:
            sc = build_scenario(scenario, seed=seed)
        else:
            workload = scale_rate(load_trace(trace), rate_scale)
            sc = Scenario(trace.name, f"replay of {trace}", workload, parse_cluster(cluster))
        with _progress() as bar:
            task = bar.add_task(f"{sc.name} / {loaded.name}", total=len(sc.workload))
            result = run(
                sc,
                loaded,
                seed=seed,
                mode=mode,
                progress=lambda done, _n: bar.update(task, completed=done),
            )
    except PolicyFault as fault:
        _fail(f"policy fault: {fault.reason}")
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    summary = result.summary()
    table = Table(title=f"{sc.name} under {loaded.name} ({mode})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, _fmt(value))
    table.add_row("simulated requests/s of wall", _fmt(len(sc.workload) / result.wall_s))
    console.print(table)
    write_json(
        json_out,
        {
            "scenario": sc.name,
            "policy": loaded.name,
            "sha256": loaded.sha256,
            "mode": mode,
            "seed": seed,
            "summary": summary,
            "decisions": result.decision_stats(),
            "wall_s": result.wall_s,
        },
    )


@app.command()
def scenarios() -> None:
    """List the named scenarios."""
    from sandbox.scenarios import SCENARIO_NAMES, build_scenario

    table = Table(title="Scenarios")
    for col in ("name", "requests", "seconds", "cluster", "description"):
        table.add_column(col)
    for name in SCENARIO_NAMES:
        sc = build_scenario(name)
        pool = ", ".join(f"{n}x{g}" for g, n in sc.cluster.gpus.items())
        table.add_row(
            name,
            str(len(sc.workload)),
            f"{sc.workload.duration_s:.0f}",
            f"{sc.cluster.model} on {pool}",
            sc.description,
        )
    console.print(table)


@bench_app.command("baselines")
def bench_baselines(
    scenarios: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    policies: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    scale: Annotated[float, typer.Option(help="Shrink scenarios for a quick look.")] = 1.0,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; metrics are means.")] = "0",
    split: Annotated[str, typer.Option(help="train, or test (held-out trace stretches).")] = (
        "train"
    ),
    json_out: JsonOut = None,
    plot: Annotated[Path | None, typer.Option(help="Save a heat map (PNG) here.")] = None,
) -> None:
    """Every baseline policy on every scenario; the best marked per scenario."""
    from sandbox.bench import TABLE_METRICS, plot_baselines
    from sandbox.bench import bench_baselines as run
    from sandbox.scenarios import SCENARIO_NAMES
    from serving.policy_loader import BUILTIN_POLICIES

    scenario_list = scenarios.split(",") if scenarios else list(SCENARIO_NAMES)
    policy_list = policies.split(",") if policies else list(BUILTIN_POLICIES)
    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        _fail(f"--seeds must be comma-separated integers, not {seeds!r}")
    try:
        with _progress() as bar:
            task = bar.add_task("simulating", total=len(scenario_list) * len(policy_list))
            table = run(
                scenario_list,
                policy_list,
                seeds=seed_list,
                scale=scale,
                split=split,
                on_result=lambda what: bar.update(task, advance=1, description=what),
            )
    except ValueError as exc:
        _fail(str(exc))
    grid = Table(
        title=f"SLO attainment, {split} split, mean over seeds {seeds}; "
        "★ = best objective per scenario"
    )
    grid.add_column("policy")
    for name in scenario_list:
        grid.add_column(name, justify="right")
    for policy_name in policy_list:
        cells = []
        for name in scenario_list:
            row = table[(table.policy == policy_name) & (table.scenario == name)].iloc[0]
            cell = "fault" if row["fault"] else f"{row['slo_attainment']:.3f}"
            cells.append(f"[bold green]{cell} ★[/]" if row["best"] else cell)
        grid.add_row(policy_name, *cells)
    console.print(grid)
    console.print(f"simulated {len(table)} runs in {table['wall_s'].sum():.1f} s of wall time")
    write_json(
        json_out,
        {
            "seeds": list(seed_list),
            "scale": scale,
            "split": split,
            "metrics": list(TABLE_METRICS),
            "rows": table.to_dict(orient="records"),
        },
    )
    if plot is not None:
        console.print(f"wrote {plot_baselines(table, plot)}")


@bench_app.command("simulator")
def bench_simulator(
    json_out: JsonOut = None,
    repeats: Annotated[int, typer.Option(help="Alternating runs of each mode.")] = 3,
) -> None:
    """Fast mode against the token-by-token reference on the standard scenario."""
    from sandbox.bench import bench_simulator as run

    with console.status(f"running both modes {repeats}x on the standard scenario"):
        result = run(repeats=repeats)
    table = Table(title=f"Simulator: {result['scenario']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if not isinstance(value, dict | list):
            table.add_row(key, _fmt(value))
    console.print(table)
    write_json(json_out, result)


@bench_app.command("route")
def bench_route(
    policies: Annotated[
        str | None, typer.Option(help="Comma-separated baselines or policy files; default all.")
    ] = None,
    scenario: Annotated[str, typer.Option(help="Scenario the decisions are recorded on.")] = (
        "mixed-pool"
    ),
    calls: int = 3000,
    rounds: int = 7,
    json_out: JsonOut = None,
) -> None:
    """Cost of one route() call per policy, against the pre-kit hand-written loop."""
    from sandbox.bench_route import bench_route as run
    from serving.policy_loader import BUILTIN_POLICIES, PolicyError

    try:
        chosen = [_load_policy(p) for p in (policies.split(",") if policies else BUILTIN_POLICIES)]
        with _progress() as bar:
            task = bar.add_task("timing route()", total=rounds)
            result = run(chosen, scenario=scenario, calls=calls, rounds=rounds,
                         on_round=lambda _: bar.advance(task))  # fmt: skip
    except (PolicyError, KeyError, ValueError) as exc:
        _fail(str(exc))
    table = Table(title=f"route() on {result['calls']} decisions recorded on {scenario} "
                  f"({result['replicas_per_call']:.1f} replicas each)")  # fmt: skip
    table.add_column("policy")
    table.add_column("µs / call", justify="right")
    table.add_column("×", justify="right")
    table.add_column("bytecodes / call", justify="right")
    table.add_column("×", justify="right")
    for name, us in result["route_us"].items():
        ops = result["opcodes_per_call"][name]
        table.add_row(name, f"{us:.2f}", f"{result['ratio_to_reference'][name]:.2f}",
                      f"{ops:.0f}", f"{result['opcode_ratio_to_reference'][name]:.2f}")  # fmt: skip
    console.print("× = against the hand-written least_outstanding (the baseline before the kit)")
    console.print(table)
    write_json(json_out, result)


@bench_app.command("fidelity")
def bench_fidelity(json_out: JsonOut = None, seed: int = 0) -> None:
    """Step-time model against profile rows held out from its fit."""
    from sandbox.fidelity import fidelity_report

    try:
        report = fidelity_report(seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    table = Table(title="Step-time fidelity on held-out profile rows")
    for col in ("source", "rows", "MAPE"):
        table.add_column(col, justify="right" if col != "source" else "left")
    for name, figures in report["sources"].items():
        table.add_row(name, str(figures["rows"]), f"{figures['mape']:.2%}")
    table.add_row("[bold]overall[/]", str(report["rows"]), f"[bold]{report['mape']:.2%}[/]")
    console.print(table)
    write_json(json_out, report)


sandbox_app = typer.Typer(help="The evaluation sandbox for untrusted, LLM-written policies.")
app.add_typer(sandbox_app, name="sandbox")
Backend = Annotated[
    str, typer.Option(help="docker, process (bubblewrap), or auto (docker when it answers).")
]


@sandbox_app.command("selftest")
def sandbox_selftest(
    backend: Backend = "auto",
    case: Annotated[
        list[str] | None, typer.Option(help="Run only this case (repeatable); default: all.")
    ] = None,
    json_out: JsonOut = None,
) -> None:
    """Run the hostile-candidate suite; every case must end contained."""
    from sandbox.backends import SandboxUnavailable
    from sandbox.selftest import CASES_BY_NAME, run_selftest

    unknown = sorted(set(case or ()) - set(CASES_BY_NAME))
    if unknown:
        _fail(f"unknown case {unknown[0]!r}; known: {', '.join(CASES_BY_NAME)}")
    try:
        with console.status(f"running the hostile suite on the {backend} backend"):
            report = run_selftest(backend, cases=case)
    except SandboxUnavailable as exc:
        _fail(str(exc))
    console.print(f"isolation: {report['isolation']}", highlight=False)
    table = Table(title=f"Sandbox self-test ({report['backend']})")
    for col in ("case", "static checks", "ended as", "contained"):
        table.add_column(col)
    for o in report["outcomes"]:
        table.add_row(
            o["case"],
            "on" if o["static_checks"] else "off",
            f"{o['stage']}: {o['reason']}"[:90],
            "yes" if o["contained"] else f"[red]NO[/] {'; '.join(o['problems'])}",
        )
    console.print(table)
    console.print(
        f"contained {report['contained']}/{report['cases']}; sandbox overhead per "
        f"evaluation {report['mean_overhead_s']:.3f} s warm, "
        f"{report['cold_overhead_s']:.3f} s cold"
    )
    write_json(json_out, report)
    if report["contained"] != report["cases"]:
        raise typer.Exit(1)


@app.command()
def evaluate(
    policy: Annotated[Path, typer.Option(help="The candidate policy file.")],
    scenarios: Annotated[str, typer.Option(help="Comma-separated scenario names.")],
    backend: Backend = "auto",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    scale: Annotated[float, typer.Option(help="Shrink scenarios for a quick look.")] = 1.0,
    split: Annotated[str, typer.Option(help="train, or test (held-out trace stretches).")] = (
        "train"
    ),
    objective: Annotated[str, typer.Option(help="slo, capacity or cost.")] = "slo",
    json_out: JsonOut = None,
) -> None:
    """Score one policy file inside the sandbox."""
    from sandbox.backends import SandboxUnavailable
    from sandbox.objectives import Objective
    from sandbox.selftest import evaluate as run

    if not policy.is_file():
        _fail(f"policy file '{policy}' not found")
    try:
        report = run(
            policy,
            scenarios.split(","),
            backend,
            seeds=tuple(int(s) for s in seeds.split(",")),
            scale=scale,
            split=split,
            objective=Objective(objective),
        )
    except (SandboxUnavailable, OSError, ValueError) as exc:
        _fail(str(exc))
    if report.get("rejection"):
        rejection = report["rejection"]
        console.print(
            f"[red]rejected[/] at {rejection['stage']}: {rejection['reason']}", highlight=False
        )
    else:
        table = Table(title=f"{policy.name} in the {report.get('backend', backend)} sandbox")
        for col in ("scenario", "seed", "objective", "slo_attainment", "ttft_p99_s"):
            table.add_column(col)
        for r in report["results"]:
            s = r["summary"]
            table.add_row(
                r["scenario"],
                str(r["seed"]),
                _fmt(s["objective"]),
                _fmt(s["slo_attainment"]),
                _fmt(s["ttft_p99_s"]),
            )
        console.print(table)
        console.print(f"objective (mean): {_fmt(report['objective'])}")
    write_json(json_out, report)
    if report.get("rejection"):
        raise typer.Exit(1)


def main() -> None:
    app()


from flows.cli_serving import register as _register_serving  # noqa: E402

_register_serving(app, bench_app)


from flows.cli_evolve import register as _register_evolve  # noqa: E402

_register_evolve(app, bench_app)


from flows.cli_control import register as _register_control  # noqa: E402

_register_control(app)


from flows.cli_replay import register as _register_replay  # noqa: E402

_register_replay(app)


from flows.cli_measure import register as _register_measure  # noqa: E402

_register_measure(app, bench_app)
