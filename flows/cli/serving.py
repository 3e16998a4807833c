"""CLI commands of the live serving plane: serve, engine, replay, bench router.

Registered on the main ``autopoiesis`` app by ``register``. Trace reading lives
here (through ``sandbox.traces``) because ``serving`` must not import the
evaluation plane; the HTTP load generator itself is ``serving.loadgen``.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from flows.cli.output import cell, console, write_json
from flows.cli.output import fail as _fail


def serve(
    engines: Annotated[int, typer.Option(help="Engines to start.")] = 2,
    engine_kind: Annotated[str, typer.Option(
        help="simulated (vLLM-compatible, any GPU) or llamacpp (real, SmolLM2-135M on CPU; "
        "`make engines`).")] = "simulated",
    engine_url: Annotated[list[str] | None, typer.Option(
        help="Front these engines instead (repeatable), e.g. real vLLM servers.")] = None,
    policy: Annotated[str, typer.Option(help="Policy file or a baseline's name.")] =
        "least_outstanding",
    host: str = "127.0.0.1",
    port: int = 8000,
    admin_host: Annotated[str, typer.Option(help="Admin API address (keep it loopback).")] =
        "127.0.0.1",
    admin_port: int = 8100,
    admin_token: Annotated[str | None, typer.Option(
        envvar="AUTOPOIESIS_ADMIN_TOKEN", help="Bearer token of the admin API.")] = None,
    gpu: str = "H100",
    model: str = "llama-3-8b",
    time_scale: Annotated[float, typer.Option(
        help="Simulated engines: wall seconds per model second.")] = 1.0,
    telemetry_dir: Annotated[Path, typer.Option(help="Parquet request log.")] =
        Path("mlruns/telemetry"),
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Start engines (simulated by default, or llama.cpp) and the router in front of them."""
    import secrets

    from serving.llamacpp import SMOLLM_ALIAS, available
    from serving.policy_loader import PolicyError
    from serving.policy_runtime import PolicyRuntime
    from serving.process_tuning import install_uvloop
    from serving.router import RouterConfig
    from serving.serve import load_policy_spec, make_fleet, serve_forever

    if engine_kind == "llamacpp" and not engine_url:
        if why := available():
            _fail(f"llama.cpp engines unavailable: {why}")
        model = SMOLLM_ALIAS
    try:
        loaded = load_policy_spec(policy)
        fleet = make_fleet(engines, engine_url or [], gpu, model,
                           ["--time-scale", str(time_scale)], engine_kind)
    except (PolicyError, ValueError) as e:
        _fail(str(e))
    token = admin_token or secrets.token_urlsafe(24)
    if not admin_token:
        console.print(f"admin token (generated): {token}")
    install_uvloop()
    asyncio.run(serve_forever(
        fleet, PolicyRuntime(loaded), RouterConfig(telemetry_dir=telemetry_dir,
                                                   model_name=model),
        host=host, port=port, admin_host=admin_host, admin_port=admin_port,
        admin_token=token, duration_s=duration, announce=console.print))


def engine(
    port: int = 8001,
    host: str = "127.0.0.1",
    model: str = "llama-3-8b",
    gpu: str = "H100",
    tp: int = 1,
    time_scale: float = 1.0,
    cold_start_s: Annotated[float, typer.Option(
        help="Seconds /health answers 503; negative: the hardware model's cold start.")] = 0.0,
    metric_names: Annotated[str, typer.Option(help="new or old vLLM metric names.")] = "new",
    fake_itl_s: Annotated[float | None, typer.Option(
        help="Skip the engine model: fixed inter-token time.")] = None,
) -> None:
    """Run one simulated vLLM-compatible engine."""
    from serving.engine_server import main

    args = ["--port", str(port), "--host", host, "--model", model, "--gpu", gpu, "--tp",
            str(tp), "--time-scale", str(time_scale), "--cold-start-s", str(cold_start_s),
            "--metric-names", metric_names]
    if fake_itl_s is not None:
        args += ["--fake-itl-s", str(fake_itl_s)]
    main(args)


