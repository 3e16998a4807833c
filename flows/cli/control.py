"""``autopoiesis pull``, ``promote``, ``demo`` and ``deploy``: the control plane's commands.

Prefect and MLflow run embedded by default (a temporary local Prefect API,
sqlite under ``mlruns/``); set ``PREFECT_API_URL`` / ``MLFLOW_TRACKING_URI`` to
use servers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.output import console, fail, write_json


def quiet_defaults() -> None:
    # Embedded runs: no analytics, no telemetry, Prefect's home beside the project's files.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_HOME", str(Path(".prefect").resolve()))
    # Prefect's temporary local API migrates its database on first start: on a busy
    # 2-core machine that outlasts Prefect's default 20 s wait.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def pull(
    telemetry_dir: Annotated[Path, typer.Argument(help="The router's telemetry directory.")],
    state_dir: Annotated[Path, typer.Option(help="Watermark and reference window.")] = Path(
        "mlruns/control"
    ),
    chain: Annotated[str, typer.Option(help="deployment, inline or none.")] = "deployment",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Live fleet, MODEL@COUNTxGPU,... (append /tpK for tensor parallel); "
            "default: 1 H100 per replica."
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
) -> None:
    """Run the pull-telemetry flow once: new window, drift test, maybe trigger evolve."""
    quiet_defaults()
    from flows.prefect_flows import pull_telemetry

    out = pull_telemetry(
        str(telemetry_dir),
        state_dir=str(state_dir),
        chain=chain,
        tracking_uri=tracking_uri,
        cluster=cluster,
    )
    console.print(
        f"{out.get('requests', 0)} requests; trigger: {out.get('trigger')}; "
        + "; ".join(out.get("reasons") or [out.get("reason") or "no drift"]),
        highlight=False,
    )
    write_json(json_out, out)


def promote(
    challenger: Annotated[str, typer.Option(help="Version or alias.")] = "challenger",
    scenarios: Annotated[
        str | None, typer.Option(help="Comma-separated held-back scenarios.")
    ] = None,
    admin_url: Annotated[str | None, typer.Option(help="Router admin API to swap live.")] = None,
    telemetry_dir: Annotated[str | None, typer.Option(help="For the dwell-period watch.")] = None,
    dwell_s: Annotated[float, typer.Option(help="Live watch after a swap.")] = 30.0,
    margin: Annotated[float, typer.Option(help="Objective margin at the bound.")] = 0.002,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json")] = None,
) -> None:
    """Run the promote flow: paired held-back comparison, alias move, live swap and watch."""
    quiet_defaults()
    from flows.prefect_flows import promote as promote_flow

    token = os.environ.get("AUTOPOIESIS_ADMIN_TOKEN")
    names = [s.strip() for s in scenarios.split(",")] if scenarios else None
    out = promote_flow(
        challenger=challenger,
        scenarios=names,
        admin_url=admin_url,
        admin_token=token,
        telemetry_dir=telemetry_dir,
        dwell_s=dwell_s,
        margin=margin,
        tracking_uri=tracking_uri,
    )
    console.print(f"promoted: {out['promoted']}; " + "; ".join(out["reasons"]), highlight=False)
    write_json(json_out, out)


def demo(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    workdir: Annotated[Path, typer.Option(help="Telemetry, state, MLflow db.")] = Path(
        "mlruns/demo"
    ),
    llm: Annotated[str, typer.Option(help="none (Optuna only) or an OpenAI base URL.")] = "none",
    quick: Annotated[bool, typer.Option(help="Shorter traffic (tests).")] = False,
    engines: Annotated[
        str,
        typer.Option(
            help="simulated (vLLM-compatible GPUs) or llamacpp (real SmolLM2-135M on CPU, a "
            "lighter load; `make engines`)."
        ),
    ] = "simulated",
) -> None:
    """The closed loop on a live router: shift, drift, evolve, promote, before/after."""
    quiet_defaults()
    from flows.demo import run_demo
    from flows.demo_traffic import DemoConfig, on_cpu_engines

    if engines not in ("simulated", "llamacpp"):
        fail(f"--engines must be simulated or llamacpp, not {engines!r}")
    cfg = DemoConfig(workdir=workdir, llm_base_url=None if llm == "none" else llm)
    if quick:
        from dataclasses import replace

        cfg = replace(cfg, conv_s=20.0, code_s=50.0, pull_every_s=6.0, dwell_s=4.0)
    if engines == "llamacpp":
        from serving.llamacpp import available

        if why := available():
            fail(f"llama.cpp engines unavailable: {why}")
        cfg = on_cpu_engines(cfg, quick)
    out = run_demo(cfg, log=lambda m: console.print(m, highlight=False))
    _print_demo(out)
    write_json(json_out, out)
    if out["control_error"]:
        console.print(f"[red]control plane error:[/] {out['control_error']}")
        raise typer.Exit(1)


def _print_demo(out: dict) -> None:
    """Before, after and the best static baseline on the same live traffic; the verdicts."""
    from flows.demo_report import verdict_line

    table = Table(
        title="Live code traffic: before vs after the promoted champion, and the "
        "best static baseline replayed on the same requests"
    )
    for col in (
        "",
        "policy",
        "SLO attainment",
        "TTFT p50",
        "TTFT p99",
        "E2E p50",
        "E2E p99",
        "requests",
    ):
        table.add_column(col, justify="right")
    static = out["best_static"] or {}
    rows = (
        ("before", out["champion"], out["before"]),
        ("after", f"v{out['promoted_version']}", out["after"]),
        ("best static", static.get("name", "-"), static.get("metrics")),
    )
    for label, policy, m in rows:
        if m:
            table.add_row(
                label,
                policy,
                f"{m['slo_attainment']:.3f}",
                f"{m['ttft_p50_s']:.3f}s",
                f"{m['ttft_p99_s']:.3f}s",
                f"{m['e2e_p50_s']:.3f}s",
                f"{m['e2e_p99_s']:.3f}s",
                f"{m['requests']:.0f}",
            )
    console.print(table)
    console.print(
        f"drift detected {out['drift_detected_s']}s after the shift; "
        + (
            f"promoted v{out['promoted_version']} {out['promoted_s']}s after it"
            if out["promoted_version"]
            else "nothing promoted"
        ),
        highlight=False,
    )
    v = out["verdict"]
    console.print(verdict_line("after vs before", v["after_vs_before"]), highlight=False)
    console.print(verdict_line("live vs best static", v["live_vs_best_static"]), highlight=False)
    console.print(f"MLflow UI:  mlflow ui --backend-store-uri {out['tracking_uri']}")
    console.print("Prefect UI: prefect server start   (then: autopoiesis deploy)")


def deploy(
    telemetry_dir: Annotated[str, typer.Option(help="The router's telemetry directory.")] = (
        "mlruns/telemetry"
    ),
    state_dir: Annotated[str, typer.Option(help="Watermark and reference window.")] = (
        "mlruns/control"
    ),
    pull_every_s: Annotated[int, typer.Option(help="Pull schedule.")] = 300,
    nightly_cron: Annotated[str, typer.Option(help="Evolve schedule.")] = "0 3 * * *",
    work_pool: Annotated[str, typer.Option(help="Process work pool (created if missing).")] = (
        "autopoiesis-local"
    ),
    apply_only: Annotated[
        bool, typer.Option(help="Register and exit; `prefect worker start --pool P` runs them.")
    ] = False,
) -> None:
    """Register pull-telemetry, evolve and promote on a work pool and run its worker."""
    quiet_defaults()
    from flows import deploy as d

    deps = d.deployments(telemetry_dir, state_dir, pull_every_s, nightly_cron)
    if apply_only:
        ids = d.apply(deps, work_pool)
        console.print(
            f"registered {', '.join(d.DEPLOYMENTS)} on work pool {work_pool} "
            f"({len(ids)} deployments); run them with: prefect worker start "
            f"--pool {work_pool}",
            highlight=False,
        )
        return
    console.print(
        f"serving {', '.join(d.DEPLOYMENTS)} from work pool {work_pool}; Ctrl-C stops",
        highlight=False,
    )
    d.serve(deps, work_pool)
