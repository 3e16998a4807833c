"""``autopoiesis simulate``, ``scenarios``, ``evaluate`` and ``sandbox selftest``.

Scoring one policy: in the simulator directly (a trusted baseline or file), or inside
the sandbox that every untrusted, LLM-written candidate goes through.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.cli.output import JsonOut, console, fail, fmt, progress, write_json

if TYPE_CHECKING:
    from sandbox.scenario_spec import Scenario
    from serving.policy_loader import LoadedPolicy

sandbox_app = typer.Typer(help="The evaluation sandbox for untrusted, LLM-written policies.")
Backend = Annotated[
    str, typer.Option(help="docker, process (bubblewrap), or auto (docker when it answers).")
]


def load_policy(spec: str) -> LoadedPolicy:
    """A baseline's name or a policy file, loaded in this process."""
    from serving.policy_loader import BUILTIN_POLICIES, builtin_policy, load_policy_file

    if spec in BUILTIN_POLICIES:
        return builtin_policy(spec)
    return load_policy_file(spec)


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
    from sandbox.simulator import PolicyFault
    from sandbox.simulator import simulate as run

    if (scenario is None) == (trace is None):
        fail("give exactly one of --scenario or --trace")
    if mode not in ("fast", "reference"):
        fail(f"--mode must be fast or reference, not {mode!r}")
    try:
        loaded = load_policy(policy)
        sc = _scenario_or_trace(scenario, trace, cluster, rate_scale, seed)
        with progress() as bar:
            task = bar.add_task(f"{sc.name} / {loaded.name}", total=len(sc.workload))
            result = run(
                sc,
                loaded,
                seed=seed,
                mode=mode,
                progress=lambda done, _n: bar.update(task, completed=done),
            )
    except PolicyFault as fault:
        fail(f"policy fault: {fault.reason}")
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    summary = result.summary()
    _print_simulation(f"{sc.name} under {loaded.name} ({mode})", summary,
                      len(sc.workload) / result.wall_s)  # fmt: skip
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


def _scenario_or_trace(
    scenario: str | None, trace: Path | None, cluster: str, rate_scale: float, seed: int
) -> Scenario:
    """``--scenario`` by name, or ``--trace`` replayed on ``--cluster`` at ``--rate-scale``."""
    from sandbox.scenario_spec import Scenario, parse_cluster
    from sandbox.scenarios import build_scenario
    from sandbox.traces import load_trace
    from sandbox.transforms import scale_rate

    if scenario is not None:
        return build_scenario(scenario, seed=seed)
    workload = scale_rate(load_trace(trace), rate_scale)
    return Scenario(trace.name, f"replay of {trace}", workload, parse_cluster(cluster))


def _print_simulation(title: str, summary: dict, requests_per_wall_s: float) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, fmt(value))
    table.add_row("simulated requests/s of wall", fmt(requests_per_wall_s))
    console.print(table)


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
        fail(f"unknown case {unknown[0]!r}; known: {', '.join(CASES_BY_NAME)}")
    try:
        with console.status(f"running the hostile suite on the {backend} backend"):
            report = run_selftest(backend, cases=case)
    except SandboxUnavailable as exc:
        fail(str(exc))
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
        fail(f"policy file '{policy}' not found")
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
        fail(str(exc))
    _print_evaluation(policy, backend, report)
    write_json(json_out, report)
    if report.get("rejection"):
        raise typer.Exit(1)


def _print_evaluation(policy: Path, backend: str, report: dict) -> None:
    """The rejection, or per scenario and seed the objective, attainment and TTFT p99."""
    if report.get("rejection"):
        rejection = report["rejection"]
        console.print(
            f"[red]rejected[/] at {rejection['stage']}: {rejection['reason']}", highlight=False
        )
        return
    table = Table(title=f"{policy.name} in the {report.get('backend', backend)} sandbox")
    for col in ("scenario", "seed", "objective", "slo_attainment", "ttft_p99_s"):
        table.add_column(col)
    for r in report["results"]:
        s = r["summary"]
        table.add_row(
            r["scenario"],
            str(r["seed"]),
            fmt(s["objective"]),
            fmt(s["slo_attainment"]),
            fmt(s["ttft_p99_s"]),
        )
    console.print(table)
    console.print(f"objective (mean): {fmt(report['objective'])}")
