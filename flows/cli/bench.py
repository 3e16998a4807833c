"""``autopoiesis bench …``: every benchmark, each printed as a table and optionally as JSON.

Every ``bench`` subcommand is registered at the bottom of this module, in help order.
The speed and fidelity benches are here; the measures of a policy or of evolution
against the best baseline (``compare``, ``capacity``, ``headroom``, ``evolution``) are
in ``flows/cli/measure.py``. What each one runs lives in ``sandbox/``, ``serving/`` or
``flows/`` (named in each command's imports).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.cli.evaluate import load_policy
from flows.cli.measure import bench_capacity, bench_compare, bench_evolution, bench_headroom
from flows.cli.output import JsonOut, console, fail, fmt, progress, write_json

if TYPE_CHECKING:
    import pandas as pd

bench_app = typer.Typer(help="Benchmarks, each printed as a table and optionally saved as JSON.")


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
    from flows.bench.baselines import TABLE_METRICS, plot_baselines
    from flows.bench.baselines import bench_baselines as run
    from sandbox.scenarios import SCENARIO_NAMES
    from serving.policy_loader import BUILTIN_POLICIES

    scenario_list = scenarios.split(",") if scenarios else list(SCENARIO_NAMES)
    policy_list = policies.split(",") if policies else list(BUILTIN_POLICIES)
    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        fail(f"--seeds must be comma-separated integers, not {seeds!r}")
    try:
        with progress() as bar:
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
        fail(str(exc))
    console.print(_baselines_grid(table, scenario_list, policy_list, split, seeds))
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


def _baselines_grid(
    table: pd.DataFrame, scenarios: list[str], policies: list[str], split: str, seeds: str
) -> Table:
    """SLO attainment per policy (rows) and scenario (columns), the best objective starred."""
    grid = Table(
        title=f"SLO attainment, {split} split, mean over seeds {seeds}; "
        "★ = best objective per scenario"
    )
    grid.add_column("policy")
    for name in scenarios:
        grid.add_column(name, justify="right")
    for policy_name in policies:
        cells = []
        for name in scenarios:
            row = table[(table.policy == policy_name) & (table.scenario == name)].iloc[0]
            cell = "fault" if row["fault"] else f"{row['slo_attainment']:.3f}"
            cells.append(f"[bold green]{cell} ★[/]" if row["best"] else cell)
        grid.add_row(policy_name, *cells)
    return grid


def bench_simulator(
    json_out: JsonOut = None,
    repeats: Annotated[int, typer.Option(help="Alternating runs of each mode.")] = 3,
) -> None:
    """Fast mode against the token-by-token reference on the standard scenario."""
    from flows.bench.baselines import bench_simulator as run

    with console.status(f"running both modes {repeats}x on the standard scenario"):
        result = run(repeats=repeats)
    table = Table(title=f"Simulator: {result['scenario']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if not isinstance(value, dict | list):
            table.add_row(key, fmt(value))
    console.print(table)
    write_json(json_out, result)


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
    from flows.bench.route import bench_route as run
    from serving.policy_loader import BUILTIN_POLICIES, PolicyError

    try:
        chosen = [load_policy(p) for p in (policies.split(",") if policies else BUILTIN_POLICIES)]
        with progress() as bar:
            task = bar.add_task("timing route()", total=rounds)
            result = run(
                chosen,
                scenario=scenario,
                calls=calls,
                rounds=rounds,
                on_round=lambda _: bar.advance(task),
            )
    except (PolicyError, KeyError, ValueError) as exc:
        fail(str(exc))
    table = Table(
        title=f"route() on {result['calls']} decisions recorded on {scenario} "
        f"({result['replicas_per_call']:.1f} replicas each)"
    )
    table.add_column("policy")
    table.add_column("µs / call", justify="right")
    table.add_column("×", justify="right")
    table.add_column("bytecodes / call", justify="right")
    table.add_column("×", justify="right")
    for name, us in result["route_us"].items():
        ops = result["opcodes_per_call"][name]
        table.add_row(
            name,
            f"{us:.2f}",
            f"{result['ratio_to_reference'][name]:.2f}",
            f"{ops:.0f}",
            f"{result['opcode_ratio_to_reference'][name]:.2f}",
        )
    console.print("× = against the hand-written least_outstanding (the baseline before the kit)")
    console.print(table)
    write_json(json_out, result)


def bench_fidelity(json_out: JsonOut = None, seed: int = 0) -> None:
    """Step-time model against profile rows held out from its fit."""
    from flows.bench.fidelity import fidelity_report

    try:
        report = fidelity_report(seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    table = Table(title="Step-time fidelity on held-out profile rows")
    for col in ("source", "rows", "MAPE"):
        table.add_column(col, justify="right" if col != "source" else "left")
    for name, figures in report["sources"].items():
        table.add_row(name, str(figures["rows"]), f"{figures['mape']:.2%}")
    table.add_row("[bold]overall[/]", str(report["rows"]), f"[bold]{report['mape']:.2%}[/]")
    console.print(table)
    write_json(json_out, report)


def bench_router(
    rates: Annotated[
        str, typer.Option(help="Comma-separated request rates.")
    ] = "50,100,200,500,1000",
    duration: Annotated[float, typer.Option(help="Seconds per rate and target.")] = 5.0,
    swap_duration: Annotated[
        float, typer.Option(help="Seconds of policy swaps under load; 0 skips them.")
    ] = 6.0,
    engines: Annotated[
        str,
        typer.Option(
            help="fake (instant engines) or llamacpp (real SmolLM2-135M on CPU: use low rates, "
            "e.g. --rates 0.5,1 --duration 60 --swap-duration 0)."
        ),
    ] = "fake",
    output_tokens: Annotated[int, typer.Option(help="Tokens per response.")] = 16,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length (~4 bytes a token).")] = 64,
    policy: Annotated[
        str,
        typer.Option(
            help="The router's policy. Direct load alternates between the engines: round_robin "
            "dispatches the same way, which real engines (seconds per request) need for a fair "
            "comparison."
        ),
    ] = "least_outstanding",
    rust_router: Annotated[
        str,
        typer.Option(help="vllm-router executable; 'auto' looks in .venv-bench; 'none' skips it."),
    ] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results.")] = None,
) -> None:
    """Added TTFT of the router over direct-to-engine at several rates, and swaps under load."""
    from flows.bench.router import BenchConfig, run

    if engines not in ("fake", "llamacpp"):
        fail(f"--engines must be fake or llamacpp, not {engines!r}")
    cfg = BenchConfig(
        rates=tuple(float(r) for r in rates.split(",")),
        duration_s=duration,
        swap_duration_s=swap_duration,
        engines=engines,
        output_tokens=output_tokens,
        prompt_tokens=prompt_tokens,
        policy=policy,
        rust_router=None if rust_router == "none" else rust_router,
    )
    out = run(cfg, log=lambda s: console.print(s, highlight=False))
    console.print(_router_table(out, output_tokens, engines))
    console.print(
        f"max rate with no failures and added p99 <= 10 ms: "
        f"{out['max_rate_no_failures']}; swaps: {out['swap']}"
    )
    write_json(json_out, out)


def _router_table(out: dict, output_tokens: int, engines: str) -> Table:
    """Added TTFT p50/p99 per rate, of this router and (where it ran) of vllm-router."""
    table = Table(
        title=f"added TTFT over direct (ms), streaming, {output_tokens} output tokens, "
        f"{engines} engines"
    )
    table.add_column("rate")
    table.add_column("autopoiesis p50/p99")
    has_rust = "vllm_router" in out
    if has_rust:
        table.add_column("vllm-router p50/p99")
    for i, rate in enumerate(out["rates"]):
        cells = [
            f"{rate:g}",
            f"{out['added_ttft_p50_ms'][i]:.2f} / "
            f"{out['added_ttft_p99_ms'][i]:.2f} ({out['failures'][i]} failed)",
        ]
        if has_rust:
            rr = out["vllm_router"]
            cells.append(
                f"{rr['added_ttft_p50_ms'][i]:.2f} / {rr['added_ttft_p99_ms'][i]:.2f} "
                f"({rr['failures'][i]} failed)"
            )
        table.add_row(*cells)
    return table


def bench_fanout(
    workers: Annotated[int, typer.Option(help="Dask workers and thread-pool width.")] = 2,
    candidates: Annotated[int, typer.Option(help="Evaluations per runner per round.")] = 12,
    rounds: Annotated[int, typer.Option(help="Alternating rounds of both runners.")] = 2,
    backend: Annotated[str, typer.Option(help="Sandbox backend: process or docker.")] = "process",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results.")] = None,
) -> None:
    """Evaluations per hour: Prefect's thread pool vs a local Dask cluster, same batch."""
    from flows.bench.fanout import FanoutBenchConfig
    from flows.bench.fanout import bench_fanout as run
    from flows.cli.control import quiet_defaults

    quiet_defaults()
    cfg = FanoutBenchConfig(candidates=candidates, workers=workers, rounds=rounds, backend=backend)
    with console.status("fanning out sandboxed evaluations") as status:
        out = run(cfg, progress=lambda m: (status.update(m), console.print(m, highlight=False)))
    table = Table(title=f"Evaluation fan-out, {workers} workers, {backend} sandbox")
    for col in ("runner", "evaluations/hour", "warm-up s", "startup s", "failed"):
        table.add_column(col, justify="right" if col != "runner" else "left")
    for kind, s in out["runners"].items():
        table.add_row(
            kind,
            f"{s['evaluations_per_hour']:.0f}",
            f"{s['warmup_s']:.1f}",
            f"{s['startup_s']:.1f}",
            str(s["failed"]),
        )
    console.print(table)
    if "dask_vs_threads" in out:
        console.print(f"dask / threads: {out['dask_vs_threads']:.2f}")
    write_json(json_out, out)


bench_app.command("baselines")(bench_baselines)
bench_app.command("simulator")(bench_simulator)
bench_app.command("route")(bench_route)
bench_app.command("fidelity")(bench_fidelity)
bench_app.command("router")(bench_router)
bench_app.command("fanout")(bench_fanout)
bench_app.command("compare")(bench_compare)
bench_app.command("capacity")(bench_capacity)
bench_app.command("headroom")(bench_headroom)
bench_app.command("evolution")(bench_evolution)