def replay(
    trace: Annotated[str, typer.Option(help="Trace file (any supported format) or name.")],
    target: Annotated[str, typer.Option(help="Base URL of an OpenAI-compatible endpoint.")],
    rate_scale: Annotated[float, typer.Option(help="Multiply the arrival rate.")] = 1.0,
    duration: Annotated[float | None, typer.Option(help="Replay only this many seconds.")] =
        None,
    model: str = "llama-3-8b",
    chat: Annotated[bool, typer.Option(help="Use /v1/chat/completions.")] = False,
    max_requests: Annotated[int, typer.Option(help="Cap on requests sent.")] = 100_000,
    timeout: Annotated[float, typer.Option(help="Per-request timeout (s).")] = 120.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary.")] = None,
) -> None:
    """Open-loop replay of a trace against any OpenAI-compatible endpoint."""
    from sandbox.replay.shots import workload_shots
    from sandbox.traces import load_trace
    from serving.loadgen import run_load, summarize

    if rate_scale <= 0:
        _fail("--rate-scale must be > 0")
    try:
        workload = load_trace(trace)
    except Exception as e:  # every trace error becomes one line
        _fail(str(e))
    shots = workload_shots(workload, rate_scale, duration, max_requests)
    if not shots:
        _fail("no requests to send in that window")
    console.print(f"replaying {len(shots)} requests over {shots[-1].at:.1f} s to {target}")
    results, wall = asyncio.run(run_load(target, shots, model=model, chat=chat,
                                         timeout_s=timeout))
    s = summarize(results, wall)
    table = Table(title=f"replay of {workload.name}")
    for col in ("", "p50", "p90", "p99", "mean"):
        table.add_column(col)
    for name, d in (("TTFT ms", s.ttft_ms), ("TPOT ms", s.tpot_ms), ("E2E ms", s.e2e_ms)):
        row = (cell(d.get(k), "{:.1f}", missing="nan") for k in ("p50", "p90", "p99", "mean"))
        table.add_row(name, *row)
    console.print(table)
    console.print(f"ok {s.ok}/{s.requests}  failed {s.failed}  {s.throughput_rps:.1f} req/s  "
                  f"{s.output_tok_s:.0f} tok/s  max send lag {s.max_send_lag_ms:.1f} ms")
    if s.errors:
        console.print(f"errors: {s.errors}")
    write_json(json_out, asdict(s))


def bench_router(
    rates: Annotated[str, typer.Option(help="Comma-separated request rates.")] =
        "50,100,200,500,1000",
    duration: Annotated[float, typer.Option(help="Seconds per rate and target.")] = 5.0,
    swap_duration: Annotated[float, typer.Option(
        help="Seconds of policy swaps under load; 0 skips them.")] = 6.0,
    engines: Annotated[str, typer.Option(
        help="fake (instant engines) or llamacpp (real SmolLM2-135M on CPU: use low rates, "
        "e.g. --rates 0.5,1 --duration 60 --swap-duration 0).")] = "fake",
    output_tokens: Annotated[int, typer.Option(help="Tokens per response.")] = 16,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length (~4 bytes a token).")] = 64,
    policy: Annotated[str, typer.Option(
        help="The router's policy. Direct load alternates between the engines: round_robin "
        "dispatches the same way, which real engines (seconds per request) need for a fair "
        "comparison.")] = "least_outstanding",
    rust_router: Annotated[str, typer.Option(
        help="vllm-router executable; 'auto' looks in .venv-bench; 'none' skips it.")] = "auto",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results.")] = None,
) -> None:
    """Added TTFT of the router over direct-to-engine at several rates, and swaps under load."""
    from serving.bench_router import BenchConfig, run

    if engines not in ("fake", "llamacpp"):
        _fail(f"--engines must be fake or llamacpp, not {engines!r}")
    cfg = BenchConfig(rates=tuple(float(r) for r in rates.split(",")), duration_s=duration,
                      swap_duration_s=swap_duration, engines=engines,
                      output_tokens=output_tokens, prompt_tokens=prompt_tokens, policy=policy,
                      rust_router=None if rust_router == "none" else rust_router)
    out = run(cfg, log=lambda s: console.print(s, highlight=False))
    table = Table(title=f"added TTFT over direct (ms), streaming, {output_tokens} output tokens, "
                  f"{engines} engines")
    table.add_column("rate")
    table.add_column("autopoiesis p50/p99")
    has_rust = "vllm_router" in out
    if has_rust:
        table.add_column("vllm-router p50/p99")
    for i, rate in enumerate(out["rates"]):
        cells = [f"{rate:g}", f"{out['added_ttft_p50_ms'][i]:.2f} / "
                 f"{out['added_ttft_p99_ms'][i]:.2f} ({out['failures'][i]} failed)"]
        if has_rust:
            rr = out["vllm_router"]
            cells.append(f"{rr['added_ttft_p50_ms'][i]:.2f} / {rr['added_ttft_p99_ms'][i]:.2f} "
                         f"({rr['failures'][i]} failed)")
        table.add_row(*cells)
    console.print(table)
    console.print(f"max rate with no failures and added p99 <= 10 ms: "
                  f"{out['max_rate_no_failures']}; swaps: {out['swap']}")
    write_json(json_out, out)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command()(serve)
    app.command()(engine)
    app.command()(replay)
    bench_app.command("router")(bench_router)
