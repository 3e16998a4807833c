"""``autopoiesis replay`` and ``replay-stage``: recorded traffic sent to live endpoints.

``replay`` sends a trace open-loop to any OpenAI-compatible endpoint. ``replay-stage``
runs a policy on a scenario slice through the live router and prints what the replay
measured next to what the simulator predicts for the same slice, so the two can be
compared at a glance. Trace reading lives here (through ``sandbox.traces``) because
``serving`` must not import the evaluation plane; the HTTP load generator itself is
``sandbox.replay.loadgen``.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flows.cli.output import cell, console, fail, write_json

if TYPE_CHECKING:
    from sandbox.replay.stage import ReplayResult


def replay(
    trace: Annotated[str, typer.Option(help="Trace file (any supported format) or name.")],
    target: Annotated[str, typer.Option(help="Base URL of an OpenAI-compatible endpoint.")],
    rate_scale: Annotated[float, typer.Option(help="Multiply the arrival rate.")] = 1.0,
    duration: Annotated[float | None, typer.Option(help="Replay only this many seconds.")] = None,
    model: str = "llama-3-8b",
    chat: Annotated[bool, typer.Option(help="Use /v1/chat/completions.")] = False,
    max_requests: Annotated[int, typer.Option(help="Cap on requests sent.")] = 100_000,
    timeout: Annotated[float, typer.Option(help="Per-request timeout (s).")] = 120.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary.")] = None,
) -> None:
    """Open-loop replay of a trace against any OpenAI-compatible endpoint."""
    from sandbox.replay.loadgen import run_load, summarize
    from sandbox.replay.shots import workload_shots
    from sandbox.traces import load_trace

    if rate_scale <= 0:
        fail("--rate-scale must be > 0")
    try:
        workload = load_trace(trace)
    except Exception as e:  # every trace error becomes one line
        fail(str(e))
    shots = workload_shots(workload, rate_scale, duration, max_requests)
    if not shots:
        fail("no requests to send in that window")
    console.print(f"replaying {len(shots)} requests over {shots[-1].at:.1f} s to {target}")
    results, wall = asyncio.run(run_load(target, shots, model=model, chat=chat, timeout_s=timeout))
    s = summarize(results, wall)
    table = Table(title=f"replay of {workload.name}")
    for col in ("", "p50", "p90", "p99", "mean"):
        table.add_column(col)
    for name, d in (("TTFT ms", s.ttft_ms), ("TPOT ms", s.tpot_ms), ("E2E ms", s.e2e_ms)):
        row = (cell(d.get(k), "{:.1f}", missing="nan") for k in ("p50", "p90", "p99", "mean"))
        table.add_row(name, *row)
    console.print(table)
    console.print(
        f"ok {s.ok}/{s.requests}  failed {s.failed}  {s.throughput_rps:.1f} req/s  "
        f"{s.output_tok_s:.0f} tok/s  max send lag {s.max_send_lag_ms:.1f} ms"
    )
    if s.errors:
        console.print(f"errors: {s.errors}")
    write_json(json_out, asdict(s))


ROWS = (
    ("requests", "requests", 1.0, "{:.0f}"),
    ("failed", "failed", 1.0, "{:.0f}"),
    ("SLO attainment", "slo_attainment", 1.0, "{:.3f}"),
    ("objective", "objective", 1.0, "{:.4f}"),
    *(
        (f"{m.upper()} {q} ms", f"{m}_{q}_s", 1000.0, "{:.1f}")
        for m in ("ttft", "tpot", "e2e")
        for q in ("mean", "p50", "p90", "p99")
    ),
    ("makespan s", "makespan_s", 1.0, "{:.2f}"),
    ("goodput req/s", "goodput_rps", 1.0, "{:.2f}"),
    ("preemptions", "preemptions", 1.0, "{:.0f}"),
    ("retries", "retries", 1.0, "{:.0f}"),
)


# Long for its options: typer reads the command line from this signature.
def replay_stage(
    policy: Annotated[str, typer.Option(help="Policy file or a baseline's name.")],
    scenario: Annotated[str, typer.Option(help="Scenario name (or window:<sha>:<variant>).")],
    engines: Annotated[
        list[str] | None,
        typer.Option(
            help="simulated (default), vllm-docker, or engine URLs (repeatable or comma-separated)."
        ),
    ] = None,
    requests: Annotated[int, typer.Option(help="Replay the first this many requests.")] = 200,
    seconds: Annotated[
        float | None, typer.Option(help="…arriving within this many (model) seconds.")
    ] = None,
    time_scale: Annotated[
        float, typer.Option(help="Simulated engines: wall seconds per model second.")
    ] = 1.0,
    seed: int = 0,
    scale: Annotated[float, typer.Option(help="Scenario scale (0 < scale <= 1).")] = 1.0,
    model: Annotated[
        str, typer.Option(help="vllm-docker: the model to serve; URLs: the served model name.")
    ] = "",
    gpu_ids: Annotated[str, typer.Option(help="vllm-docker: device ids, e.g. 0,1.")] = "",
    windows_dir: Annotated[
        Path | None, typer.Option(help="Window files for window:<sha>:<variant> scenarios.")
    ] = None,
    wall: Annotated[float, typer.Option(help="Wall-clock limit of the whole stage (s).")] = 900.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result.")] = None,
) -> None:
    """Replay a scenario slice through the router running POLICY on engines; vs the simulator."""
    from sandbox.replay.engines import EngineTarget
    from sandbox.replay.stage import ReplayRequest
    from sandbox.replay.worker import run_isolated
    from serving.policy_loader import BUILTIN_POLICIES, builtin_source

    # The source only: the policy is loaded in the stage's worker, never in this process.
    if policy in BUILTIN_POLICIES:
        name, source = policy, builtin_source(policy)
    else:
        path = Path(policy)
        if not path.is_file():
            fail(f"policy file '{policy}' not found (nor is it a baseline's name)")
        name, source = path.name, path.read_text("utf-8")
    try:
        target = EngineTarget.parse(
            ",".join(engines or ["simulated"]),
            time_scale=time_scale,
            model=model,
            gpu_ids=tuple(g for g in gpu_ids.split(",") if g),
        )
        req = ReplayRequest(
            source,
            scenario,
            name=name,
            seed=seed,
            scale=scale,
            requests=requests,
            seconds=seconds,
            target=target,
            wall_s=wall,
            windows_dir=str(windows_dir.resolve()) if windows_dir else None,
        )
    except ValueError as e:
        fail(str(e))
    with console.status(f"replaying {scenario} on {target.kind} engines"):
        res = run_isolated(req)
    write_json(json_out, res.to_dict())
    if not res.ok:
        fail(f"replay stage stopped at {res.stage}: {res.error}")
    _print_stage(name, res)
    if json_out is not None:
        console.print(f"wrote {json_out}")


def _print_stage(name: str, res: ReplayResult) -> None:
    """Simulator and replay side by side (``ROWS``), then the stage's engines and faults."""
    table = Table(
        title=f"{name} on {res.scenario} ({res.engine_kind} engines, time scale {res.time_scale:g})"
    )
    for col in ("", "simulator", "replay", "replay/sim"):
        table.add_column(col, justify="left" if not col else "right")
    for label, key, mult, fmt in ROWS:
        sim, live = res.simulated.get(key), res.summary.get(key)
        ratio = live / sim if sim and live is not None and math.isfinite(sim) else None
        table.add_row(
            label, cell(sim, fmt, scale=mult), cell(live, fmt, scale=mult), cell(ratio, "{:.3f}")
        )
    console.print(table)
    if res.sim_error:
        console.print(f"[yellow]simulator:[/] {res.sim_error}", highlight=False)
    faults = {k: v for k, v in res.fallbacks.items() if v}
    console.print(
        f"engines {' '.join(res.engines)}; wall {res.wall_s:.1f} s; failed {res.failures}"
        f"{' ' + str(res.errors) if res.errors else ''}; router fallbacks {faults or 0}; "
        f"max send lag {res.max_send_lag_s * 1000:.0f} ms (model time)"
        f"{f'; {res.events_dropped} cluster events left out' if res.events_dropped else ''}",
        highlight=False,
    )
