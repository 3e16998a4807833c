"""``autopoiesis serve`` and ``engine``: the live serving plane, router and engines.

Its benchmark (``bench router``) is in ``flows/cli/bench.py``, replaying traffic at
it (``replay``, ``replay-stage``) in ``flows/cli/replay.py``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.output import console, fail


# Long for its options: typer reads the command line from this signature.
def serve(
    engines: Annotated[int, typer.Option(help="Engines to start.")] = 2,
    engine_kind: Annotated[
        str,
        typer.Option(
            help="simulated (vLLM-compatible, any GPU) or llamacpp (real, SmolLM2-135M on CPU; "
            "`make engines`)."
        ),
    ] = "simulated",
    engine_url: Annotated[
        list[str] | None,
        typer.Option(help="Front these engines instead (repeatable), e.g. real vLLM servers."),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="Policy file or a baseline's name.")
    ] = "least_outstanding",
    host: str = "127.0.0.1",
    port: int = 8000,
    admin_host: Annotated[
        str, typer.Option(help="Admin API address (keep it loopback).")
    ] = "127.0.0.1",
    admin_port: int = 8100,
    admin_token: Annotated[
        str | None,
        typer.Option(envvar="AUTOPOIESIS_ADMIN_TOKEN", help="Bearer token of the admin API."),
    ] = None,
    gpu: str = "H100",
    model: str = "llama-3-8b",
    time_scale: Annotated[
        float, typer.Option(help="Simulated engines: wall seconds per model second.")
    ] = 1.0,
    telemetry_dir: Annotated[Path, typer.Option(help="Parquet request log.")] = Path(
        "mlruns/telemetry"
    ),
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
            fail(f"llama.cpp engines unavailable: {why}")
        model = SMOLLM_ALIAS
    try:
        loaded = load_policy_spec(policy)
        fleet = make_fleet(
            engines, engine_url or [], gpu, model, ["--time-scale", str(time_scale)], engine_kind
        )
    except (PolicyError, ValueError) as e:
        fail(str(e))
    token = admin_token or secrets.token_urlsafe(24)
    if not admin_token:
        console.print(f"admin token (generated): {token}")
    install_uvloop()
    asyncio.run(
        serve_forever(
            fleet,
            PolicyRuntime(loaded),
            RouterConfig(telemetry_dir=telemetry_dir, model_name=model),
            host=host,
            port=port,
            admin_host=admin_host,
            admin_port=admin_port,
            admin_token=token,
            duration_s=duration,
            announce=console.print,
        )
    )


def engine(
    port: int = 8001,
    host: str = "127.0.0.1",
    model: str = "llama-3-8b",
    gpu: str = "H100",
    tp: int = 1,
    time_scale: float = 1.0,
    cold_start_s: Annotated[
        float,
        typer.Option(
            help="Seconds /health answers 503; negative: the hardware model's cold start."
        ),
    ] = 0.0,
    metric_names: Annotated[str, typer.Option(help="new or old vLLM metric names.")] = "new",
    fake_itl_s: Annotated[
        float | None, typer.Option(help="Skip the engine model: fixed inter-token time.")
    ] = None,
) -> None:
    """Run one simulated vLLM-compatible engine."""
    from serving.engine_server import main

    args = [
        "--port",
        str(port),
        "--host",
        host,
        "--model",
        model,
        "--gpu",
        gpu,
        "--tp",
        str(tp),
        "--time-scale",
        str(time_scale),
        "--cold-start-s",
        str(cold_start_s),
        "--metric-names",
        metric_names,
    ]
    if fake_itl_s is not None:
        args += ["--fake-itl-s", str(fake_itl_s)]
    main(args)
